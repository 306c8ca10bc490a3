"""Token use is rate-limited: requests per authenticated user (NUDGE_API_TOKEN_RATE) and failed
authentications per client address (NUDGE_API_AUTH_FAILURE_RATE), answered 429 with
Retry-After. The signed event webhooks are the ingest path and are never throttled."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.webhook_client import SECRET, event, post_signed

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _counts(settings):
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET]
    cache.clear()
    yield
    cache.clear()


def token_client(name: str) -> APIClient:
    user = User.objects.create_user(name, password="x" * 12)
    user.user_permissions.add(*Permission.objects.filter(codename="view_scheduledsend"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def bad_token_client(address: str = "203.0.113.7") -> APIClient:
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    return client


def test_a_token_over_its_rate_gets_429_with_retry_after(settings):
    settings.NUDGE_API_TOKEN_RATE = "3/min"
    ana, bob = token_client("ana"), token_client("bob")

    statuses = [ana.get("/api/sends/").status_code for _ in range(4)]
    throttled = ana.get("/api/sends/")

    assert statuses == [200, 200, 200, 429]
    assert throttled.status_code == 429
    assert 0 < int(throttled["Retry-After"]) <= 60
    assert "throttled" in throttled.json()["detail"]
    assert bob.get("/api/sends/").status_code == 200  # counted per user


def test_the_default_rate_is_600_a_minute_per_user(settings):
    assert settings.NUDGE_API_TOKEN_RATE == "600/min"
    assert settings.NUDGE_API_AUTH_FAILURE_RATE == "30/min"


def test_no_rate_means_no_limit(settings):
    settings.NUDGE_API_TOKEN_RATE = "none"
    ana = token_client("ana")

    assert {ana.get("/api/sends/").status_code for _ in range(5)} == {200}


def test_failed_authentications_lock_the_address_out_even_with_a_good_token(settings):
    settings.NUDGE_API_AUTH_FAILURE_RATE = "2/min"
    guesser = bad_token_client("203.0.113.7")
    good = token_client("ana")

    guesses = [guesser.get("/api/sends/").status_code for _ in range(3)]
    good_from_there = good.get("/api/sends/", REMOTE_ADDR="203.0.113.7")
    good_elsewhere = good.get("/api/sends/", REMOTE_ADDR="198.51.100.1")

    assert guesses == [401, 401, 429]
    assert good_from_there.status_code == 429
    assert int(good_from_there["Retry-After"]) > 0
    assert good_elsewhere.status_code == 200


def test_successful_requests_do_not_count_as_failures(settings):
    settings.NUDGE_API_AUTH_FAILURE_RATE = "2/min"
    ana = token_client("ana")

    assert {ana.get("/api/sends/").status_code for _ in range(5)} == {200}


def test_the_signed_event_endpoints_are_never_throttled(client, settings):
    settings.NUDGE_API_TOKEN_RATE = "1/min"
    settings.NUDGE_API_AUTH_FAILURE_RATE = "1/min"

    bad_signatures = [
        client.post("/api/events/", b"{}", content_type="application/json").status_code
        for _ in range(3)
    ]
    singles = [post_signed(client, "/api/events/", event(f"evt_{n}")).status_code for n in range(5)]
    batches = [
        post_signed(client, "/api/events/batch/", {"events": [event(f"evt_b{n}")]}).status_code
        for n in range(3)
    ]

    assert bad_signatures == [401, 401, 401]
    assert singles == [202] * 5
    assert batches == [200] * 3


def test_the_schema_documents_429_on_token_endpoints_only(client):
    paths = client.get("/api/schema/", {"format": "json"}).json()["paths"]

    assert "429" in paths["/api/sends/"]["get"]["responses"]
    assert "429" in paths["/api/sends/{send_id}/cancel/"]["post"]["responses"]
    assert "429" not in paths["/api/events/"]["post"]["responses"]
    assert "429" not in paths["/api/events/batch/"]["post"]["responses"]
