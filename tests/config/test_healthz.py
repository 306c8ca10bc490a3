"""`GET /healthz`: 200 when the database and the broker answer, 503 naming what is down;
200 "degraded" naming a stalled cluster (work late beyond NUDGE_STALL_SECONDS)."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from bench import data
from journeys.metrics import cluster_stall_read
from journeys.models import Journey, JourneyStep, ScheduledSend
from marketing.models import Event
from tests.servers import closed_port, database_url, get, running_server


@pytest.mark.django_db
def test_healthz_is_ok_when_database_and_orm_broker_answer(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"db": "ok", "broker": "ok", "cluster": "ok", "status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.fixture
def postgres_url(db) -> str:
    if connection.vendor != "postgresql":
        pytest.skip("needs the PostgreSQL started by scripts/services.sh")
    return database_url(connection)


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("NUDGE_TEST_REDIS_URL")
    if not url:
        pytest.skip("NUDGE_TEST_REDIS_URL unset: run through scripts/services.sh")
    return url


@pytest.mark.redis
def test_healthz_is_ok_with_the_redis_broker(postgres_url, redis_url):
    with running_server(DATABASE_URL=postgres_url, REDIS_URL=redis_url) as base:
        status, body, _ = get(f"{base}/healthz")

    assert status == 200, body
    answer = json.loads(body)
    # the Redis broker knows the live clusters (none in this test)
    assert isinstance(answer.pop("clusters"), int)
    assert answer == {"db": "ok", "broker": "ok", "cluster": "ok", "status": "ok"}


def test_healthz_names_the_redis_broker_when_it_is_down(postgres_url):
    redis_down = f"redis://127.0.0.1:{closed_port()}/0"
    with running_server(DATABASE_URL=postgres_url, REDIS_URL=redis_down) as base:
        status, body, _ = get(f"{base}/healthz")

    answer = json.loads(body)
    assert status == 503
    assert answer["db"] == "ok"
    assert answer["broker"].startswith("down")
    assert answer["down"] == ["broker"]


def test_healthz_names_the_database_when_it_is_down():
    database_down = f"postgres://nudge@127.0.0.1:{closed_port()}/nudge"
    with running_server(DATABASE_URL=database_down) as base:
        status, body, _ = get(f"{base}/healthz")

    answer = json.loads(body)
    assert status == 503
    assert answer["db"].startswith("down")
    assert "db" in answer["down"]
    assert answer["cluster"] == "unknown: db down"
    assert "degraded" not in answer


# --- a stalled cluster: degraded, still 200 (the web takes events; keep it in the pool)


@pytest.fixture
def journey(db) -> Journey:
    journey = Journey.objects.create(slug="h", name="H", trigger="checkout_started")
    JourneyStep.objects.create(journey=journey, delay=timedelta(minutes=10), channel="email",
                               body="hi")  # fmt: skip
    return journey


def sends(journey: Journey, prefix: str, count: int, *, due_ago: timedelta) -> None:
    data.sends_create(prefix=prefix, count=count, journey_id=journey.pk,
                      step_id=journey.steps.get().pk, due=timezone.now() - due_ago)  # fmt: skip


def test_sends_due_beyond_the_threshold_make_it_degraded_not_down(client, journey):
    sends(journey, "late", 80, due_ago=timedelta(minutes=5))
    sends(journey, "recent", 5, due_ago=timedelta(seconds=30))

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {
        "db": "ok",
        "broker": "ok",
        "cluster": "stalled: 80 sends due for more than 120 s",
        "status": "degraded",
        "degraded": ["cluster"],
    }


def test_the_threshold_comes_from_the_settings(client, journey, settings):
    sends(journey, "late", 3, due_ago=timedelta(minutes=5))
    settings.NUDGE_STALL_SECONDS = 600

    assert client.get("/healthz").json()["status"] == "ok"

    settings.NUDGE_STALL_SECONDS = 60
    assert client.get("/healthz").json()["cluster"] == ("stalled: 3 sends due for more than 60 s")


def test_sends_in_flight_past_their_lease_and_old_events_are_stalled_too(client, journey, settings):
    sends(journey, "flying", 4, due_ago=timedelta(minutes=30))
    lease = settings.NUDGE_SEND_LEASE_SECONDS
    ScheduledSend.objects.update(
        status="sending", claimed_at=timezone.now() - timedelta(seconds=lease + 200)
    )
    Event.objects.bulk_create(
        Event(source="webhook", event_id=f"e{n}", type="user_registered",
              occurred_at=timezone.now(), received_at=timezone.now() - timedelta(minutes=10),
              payload={}, body_sha256="-")
        for n in range(2)
    )  # fmt: skip
    # an event that failed every attempt waits for a person, not for the cluster
    Event.objects.create(source="webhook", event_id="spent", type="user_registered",
                         occurred_at=timezone.now(), payload={}, body_sha256="-",
                         received_at=timezone.now() - timedelta(hours=1),
                         apply_attempts=settings.NUDGE_SEND_MAX_ATTEMPTS)  # fmt: skip

    answer = client.get("/healthz").json()

    assert answer["status"] == "degraded"
    assert answer["cluster"] == (
        "stalled: 4 sends in flight more than 120 s past their lease; "
        f"2 events not applied for more than {settings.NUDGE_APPLY_LEASE_SECONDS + 120} s"
    )


def test_a_send_waiting_for_its_retry_is_not_stalled(client, journey, settings):
    """A retry moves claimed_at so that the lease ends at the retry's time."""
    sends(journey, "retry", 2, due_ago=timedelta(minutes=30))
    ScheduledSend.objects.update(status="sending", claimed_at=timezone.now() + timedelta(minutes=5))

    assert client.get("/healthz").json()["cluster"] == "ok"


def test_a_big_backlog_is_counted_up_to_a_cap(journey):
    sends(journey, "late", 30, due_ago=timedelta(minutes=5))

    stall = cluster_stall_read(stall_seconds=120, cap=25)

    assert stall.sends_due == 25
    assert stall.describe() == "at least 25 sends due for more than 120 s"
