"""The API answers as its OpenAPI schema says: thousands of requests generated from
/api/schema/ by schemathesis, in-process against the WSGI application and the test
PostgreSQL, each checked for server errors and for status code, content type and body
conformance.

The event endpoints get a valid Standard Webhooks signature over the exact bytes sent; the
token endpoints a token of a user with every permission most of the time, else one with fewer
permissions, none, or no credentials at all. Path ids are real rows' ids half of the time.
Generation is derandomized: the same requests on every run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from journeys import services as journeys_services
from journeys.models import Journey, ScheduledSend
from tests.factories import UploadedImageFactory
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago
from tests.webhook_client import signed_headers

# About a minute in all on 2 idle cores; the timeout leaves room for a loaded CI machine.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Generated requests per operation and generation mode (positive: fits the schema; negative:
# does not). Their sum is the floor the tests assert: at least 5,000 requests, each operation
# its share of them (its own test, so that pytest-xdist workers share the minutes this takes).
EXAMPLES: dict[str, tuple[int, int]] = {
    "POST /api/events/": (900, 300),
    "POST /api/events/batch/": (300, 100),
    "GET /api/sends/": (800, 200),
    "GET /api/sends/{send_id}/": (600, 150),
    "GET /api/journeys/{slug}/stats/": (400, 150),
    "POST /api/sends/{send_id}/cancel/": (500, 150),
    "GET /api/codes/{code}/": (400, 150),
    "POST /api/media/": (250, 100),
    "GET /api/media/{id}/": (550, 150),
}
MINIMUM_REQUESTS = 5000
# What the requests that fit the schema get at least once: past signatures, validation and
# permissions, not only refused.
ANSWERED: dict[str, int | None] = {
    "POST /api/events/": 202,
    "POST /api/events/batch/": 200,
    "GET /api/sends/": 200,
    "GET /api/sends/{send_id}/": 200,
    "POST /api/sends/{send_id}/cancel/": 200,
    "GET /api/journeys/{slug}/stats/": 200,
    "GET /api/codes/{code}/": 200,
    "POST /api/media/": None,
    "GET /api/media/{id}/": 200,
}

SIGNED = {"POST /api/events/", "POST /api/events/batch/"}
# Who calls the token endpoints, drawn per request: mostly a user allowed everything.
IDENTITIES = ["all"] * 6 + ["view-only", "none", "anonymous", "bad-token"]


def _user(name: str, *codenames: str) -> User:
    user = User.objects.create_user(name, password="x" * 12)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def seeded() -> dict[str, Any]:
    """Sends of every kind (pending, sent, with a cart and without), an image, three users."""
    journeys_services.demo_journeys_ensure()
    for index in range(3):
        user = f"u_{index}"
        ingest(make_event(f"reg_{index}", "user_registered", user=user, at=minutes_ago(40)))
        ingest(
            make_event(
                f"chk_{index}", "checkout_started", user=user, cart=f"c_{index}", at=minutes_ago(2)
            )
        )
    dispatch_due()
    everything = _user(
        "all",
        "view_scheduledsend",
        "change_scheduledsend",
        "check_discount_code",
        "view_journey",
        "view_uploadedimage",
        "add_uploadedimage",
    )
    tokens = {
        "all": Token.objects.create(user=everything).key,
        "view-only": Token.objects.create(user=_user("viewer", "view_scheduledsend")).key,
        "none": Token.objects.create(user=_user("nobody")).key,
    }
    image = UploadedImageFactory.create(uploaded_by=everything)
    sends = list(ScheduledSend.objects.values_list("pk", flat=True))
    # codes of sent and pending sends (valid and void), and one in lower case
    codes = list(
        ScheduledSend.objects.exclude(discount_code=None).values_list("discount_code", flat=True)
    )
    assert codes
    codes.append(codes[0].lower())
    assert ScheduledSend.objects.filter(cart=None).exists()
    assert ScheduledSend.objects.exclude(cart=None).exists()
    assert ScheduledSend.objects.filter(status="sent").exists()
    slugs = list(Journey.objects.values_list("slug", flat=True))
    return {
        "tokens": tokens,
        "ids": {"send_id": sends, "id": [image.pk], "code": codes, "slug": slugs},
    }


def _operations() -> dict[str, Any]:
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())
    return {op.ok().label: op.ok() for op in schema.get_all_operations()}


def test_every_operation_of_the_schema_has_its_share_of_requests(db):
    assert set(_operations()) == set(EXAMPLES), "a new operation needs its share of examples"
    assert set(ANSWERED) == set(EXAMPLES)


@pytest.mark.parametrize("label", list(EXAMPLES))
def test_the_api_conforms_to_its_schema(label, seeded, settings_override):
    operation = _operations()[label]
    statuses: dict[str, Counter[int]] = {}
    started = time.monotonic()
    positive, negative = EXAMPLES[label]
    for mode, examples in (
        (schemathesis.GenerationMode.POSITIVE, positive),
        (schemathesis.GenerationMode.NEGATIVE, negative),
    ):
        statuses[mode.value] = Counter()
        _fuzz(operation, mode, examples, seeded, statuses[mode.value])

    total = sum(sum(answers.values()) for answers in statuses.values())
    print(f"schemathesis: {label}: {total} requests in {time.monotonic() - started:.0f} s")
    for mode_name, answers in statuses.items():
        print(f"  {mode_name}: {dict(sorted(answers.items()))}")
    share = math.ceil((positive + negative) * MINIMUM_REQUESTS / sum(map(sum, EXAMPLES.values())))
    assert total >= share, statuses
    answered = ANSWERED[label]
    if answered is not None:
        assert statuses["positive"][answered] > 0, statuses


@pytest.fixture
def settings_override(settings):
    """No throttling here (tests/nudge/test_api_throttling.py has its own tests of it)."""
    settings.NUDGE_API_TOKEN_RATE = None
    settings.NUDGE_API_AUTH_FAILURE_RATE = None
    cache.clear()
    logging.disable(logging.WARNING)  # django.request logs each 4xx: thousands of lines
    yield settings
    logging.disable(logging.NOTSET)
    cache.clear()


def _raw_body(body: Any) -> bytes:
    """The bytes to send and sign for a generated body (negative cases may hold bytes)."""
    if isinstance(body, NotSet):
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return json.dumps(body, default=lambda value: value.decode("latin-1")).encode()


def _fuzz(operation, mode, examples: int, seeded, statuses: Counter[int]) -> None:
    ids = seeded["ids"]
    path_names = [name for name in ids if f"{{{name}}}" in operation.path]

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        identity=st.sampled_from(IDENTITIES),
        real_id=st.booleans(),
        pick=st.integers(min_value=0, max_value=10_000),
    )
    def run(case, identity: str, real_id: bool, pick: int) -> None:
        headers: dict[str, str] = {}
        for name in path_names:
            if real_id and isinstance(case.path_parameters, dict):
                case.path_parameters[name] = ids[name][pick % len(ids[name])]
        kwargs: dict[str, Any] = {}
        if operation.label in SIGNED:
            body = _raw_body(case.body)
            headers.update(signed_headers(body))
            headers["Content-Type"] = "application/json"
            kwargs["data"] = body
        elif identity in seeded["tokens"]:
            headers["Authorization"] = f"Token {seeded['tokens'][identity]}"
        elif identity == "bad-token":
            headers["Authorization"] = "Token 0000000000000000000000000000000000000000"
        response = case.call(headers=headers, **kwargs)
        case.validate_response(response, checks=CHECKS, headers=headers)
        if operation.label in SIGNED:
            assert response.status_code != 401, response.text  # every signature is valid
        statuses[response.status_code] += 1

    run()
