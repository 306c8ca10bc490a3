from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.signing import SignedPackage

from journeys import services
from journeys.models import Journey, ScheduledSend
from journeys.selectors import known_event_types
from journeys.specs import journey_spec_parse
from marketing.models import Event
from marketing.services import IngestResult, event_ingest
from marketing.validation import event_validate
from tests.webhook_client import event


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def minutes_ago(minutes: float) -> datetime:
    return timezone.now() - timedelta(minutes=minutes)


def make_journey(**overrides: Any) -> Journey:
    """A one-step email journey on checkout_started that a payment exits, saved through the
    journeys-as-code service; `overrides` replace the spec's top-level keys."""
    spec = {
        "slug": "j",
        "name": "J",
        "trigger": "checkout_started",
        "exit_on": ["payment_finished"],
        "dedupe": "first",
        "reentry": "every",
        "max_lateness": "PT2H",
        "steps": [
            {
                "delay": "PT10M",
                "channel": "email",
                "template": {"subject": "Hi", "body": "{{ cart.checkout_url }}"},
            }
        ],
        **overrides,
    }
    parsed, errors = journey_spec_parse(spec, known_types=known_event_types())
    assert not errors, errors
    journey, _ = services.journey_save_spec(spec=parsed)
    return journey


def make_event(
    event_id: str,
    event_type: str,
    *,
    user: str = "u_1",
    at: datetime,
    cart: str | None = None,
    payment: str | None = None,
    **user_fields: Any,
) -> dict[str, Any]:
    """A signed-webhook event. The customer consents to email and SMS (`consent` given here
    is merged over that: consent={"sms": False}; consent=None sends no consent at all), so
    that marketing journeys send under NUDGE_CONSENT_DEFAULT=deny, the default."""
    payload = event(event_id, event_type, user_id=user, occurred_at=iso(at))
    consent = user_fields.pop("consent", {})
    payload["user"].update(user_fields)
    if consent is not None:
        payload["user"]["consent"] = {"email": True, "sms": True, **consent}
    if cart:
        payload["cart"] = {
            "id": cart,
            "total": "120.00",
            "currency": "EUR",
            "checkout_url": f"https://shop.example/checkout/{cart}",
            "items": [],
        }
    if payment:
        payload["payment"] = {
            "id": payment,
            "cart_id": cart,
            "amount": "120.00",
            "currency": "EUR",
            "discount_code": None,
        }
    return payload


def ingest(payload: dict[str, Any]) -> IngestResult:
    """The webhook's path after signature verification (validate, then the service), then
    what the ticker and a messaging worker do next: apply the stored event to journeys."""
    data, errors = event_validate(payload)
    assert data is not None, errors
    result = event_ingest(source=Event.Source.WEBHOOK, data=data, payload=payload)
    services.events_apply_pending()
    return result


def dispatch_due() -> dict[int, str]:
    """What the ticker and a worker do, in-process: claim what is due, dispatch each."""
    claimed = services.scheduled_sends_claim_due(limit=10_000)
    return {pk: services.scheduled_send_dispatch(send_id=pk) for pk in claimed}


def queued_tasks() -> list[tuple[str, Any]]:
    """The tasks waiting in the messaging queue (the real broker of the test settings),
    taken off it."""
    broker = get_broker("messaging")
    tasks = []
    while (message := broker.dequeue()) is not None:
        for ack_id, package in message:
            task = SignedPackage.loads(package)
            tasks.append((task["func"], list(task["args"])))
            broker.acknowledge(ack_id)
    return tasks


def sends(**filters: Any) -> list[ScheduledSend]:
    return list(
        ScheduledSend.objects.filter(**filters)
        .select_related("journey", "cart", "customer")
        .order_by("id")
    )


@pytest.fixture
def demo_journeys(db: None) -> None:
    services.demo_journeys_ensure()
