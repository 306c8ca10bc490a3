"""What recording an event can come to: stored (or a repeat of a stored one), or refused, and
the answer a sender gets for an accepted event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marketing.models import Event
from marketing.services.canonical import iso_utc


class EventInvalid(Exception):
    """An event that is not valid: `errors` are the serializer's, as a webhook's 400 has them."""

    def __init__(self, errors: Any) -> None:
        super().__init__(f"invalid event: {errors}")
        self.errors = errors


class CartOwnedByAnotherCustomer(Exception):
    """An event names a cart id that already belongs to a different customer."""

    def __init__(self, cart_id: str) -> None:
        super().__init__(f"cart {cart_id} belongs to another customer")
        self.cart_id = cart_id


class EventConflict(Exception):
    """An event id we already hold arrived with a different body."""

    def __init__(self, event: Event) -> None:
        super().__init__(f"event {event.event_id} was already received with a different body")
        self.event = event


def event_result(event: Event) -> dict[str, Any]:
    """The answer for an accepted event; the same for every repeat of it."""
    return {
        "id": event.event_id,
        "type": event.type,
        "status": "accepted",
        "occurred_at": iso_utc(event.occurred_at),
        "received_at": iso_utc(event.received_at),
    }


@dataclass(frozen=True)
class IngestResult:
    event: Event
    created: bool

    @property
    def body(self) -> dict[str, Any]:
        return event_result(self.event)


# One item of a batch: what event_ingest returns, or the refusal it raises.
BatchOutcome = IngestResult | EventConflict | CartOwnedByAnotherCustomer


def event_repeat(existing: Event, body_sha256: str) -> IngestResult:
    """The result for an event id already stored: a repeat if the body is the same."""
    if existing.body_sha256 != body_sha256:
        raise EventConflict(existing)
    return IngestResult(event=existing, created=False)


def event_repeat_or_conflict(existing: Event, body_sha256: str) -> IngestResult | EventConflict:
    try:
        return event_repeat(existing, body_sha256)
    except EventConflict as exc:
        return exc
