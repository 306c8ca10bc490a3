"""Events for the customers, carts and payments the host application saves through the ORM
(marketing.receivers calls event_record_host after the host's transaction commits).

The payload has the webhook's shape, built from the same column definitions the webhook's
statements store (profiles.py, purchases.py), and it is recorded through event_record, like a
webhook's body: journeys cannot tell the two sources apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction

from marketing.models import Cart, ConsentState, Customer, Event, EventType, Payment
from marketing.services.canonical import iso_utc
from marketing.services.ingest import event_record
from marketing.services.outcomes import EventConflict, IngestResult
from marketing.services.profiles import CUSTOMER_CONSENT, CUSTOMER_PROFILE
from marketing.services.purchases import CART_STATE, PAYMENT_RECORD

# Which event a newly saved host object stands for.
HOST_EVENT_FOR_MODEL: dict[type, str] = {
    Customer: EventType.USER_REGISTERED,
    Cart: EventType.CHECKOUT_STARTED,
    Payment: EventType.PAYMENT_FINISHED,
}


def event_record_host(
    *, event_type: str, customer_id: int, cart_id: int | None = None, payment_id: int | None = None
) -> IngestResult:
    """Record the event for a customer, cart or payment the host application saved.

    Idempotent: one event per (type, object), whatever the object looks like by then.
    """
    with transaction.atomic():
        customer = Customer.objects.select_for_update().get(pk=customer_id)
        cart = Cart.objects.get(pk=cart_id) if cart_id else None
        payment = Payment.objects.select_related("cart").get(pk=payment_id) if payment_id else None
        subject = payment or cart or customer
        event_id = f"{type(subject).__name__.lower()}:{subject.external_id}:{event_type}"
        if (stored := _host_event_stored(event_id)) is not None:
            return stored
        payload = host_event_payload(
            event_id=event_id,
            event_type=event_type,
            occurred_at=subject.created_at,
            customer=customer,
            cart=cart,
            payment=payment,
        )
        return _host_event_store(payload)


def host_event_payload(
    *,
    event_id: str,
    event_type: str,
    occurred_at: datetime,
    customer: Customer,
    cart: Cart | None,
    payment: Payment | None,
) -> dict[str, Any]:
    """The webhook body that says what the host saved."""
    user: dict[str, Any] = {"id": customer.external_id}
    for c in CUSTOMER_PROFILE:
        c.place(user, getattr(customer, c.name))
    # a known consent only: an unknown one is the absence of a statement
    consent = {
        c.key: getattr(customer, c.state.name) == ConsentState.GRANTED
        for c in CUSTOMER_CONSENT
        if getattr(customer, c.state.name) != ConsentState.UNKNOWN
    }
    if consent:
        user["consent"] = consent
    payload: dict[str, Any] = {
        "id": event_id,
        "type": event_type,
        "occurred_at": iso_utc(occurred_at),
        "user": user,
    }
    if cart is not None:
        payload["cart"] = {"id": cart.external_id}
        for c in CART_STATE:
            c.place(payload["cart"], getattr(cart, c.name))
    if payment is not None:
        payload["payment"] = {
            "id": payment.external_id,
            "cart_id": payment.cart.external_id if payment.cart else None,
        }
        for c in PAYMENT_RECORD:
            c.place(payload["payment"], getattr(payment, c.name))
    return payload


def host_event_record(*, payload: dict[str, Any]) -> IngestResult:
    """Record an event built from the save of a host model of NUDGE_HOST_EVENTS
    (marketing.host_sources), with source "host": validated and stored as a webhook body is
    (event_record; EventInvalid when it is not valid). Idempotent by its id: an event already
    recorded is returned (created=False) whatever the payload says now."""
    return _host_event_stored(payload["id"]) or _host_event_store(payload)


def _host_event_stored(event_id: str) -> IngestResult | None:
    """The host event of that id, if it is stored: an object records each event once,
    whatever it looks like by now."""
    existing = Event.objects.filter(source=Event.Source.HOST, event_id=event_id).first()
    return None if existing is None else IngestResult(event=existing, created=False)


def _host_event_store(payload: dict[str, Any]) -> IngestResult:
    try:
        return event_record(source=Event.Source.HOST, payload=payload)
    except EventConflict as exc:  # recorded concurrently, from an object since changed
        return IngestResult(event=exc.event, created=False)
