"""A batch is stored with set-based SQL; what it does must be exactly what the same events do
one by one: the same answers, customers, carts, payments, events, and cancelled sends."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from journeys import services as journeys_services
from journeys.models import ScheduledSend
from journeys.services import demo_journeys_ensure
from marketing import services
from marketing.api.serializers import EventSerializer
from marketing.models import Cart, Customer, Event, Payment
from marketing.services import batch as batch_ingest
from tests.journeys.test_engine import make_journey

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the set-based path"),
]

USERS = [f"u_{n}" for n in range(5)]
CARTS = [f"c_{n}" for n in range(6)]
# whole minutes from one instant: events of a customer often occur at the same time
BASE = timezone.now().replace(second=0, microsecond=0)


def random_event(rng: random.Random, event_id: str) -> dict[str, Any]:
    kind = rng.choice(["user_registered", "checkout_started", "payment_finished", "user_updated"])
    occurred = BASE - timedelta(minutes=rng.randrange(0, 90, 5))
    user: dict[str, Any] = {"id": rng.choice(USERS)}
    for field, values in {
        "email": ["a@example.com", "b@example.com", ""],
        "phone": ["+14155550101", "+4915112345670", None, ""],
        "first_name": ["Ana", "Ben", None],
        "timezone": ["UTC", "Europe/Berlin"],
        "consent": [{"email": False}, {"sms": False, "email": True}, {}],
    }.items():
        if rng.random() < 0.5:
            user[field] = rng.choice(values)
    payload: dict[str, Any] = {
        "id": event_id,
        "type": kind,
        "occurred_at": occurred.isoformat().replace("+00:00", "Z"),
        "user": user,
    }
    if kind == "checkout_started":
        payload["cart"] = {
            "id": rng.choice(CARTS),
            "total": rng.choice(["10.00", "99.50"]),
            "currency": "EUR",
            "checkout_url": "https://shop.example/checkout",
            "items": [{"sku": rng.choice(["tea", "pot"])}],
        }
    if kind == "payment_finished":
        payload["payment"] = {
            "id": f"p_{rng.randrange(6)}",
            "cart_id": rng.choice([*CARTS, None]),
            "amount": "10.00",
            "currency": "EUR",
        }
    return payload


def random_batch(rng: random.Random, size: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for n in range(size):
        roll = rng.random()
        if events and roll < 0.1:  # the same event again
            events.append(dict(rng.choice(events)))
        elif events and roll < 0.15:  # a known id with other content
            events.append({**random_event(rng, rng.choice(events)["id"])})
        else:
            events.append(random_event(rng, f"e_{rng.randrange(10_000)}_{n}"))
    return events


def validated(events: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    items = []
    for payload in events:
        serializer = EventSerializer(data=payload)
        serializer.is_valid(raise_exception=True)
        items.append((serializer.validated_data, payload))
    return items


def outcome_shape(outcome: services.BatchOutcome) -> tuple[str, Any]:
    if isinstance(outcome, services.IngestResult):
        return ("created" if outcome.created else "repeat", outcome.event.event_id)
    return (type(outcome).__name__, str(outcome))


def state() -> dict[str, Any]:
    return {
        "customers": sorted(
            Customer.objects.values_list(
                "external_id",
                "email",
                "phone",
                "first_name",
                "timezone",
                "email_consent",
                "email_consent_source",
                "email_consent_at",
                "sms_consent",
                "sms_consent_source",
                "sms_consent_at",
                "profile_as_of",
            )
        ),
        "carts": sorted(
            Cart.objects.values_list(
                "external_id",
                "customer__external_id",
                "total",
                "currency",
                "checkout_url",
                "items",
            )
        ),
        "payments": sorted(
            Payment.objects.values_list(
                "external_id",
                "customer__external_id",
                "cart__external_id",
                "amount",
                "currency",
                "discount_code",
            )
        ),
        "events": sorted(
            Event.objects.values_list(
                "event_id",
                "type",
                "customer__external_id",
                "occurred_at",
                "body_sha256",
                "applied_at",
            )
        ),
        "sends": sorted(
            ScheduledSend.objects.values_list(
                "customer__external_id", "journey__slug", "cart__external_id", "status", "reason"
            )
        ),
    }


def run(apply: Any) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """Outcomes, the state as answered, and the state once applied; then rolled back."""
    with transaction.atomic():
        outcomes = [outcome_shape(outcome) for outcome in apply()]
        stored = state()
        journeys_services.events_apply_pending()
        applied = state()
        stored["events"] = [row[:-1] for row in stored["events"]]  # applied_at: not compared
        applied["events"] = [row[:-1] for row in applied["events"]]
        transaction.set_rollback(True)
    return outcomes, stored, applied


@pytest.mark.parametrize("seed", range(25))
def test_a_batch_does_what_its_events_do_one_by_one(seed):
    rng = random.Random(seed)
    demo_journeys_ensure()  # exits per customer
    make_journey(slug="per-cart", dedupe="every", exit_scope="cart")  # and per cart
    # a history: customers with carts and pending sends, some events already stored
    for payload in random_batch(rng, 12):
        services.event_ingest_outcome(Event.Source.WEBHOOK, *validated([payload])[0])
    journeys_services.events_apply_pending()
    batch = validated(random_batch(rng, 30))

    as_batch = run(lambda: services.events_ingest_batch(source=Event.Source.WEBHOOK, items=batch))
    one_by_one = run(
        lambda: [services.event_ingest_outcome(Event.Source.WEBHOOK, *item) for item in batch]
    )

    assert as_batch[0] == one_by_one[0]  # the answers
    assert as_batch[1] == one_by_one[1]  # what the 2xx committed
    assert as_batch[2] == one_by_one[2]  # and what applying the events did


def test_an_event_stored_by_another_delivery_during_the_batch_falls_back_item_by_item(
    monkeypatch,
):
    first = validated([random_event(random.Random(1), "e_race")])[0]
    assert isinstance(
        services.event_ingest_outcome(Event.Source.WEBHOOK, *first), services.IngestResult
    )
    # the batch's look-up misses it, as if another delivery committed it just after
    monkeypatch.setattr(
        batch_ingest,
        "_BATCH_STORED_SQL",
        batch_ingest._BATCH_STORED_SQL.replace("WHERE", "WHERE false AND"),
    )
    other = validated([random_event(random.Random(2), "e_new")])[0]

    outcomes = services.events_ingest_batch(source=Event.Source.WEBHOOK, items=[first, other])

    assert [outcome_shape(outcome) for outcome in outcomes] == [
        ("repeat", "e_race"),
        ("created", "e_new"),
    ]
    assert sorted(Event.objects.values_list("event_id", flat=True)) == ["e_new", "e_race"]
