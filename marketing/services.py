"""Every write to marketing data, and the one way events enter the system."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group, Permission, User
from django.db import IntegrityError, transaction
from django.db.models import Q

from marketing.models import Cart, Customer, Event, EventType, Payment
from marketing.signals import event_recorded

# Set while event ingestion writes customers, carts and payments, so the host-save adapters
# (receivers.py) do not record a second event for the same change.
_ingesting: contextvars.ContextVar[bool] = contextvars.ContextVar("nudge_ingesting", default=False)


class CartOwnedByAnotherCustomer(Exception):
    """An event names a cart id that already belongs to a different customer."""


class EventConflict(Exception):
    """An event id we already hold arrived with a different body."""

    def __init__(self, event: Event) -> None:
        super().__init__(f"event {event.event_id} was already received with a different body")
        self.event = event


@dataclass(frozen=True)
class IngestResult:
    event: Event
    created: bool

    @property
    def body(self) -> dict[str, Any]:
        return event_result(self.event)


def canonical_sha256(payload: Any) -> str:
    """Hash of an event's canonical JSON: same content, same hash, however it was formatted."""
    encoded = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(encoded.encode()).hexdigest()


def event_result(event: Event) -> dict[str, Any]:
    """The answer for an accepted event; the same for every repeat of it."""
    return {
        "id": event.event_id,
        "type": event.type,
        "status": "accepted",
        "occurred_at": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "received_at": event.received_at.isoformat().replace("+00:00", "Z"),
    }


def is_ingesting() -> bool:
    return _ingesting.get()


@contextlib.contextmanager
def _ingesting_context() -> Iterator[None]:
    token = _ingesting.set(True)
    try:
        yield
    finally:
        _ingesting.reset(token)


# --- customers, carts, payments --------------------------------------------------------------


def customer_upsert(
    *,
    external_id: str,
    as_of: datetime | None = None,
    email: str | None = None,
    phone: str | None = None,
    first_name: str | None = None,
    timezone_name: str | None = None,
    consent_email: bool | None = None,
    consent_sms: bool | None = None,
) -> Customer:
    """Create or update a customer, holding its row lock until the transaction commits.

    Fields left None are kept. Data older than the last update (`as_of`, the event's
    occurred_at) is ignored, since events can arrive out of order. The lock serialises
    everything that happens to one customer (enrolment, cancellation) across processes.
    """
    given = {
        name: value
        for name, value in {
            "email": email,
            "phone": phone,
            "first_name": first_name,
            "timezone": timezone_name,
            "consent_email": consent_email,
            "consent_sms": consent_sms,
        }.items()
        if value is not None
    }
    with transaction.atomic():
        customer = Customer.objects.select_for_update().filter(external_id=external_id).first()
        if customer is None:
            try:
                with transaction.atomic():
                    return Customer.objects.create(
                        external_id=external_id, profile_as_of=as_of, **given
                    )
            except IntegrityError:  # created concurrently: wait for it and lock it
                customer = Customer.objects.select_for_update().get(external_id=external_id)
        if as_of and customer.profile_as_of and as_of < customer.profile_as_of:
            return customer
        changed = [name for name, value in given.items() if getattr(customer, name) != value]
        if as_of and customer.profile_as_of != as_of:
            customer.profile_as_of = as_of
            changed.append("profile_as_of")
        if changed:
            for name in given.keys() & set(changed):
                setattr(customer, name, given[name])
            customer.save(update_fields=[*changed, "updated_at"])
        return customer


def cart_upsert(
    *,
    customer: Customer,
    external_id: str,
    total: Decimal,
    currency: str,
    checkout_url: str = "",
    items: list[dict[str, Any]] | None = None,
) -> Cart:
    values = {
        "customer": customer,
        "total": total,
        "currency": currency,
        "checkout_url": checkout_url or "",
        "items": items or [],
    }
    with transaction.atomic():
        cart, created = Cart.objects.get_or_create(external_id=external_id, defaults=values)
        if not created and cart.customer_id != customer.pk:
            # a shop's cart ids are unique; moving a cart would rewrite another customer's history
            raise CartOwnedByAnotherCustomer(f"cart {external_id} belongs to another customer")
        if not created:
            changed = [name for name, value in values.items() if getattr(cart, name) != value]
            if changed:
                for name in changed:
                    setattr(cart, name, values[name])
                cart.save(update_fields=[*changed, "updated_at"])
        return cart


def payment_upsert(
    *,
    customer: Customer,
    external_id: str,
    amount: Decimal,
    currency: str,
    cart_external_id: str | None = None,
    discount_code: str | None = None,
) -> Payment:
    cart = None
    if cart_external_id:
        cart = Cart.objects.filter(external_id=cart_external_id, customer=customer).first()
    payment, _ = Payment.objects.get_or_create(
        external_id=external_id,
        defaults={
            "customer": customer,
            "cart": cart,
            "amount": amount,
            "currency": currency,
            "discount_code": discount_code or "",
        },
    )
    return payment


# --- events ---------------------------------------------------------------------------------


@transaction.atomic
def event_ingest(*, source: str, data: dict[str, Any], payload: dict[str, Any]) -> IngestResult:
    """Record one validated event (webhook or batch item), idempotently, with its effects.

    `data` is the serializer's validated data, `payload` the event as received (stored as is).
    A repeat of a known id with the same content returns the stored event (created=False);
    with other content it raises EventConflict. Concurrent deliveries of one id produce one
    event and one effect: the unique constraint makes the later ones wait and find it.
    """
    body_sha256 = canonical_sha256(payload)
    existing = Event.objects.filter(source=source, event_id=data["id"]).first()
    if existing is not None:
        return _repeat(existing, body_sha256)

    user = data["user"]
    with _ingesting_context():
        consent = user.get("consent") or {}
        customer = customer_upsert(
            external_id=user["id"],
            as_of=data["occurred_at"],
            email=user.get("email"),
            phone=user.get("phone"),
            first_name=user.get("first_name"),
            timezone_name=user.get("timezone"),
            consent_email=consent.get("email"),
            consent_sms=consent.get("sms"),
        )
        event = _event_insert(
            source=source,
            event_id=data["id"],
            event_type=data["type"],
            customer=customer,
            occurred_at=data["occurred_at"],
            payload=payload,
            body_sha256=body_sha256,
        )
        if isinstance(event, IngestResult):
            return event
        if cart := data.get("cart"):
            cart_upsert(
                customer=customer,
                external_id=cart["id"],
                total=cart["total"],
                currency=cart["currency"],
                checkout_url=cart.get("checkout_url", ""),
                items=cart.get("items"),
            )
        if payment := data.get("payment"):
            payment_upsert(
                customer=customer,
                external_id=payment["id"],
                amount=payment["amount"],
                currency=payment["currency"],
                cart_external_id=payment.get("cart_id"),
                discount_code=payment.get("discount_code"),
            )
    event_recorded.send(sender=Event, event=event)
    return IngestResult(event=event, created=True)


def _repeat(existing: Event, body_sha256: str) -> IngestResult:
    if existing.body_sha256 != body_sha256:
        raise EventConflict(existing)
    return IngestResult(event=existing, created=False)


def _event_insert(
    *,
    source: str,
    event_id: str,
    event_type: str,
    customer: Customer,
    occurred_at: datetime,
    payload: dict[str, Any],
    body_sha256: str,
) -> Event | IngestResult:
    """Insert the event row, or the repeat's result when another delivery won the race."""
    try:
        with transaction.atomic():
            return Event.objects.create(
                source=source,
                event_id=event_id,
                type=event_type,
                customer=customer,
                occurred_at=occurred_at,
                payload=payload,
                body_sha256=body_sha256,
            )
    except IntegrityError:
        existing = Event.objects.get(source=source, event_id=event_id)
        return _repeat(existing, body_sha256)


def event_record_host(
    *, event_type: str, customer_id: int, cart_id: int | None = None, payment_id: int | None = None
) -> IngestResult:
    """Record the event for a customer, cart or payment the host application saved.

    The payload has the webhook's shape, so journeys cannot tell the two sources apart.
    Idempotent: one event per (type, object).
    """
    with transaction.atomic():
        customer = Customer.objects.select_for_update().get(pk=customer_id)
        cart = Cart.objects.get(pk=cart_id) if cart_id else None
        payment = Payment.objects.select_related("cart").get(pk=payment_id) if payment_id else None
        subject = payment or cart or customer
        event_id = f"{type(subject).__name__.lower()}:{subject.external_id}:{event_type}"
        existing = Event.objects.filter(source=Event.Source.HOST, event_id=event_id).first()
        if existing is not None:
            return IngestResult(event=existing, created=False)
        occurred_at = subject.created_at
        payload = host_event_payload(
            event_id=event_id,
            event_type=event_type,
            occurred_at=occurred_at,
            customer=customer,
            cart=cart,
            payment=payment,
        )
        event = _event_insert(
            source=Event.Source.HOST,
            event_id=event_id,
            event_type=event_type,
            customer=customer,
            occurred_at=occurred_at,
            payload=payload,
            body_sha256=canonical_sha256(payload),
        )
        if isinstance(event, IngestResult):
            return event
        event_recorded.send(sender=Event, event=event)
        return IngestResult(event=event, created=True)


def host_event_payload(
    *,
    event_id: str,
    event_type: str,
    occurred_at: datetime,
    customer: Customer,
    cart: Cart | None,
    payment: Payment | None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": event_id,
        "type": event_type,
        "occurred_at": occurred_at.isoformat().replace("+00:00", "Z"),
        "user": {
            "id": customer.external_id,
            "email": customer.email,
            "phone": customer.phone or None,
            "first_name": customer.first_name,
            "timezone": customer.timezone,
            "consent": {"email": customer.consent_email, "sms": customer.consent_sms},
        },
    }
    if cart is not None:
        payload["cart"] = {
            "id": cart.external_id,
            "total": str(cart.total),
            "currency": cart.currency,
            "checkout_url": cart.checkout_url,
            "items": cart.items,
        }
    if payment is not None:
        payload["payment"] = {
            "id": payment.external_id,
            "cart_id": payment.cart.external_id if payment.cart else None,
            "amount": str(payment.amount),
            "currency": payment.currency,
            "discount_code": payment.discount_code or None,
        }
    return payload


# Which event a newly saved host object stands for.
HOST_EVENT_FOR_MODEL: dict[type, str] = {
    Customer: EventType.USER_REGISTERED,
    Cart: EventType.CHECKOUT_STARTED,
    Payment: EventType.PAYMENT_FINISHED,
}


# --- the marketer's access -----------------------------------------------------------------

MARKETER_GROUP = "Marketer"

# What a marketer may do, by app label and permission codename. Entries whose model does not
# exist (yet) are skipped, so each app adds its own here as it grows; the group is rebuilt
# from this list after every migrate (receivers.sync_marketer_group).
MARKETER_PERMISSIONS: dict[str, list[str]] = {
    # customers' consent and contact details are the marketer's to correct; the rest is
    # what the shop reported and is only read
    "marketing": ["view_customer", "change_customer", "view_cart", "view_payment", "view_event"],
    "journeys": [
        *(
            f"{action}_{model}"
            for model in ("journey", "journeystep")
            for action in ("add", "change", "delete", "view")
        ),
        "view_enrollment",
        "view_scheduledsend",
        "change_scheduledsend",
    ],
    "media_tasks": [
        "add_uploadedimage",
        "view_uploadedimage",
        "change_uploadedimage",
        "view_imagevariant",
    ],
    "django_q": ["view_task", "view_failure", "view_schedule"],
}


@transaction.atomic
def marketer_group_sync() -> Group:
    """Create the Marketer group and give it exactly the MARKETER_PERMISSIONS that exist."""
    group, _ = Group.objects.get_or_create(name=MARKETER_GROUP)
    wanted = Q(pk__in=[])
    for app_label, codenames in MARKETER_PERMISSIONS.items():
        wanted |= Q(content_type__app_label=app_label, codename__in=codenames)
    permissions = list(Permission.objects.filter(wanted))
    if {p.pk for p in permissions} != set(group.permissions.values_list("pk", flat=True)):
        group.permissions.set(permissions)
    return group


@transaction.atomic
def marketer_user_ensure(*, username: str, password: str | None, email: str = "") -> User:
    """A staff login in the Marketer group; `password` None keeps the current one (a new user
    without one cannot log in until it is set)."""
    group = marketer_group_sync()
    user, created = User.objects.get_or_create(
        username=username, defaults={"email": email, "is_staff": True}
    )
    if not user.is_staff or not user.is_active:
        user.is_staff = user.is_active = True
        user.save(update_fields=["is_staff", "is_active"])
    if password is not None and not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])
    elif created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    user.groups.add(group)
    return user
