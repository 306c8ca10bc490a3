"""`GET /metrics`: who may read it, what it says after rows are written, that Prometheus can
parse it, that its statements read indexes, and that gunicorn's workers' counters add up."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from bench import data
from journeys import metrics as journeys_metrics
from journeys.models import Journey, JourneyStep, ProviderState, ScheduledSend
from marketing.models import Event
from tests.servers import PROJECT, database_url, get, running_server

SENDS, EVENTS = ScheduledSend._meta.db_table, Event._meta.db_table

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL metrics")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition, parsed as Prometheus does."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


def scrape(client, **extra) -> dict:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return samples(response.content.decode())


@pytest.fixture
def journey(db) -> Journey:
    journey = Journey.objects.create(slug="m", name="M", trigger="checkout_started")
    JourneyStep.objects.create(journey=journey, delay=timedelta(minutes=10), channel="email",
                               body="hi")  # fmt: skip
    return journey


def sends(journey: Journey, prefix: str, count: int, *, due, channel: str = "email") -> None:
    data.sends_create(prefix=prefix, count=count, journey_id=journey.pk,
                      step_id=journey.steps.get().pk, due=due, channel=channel)  # fmt: skip


def events(count: int, *, received_ago: timedelta, prefix: str = "ev", **fields) -> None:
    Event.objects.bulk_create(
        Event(source="webhook", event_id=f"{prefix}{n}", type="user_registered",
              occurred_at=timezone.now(), received_at=timezone.now() - received_ago,
              payload={}, body_sha256="-", **fields)
        for n in range(count)
    )  # fmt: skip


def test_the_gauges_count_the_rows_of_each_queue(client, journey, settings):
    now = timezone.now()
    sends(journey, "due-mail", 3, due=now - timedelta(seconds=90))
    sends(journey, "due-sms", 2, due=now - timedelta(seconds=10), channel="sms")
    sends(journey, "future", 4, due=now + timedelta(days=1))
    sends(journey, "flying", 2, due=now - timedelta(minutes=1), channel="sms")
    lease = settings.NUDGE_SEND_LEASE_SECONDS
    ScheduledSend.objects.filter(customer__external_id__startswith="flying").update(
        status="sending", claimed_at=now - timedelta(seconds=lease + 30)
    )
    events(5, received_ago=timedelta(minutes=3))
    events(1, received_ago=timedelta(hours=1), prefix="spent", apply_attempts=99)
    events(7, received_ago=timedelta(hours=2), prefix="done", applied_at=now)
    ProviderState.objects.create(name="twilio", failures=12, opens=1,
                                 open_until=now + timedelta(seconds=30), opened_at=now)  # fmt: skip
    ProviderState.objects.create(name="http", next_at=now + timedelta(seconds=5))

    parsed = scrape(client)

    assert value(parsed, "nudge_sends_due", channel="email") == 3
    assert value(parsed, "nudge_sends_due", channel="sms") == 2
    assert value(parsed, "nudge_sends_pending", channel="email") == 7
    assert value(parsed, "nudge_sends_pending", channel="sms") == 2
    assert value(parsed, "nudge_sends_in_flight", channel="sms") == 2
    assert value(parsed, "nudge_sends_in_flight", channel="email") == 0
    assert value(parsed, "nudge_metric_exact", metric="nudge_sends_pending") == 1
    # (the test's transaction began a little before the rows' times were taken: now() is
    # that moment here)
    assert 80 <= value(parsed, "nudge_sends_oldest_due_seconds") < 120
    assert 20 <= value(parsed, "nudge_sends_oldest_claim_past_lease_seconds") < 60
    # how late the 5 due sends are: 2 within 30 s, all 5 within 120 s
    assert value(parsed, "nudge_sends_due_lateness_seconds_bucket", le="5.0") == 0
    assert value(parsed, "nudge_sends_due_lateness_seconds_bucket", le="30.0") == 2
    assert value(parsed, "nudge_sends_due_lateness_seconds_bucket", le="120.0") == 5
    assert value(parsed, "nudge_sends_due_lateness_seconds_bucket", le="+Inf") == 5
    assert value(parsed, "nudge_sends_due_lateness_seconds_gcount") == 5
    # events: 5 waiting (3 minutes), 1 given up, 7 applied
    assert value(parsed, "nudge_events_unapplied") == 5
    assert value(parsed, "nudge_events_apply_given_up") == 1
    assert 170 <= value(parsed, "nudge_events_oldest_unapplied_seconds") < 240
    # providers: twilio's circuit open for ~30 s more after 12 failures; http rate-waiting
    assert value(parsed, "nudge_provider_circuit_state", provider="twilio", state="open") == 1
    assert value(parsed, "nudge_provider_circuit_state", provider="twilio", state="closed") == 0
    assert value(parsed, "nudge_provider_circuit_state", provider="http", state="closed") == 1
    assert value(parsed, "nudge_provider_failures_in_a_row", provider="twilio") == 12
    assert value(parsed, "nudge_provider_circuit_opens_in_a_row", provider="twilio") == 1
    assert 20 < value(parsed, "nudge_provider_circuit_open_seconds", provider="twilio") <= 40
    assert 0 < value(parsed, "nudge_provider_rate_wait_seconds", provider="http") <= 15
    # every status has its estimate; the task queue and the collection itself are reported
    for status in ScheduledSend.Status.values:
        assert value(parsed, "nudge_sends_estimated", status=status, channel="sms") >= 0
    assert value(parsed, "nudge_task_queue_waiting", cluster="messaging") == 0
    assert value(parsed, "nudge_metrics_database_up") == 1
    # and django-prometheus's own, from the middlewares and the database backend
    assert value(parsed, "django_http_requests_total_by_method_total", method="GET") >= 0
    assert value(parsed, "django_db_execute_total", alias="default", vendor="postgresql") > 0


def test_an_empty_database_gives_zeros_not_gaps(client, db):
    parsed = scrape(client)

    assert value(parsed, "nudge_sends_due", channel="email") == 0
    assert value(parsed, "nudge_sends_oldest_due_seconds") == 0
    assert value(parsed, "nudge_events_oldest_unapplied_seconds") == 0
    assert value(parsed, "nudge_sends_due_lateness_seconds_gcount") == 0


def test_a_set_of_the_exact_limit_or_more_is_estimated(client, journey, settings):
    settings.NUDGE_METRICS_EXACT_LIMIT = 3
    sends(journey, "due", 8, due=timezone.now() - timedelta(minutes=1))
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {SENDS}")

    parsed = scrape(client)

    assert value(parsed, "nudge_metric_exact", metric="nudge_sends_due") == 0
    assert value(parsed, "nudge_metric_exact", metric="nudge_sends_in_flight") == 1
    # never fewer than were counted, and the planner (after ANALYZE) knows the 8
    assert 3 <= value(parsed, "nudge_sends_due", channel="email") <= 16
    assert value(parsed, "nudge_sends_due_lateness_seconds_gcount") == 3


def test_a_database_that_fails_still_serves_the_process_metrics(client, db, monkeypatch):
    def failing(*args, **kwargs):
        raise DatabaseError("down")

    monkeypatch.setattr(journeys_metrics, "collect_in_one_snapshot", failing)
    parsed = scrape(client)

    assert value(parsed, "nudge_metrics_database_up") == 0
    assert ("nudge_sends_due", (("channel", "email"),)) not in parsed
    assert value(parsed, "django_http_requests_total_by_method_total", method="GET") >= 0


# --- who may read it


def test_only_loopback_may_read_it_without_a_token(client, db):
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    refused = client.get("/metrics", REMOTE_ADDR="203.0.113.7")
    assert refused.status_code == 403
    assert b"nudge_" not in refused.content


def test_a_request_a_proxy_forwarded_never_passes_by_its_address(client, db):
    for header in ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP"):
        response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", **{header: "203.0.113.7"})
        assert response.status_code == 403, header


def test_a_bearer_token_lets_any_address_read_it(client, db, settings):
    settings.NUDGE_METRICS_TOKENS = ["old-secret", "new-secret"]
    outside = {"REMOTE_ADDR": "203.0.113.7", "HTTP_X_FORWARDED_FOR": "203.0.113.7"}

    missing = client.get("/metrics", **outside)
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer guess", **outside)
    wrong_from_loopback = client.get("/metrics", HTTP_AUTHORIZATION="Bearer guess")
    basic = client.get("/metrics", HTTP_AUTHORIZATION="Basic b2xkLXNlY3JldA==", **outside)

    for refused in (missing, wrong, wrong_from_loopback, basic):
        assert refused.status_code == 401
        assert refused["WWW-Authenticate"] == 'Bearer realm="metrics"'
    for token in ("old-secret", "new-secret"):
        response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}", **outside)
        assert response.status_code == 200
        assert b"nudge_sends_due" in response.content


def test_the_allowed_addresses_are_configurable(client, db, settings):
    settings.NUDGE_METRICS_ALLOWED_IPS = ["10.0.0.0/8"]

    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


# --- each scrape is cheap on a large table: every statement reads an index


@pytest.fixture
def many_rows(journey):
    now = timezone.now()
    sends(journey, "future", 20_000, due=now + timedelta(days=30))
    sends(journey, "due", 200, due=now - timedelta(minutes=5))
    sends(journey, "flying", 100, due=now - timedelta(minutes=5), channel="sms")
    ScheduledSend.objects.filter(customer__external_id__startswith="flying").update(
        status="sending", claimed_at=now - timedelta(minutes=4)
    )
    with connection.cursor() as cursor:
        # 20,000 events applied, the last 100 not
        cursor.execute(f"""
            INSERT INTO {EVENTS} (source, event_id, type, occurred_at, received_at, payload,
                                  body_sha256, applied_at, apply_attempts, apply_error)
            SELECT 'webhook', 'ev' || g, 'user_registered', now(), now(), '{{}}', '-',
                   CASE WHEN g > 19900 THEN NULL ELSE now() END, 0, ''
              FROM generate_series(1, 20000) g
        """)  # noqa: S608 (the model's table)  # fmt: skip
        cursor.execute(f"ANALYZE {SENDS}")
        cursor.execute(f"ANALYZE {EVENTS}")


def plan(sql: str, params: object) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_every_statement_of_a_scrape_and_of_healthz_reads_an_index(many_rows):
    attempts = 5
    statements = {
        **{
            f"count {name}": (text, [10_000])
            for name, text in journeys_metrics._COUNT_BY_CHANNEL.items()
        },
        "ages": (journeys_metrics._AGES_SQL, [attempts]),
        "lateness": (journeys_metrics._LATENESS_SQL, [10_000]),
        "events": (journeys_metrics._EVENTS_SQL, {"attempts": attempts, "limit": 10_000}),
        "stall": (
            journeys_metrics._STALL_SQL,
            {
                "stall": 120,
                "cap": 10_000,
                "send_lease": 120,
                "event_lease": 120,
                "attempts": attempts,
            },
        ),
    }
    plans = {name: plan(text, params) for name, (text, params) in statements.items()}

    for name, text in plans.items():
        assert f"Seq Scan on {SENDS}" not in text, (name, text)
        assert f"Seq Scan on {EVENTS}" not in text, (name, text)
    assert "send_pending_due" in plans["count due"], plans["count due"]
    assert "send_pending_due" in plans["count pending"], plans["count pending"]
    assert "send_in_flight" in plans["count in_flight"], plans["count in_flight"]
    assert "send_pending_due" in plans["lateness"], plans["lateness"]
    for index in ("send_pending_due", "send_in_flight", "event_unapplied"):
        assert index in plans["ages"], plans["ages"]
        assert index in plans["stall"], plans["stall"]
    assert "event_unapplied" in plans["events"], plans["events"]


def test_a_scrape_is_quick_on_twenty_thousand_sends(client, many_rows):
    parsed = scrape(client)

    assert value(parsed, "nudge_sends_due", channel="email") == 200
    assert value(parsed, "nudge_sends_in_flight", channel="sms") == 100
    # 20,200 pending emails: more than the exact limit (10,000), so the planner's estimate
    assert value(parsed, "nudge_metric_exact", metric="nudge_sends_pending") == 0
    assert 18_000 <= value(parsed, "nudge_sends_pending", channel="email") <= 22_500
    assert value(parsed, "nudge_events_unapplied") == 100
    assert value(parsed, "nudge_metrics_collect_seconds") < 1.0


# --- gunicorn's workers: one sum, whichever worker answers


@pytest.mark.slow
def test_the_workers_counters_are_summed_by_every_scrape(db):
    with running_server(
        "-c", "config/gunicorn.py", "--workers", "2", DATABASE_URL=database_url(connection)
    ) as base:
        for _ in range(20):
            get(f"{base}/healthz")
        counts = []
        for _ in range(6):
            status, body, _ = get(f"{base}/metrics")
            assert status == 200, body
            parsed = samples(body.decode())
            counts.append(
                value(parsed, "django_http_responses_total_by_status_view_method_total",
                      status="200", view="healthz", method="GET")
            )  # fmt: skip
            assert value(parsed, "nudge_metrics_database_up") == 1

    # at least the 20 and the start-up probe, from whichever of the two workers answered
    assert min(counts) >= 21, counts


# --- settings from the environment


def settings_seen(**environment: str) -> list[str]:
    probe = (
        "import config.settings as s; print(s.DATABASES['default']['ENGINE']); "
        "print(sum('prometheus' in m for m in s.MIDDLEWARE)); print(*s.NUDGE_METRICS_TOKENS); "
        "print(*s.NUDGE_METRICS_ALLOWED_IPS); print(s.NUDGE_STALL_SECONDS)"
    )
    env = {**os.environ, "DATABASE_URL": "postgres://nudge@127.0.0.1:1/nudge",
           "NUDGE_ENV_FILE": "/nonexistent/.env", **environment}  # fmt: skip
    for name in ("NUDGE_METRICS_DJANGO", "NUDGE_METRICS_TOKEN", "NUDGE_METRICS_ALLOWED_IPS",
                 "NUDGE_STALL_SECONDS"):  # fmt: skip
        if name not in environment:
            env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_settings_come_from_the_environment():
    assert settings_seen() == [
        "django_prometheus.db.backends.postgresql", "2", "", "127.0.0.0/8 ::1/128", "120.0",
    ]  # fmt: skip
    assert settings_seen(
        NUDGE_METRICS_DJANGO="false", NUDGE_METRICS_TOKEN="one two",
        NUDGE_METRICS_ALLOWED_IPS="10.0.0.0/8", NUDGE_STALL_SECONDS="300",
    ) == ["django.db.backends.postgresql", "0", "one two", "10.0.0.0/8", "300.0"]  # fmt: skip
