"""Every write to marketing data, and the one way events enter the system."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone

from marketing.models import Cart, Customer, Event, EventType, Payment
from marketing.signals import events_applying, events_stored
from nudge.db import prepared

logger = logging.getLogger(__name__)


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


def canonical_json(payload: Any) -> str:
    """An event's canonical JSON: same content, same text, however it was formatted."""
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )


def canonical_sha256(payload: Any) -> str:
    """Hash of an event's canonical JSON: same content, same hash, however it was formatted."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def event_result(event: Event) -> dict[str, Any]:
    """The answer for an accepted event; the same for every repeat of it."""
    return {
        "id": event.event_id,
        "type": event.type,
        "status": "accepted",
        "occurred_at": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "received_at": event.received_at.isoformat().replace("+00:00", "Z"),
    }


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
#
# Ingestion is the webhook's hot path, and a round trip to the database costs more than most
# statements' work, so it is upserts in SQL, not ORM get-or-create: the event, the customer's
# profile, the cart or payment it carries, and, through `events_stored`, the cancellations an
# exit event causes. On PostgreSQL one statement does all but the cancellations (a batch: one
# statement per table); elsewhere (SQLite >= 3.35) one statement per table and event. What the
# event means for journeys (enrolments) is applied afterwards by events_apply, on the
# messaging workers (see journeys.ticker).

# Fields an event leaves out (None) are kept: the new customer gets the default, the known
# customer keeps its value. An event older than the profile's last update changes nothing.
_CUSTOMER_SQL = """
INSERT INTO marketing_customer
       (external_id, email, phone, first_name, timezone, consent_email, consent_sms,
        profile_as_of, created_at, updated_at)
VALUES (%(id)s, COALESCE(%(email)s, ''), COALESCE(%(phone)s, ''), COALESCE(%(first_name)s, ''),
        COALESCE(%(timezone)s, 'UTC'), COALESCE(%(consent_email)s, TRUE),
        COALESCE(%(consent_sms)s, TRUE), %(as_of)s, %(now)s, %(now)s)
ON CONFLICT (external_id) DO UPDATE
   SET email = COALESCE(%(email)s, marketing_customer.email),
       phone = COALESCE(%(phone)s, marketing_customer.phone),
       first_name = COALESCE(%(first_name)s, marketing_customer.first_name),
       timezone = COALESCE(%(timezone)s, marketing_customer.timezone),
       consent_email = COALESCE(%(consent_email)s, marketing_customer.consent_email),
       consent_sms = COALESCE(%(consent_sms)s, marketing_customer.consent_sms),
       profile_as_of = excluded.profile_as_of, updated_at = excluded.updated_at
 WHERE marketing_customer.profile_as_of IS NULL
    OR marketing_customer.profile_as_of <= excluded.profile_as_of
RETURNING id
"""


def _db_datetime(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _profile(user: dict[str, Any]) -> dict[str, Any]:
    """The customer columns an event's `user` sets, in the upserts' order: its id, then the
    six profile fields, None where the event leaves the field out (the customer keeps it)."""
    consent = user.get("consent") or {}
    return {
        "id": user["id"],
        "email": user.get("email"),
        "phone": user.get("phone"),
        "first_name": user.get("first_name"),
        "timezone": user.get("timezone"),
        "consent_email": consent.get("email"),
        "consent_sms": consent.get("sms"),
    }


def _customer_store(*, user: dict[str, Any], as_of: datetime) -> int:
    """Insert or update the event's customer and return its id, in one statement. The
    upsert locks the row until commit, which serialises what happens to one customer."""
    params = {
        **_profile(user),
        "as_of": _db_datetime(as_of),
        "now": _db_datetime(timezone.now()),
    }
    with connection.cursor() as cursor:
        cursor.execute(_CUSTOMER_SQL, params)
        row = cursor.fetchone()
        if row is None:  # the stored profile is newer than this event: it stays
            cursor.execute("SELECT id FROM marketing_customer WHERE external_id = %s", [user["id"]])
            row = cursor.fetchone()
    return int(row[0])


# The one rule for a cart an event names: its latest state wins, unless the cart belongs to
# another customer (then no row is returned, and the event is refused).
_CART_UPSERT = """
ON CONFLICT (external_id) DO UPDATE
   SET total = excluded.total, currency = excluded.currency,
       checkout_url = excluded.checkout_url, items = excluded.items,
       updated_at = excluded.updated_at
 WHERE marketing_cart.customer_id = excluded.customer_id
"""

_CART_SQL = (
    """
INSERT INTO marketing_cart
       (external_id, customer_id, total, currency, checkout_url, items, created_at, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
"""
    + _CART_UPSERT
    + "RETURNING id"
)

_PAYMENT_SQL = """
INSERT INTO marketing_payment
       (external_id, customer_id, cart_id, amount, currency, discount_code, created_at)
VALUES (%s, %s, (SELECT id FROM marketing_cart WHERE external_id = %s AND customer_id = %s),
        %s, %s, %s, %s)
ON CONFLICT (external_id) DO NOTHING
"""

_EVENT_SQL = """
INSERT INTO marketing_event
       (source, event_id, type, customer_id, occurred_at, received_at, payload, body_sha256,
        applied_at, apply_claimed_at, apply_attempts, apply_error)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, NULL, NULL, 0, '')
ON CONFLICT (source, event_id) DO NOTHING
RETURNING id
"""


def _cart_store(*, customer_id: int, cart: dict[str, Any]) -> None:
    """Insert or update the cart; a cart id that belongs to another customer is refused
    (a shop's cart ids are unique: moving one would rewrite another customer's history)."""
    now = _db_datetime(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            _CART_SQL,
            [
                cart["id"],
                customer_id,
                cart["total"],
                cart["currency"],
                cart.get("checkout_url") or "",
                json.dumps(cart.get("items") or []),
                now,
                now,
            ],
        )
        if cursor.fetchone() is None:
            raise CartOwnedByAnotherCustomer(f"cart {cart['id']} belongs to another customer")


def _payment_store(*, customer_id: int, payment: dict[str, Any]) -> None:
    """Insert the payment once; its cart is linked when the customer's cart is known."""
    with connection.cursor() as cursor:
        cursor.execute(
            _PAYMENT_SQL,
            [
                payment["id"],
                customer_id,
                payment.get("cart_id"),
                customer_id,
                payment["amount"],
                payment["currency"],
                payment.get("discount_code") or "",
                _db_datetime(timezone.now()),
            ],
        )


def _event_store_stepwise(
    source: str,
    data: dict[str, Any],
    payload: dict[str, Any],
    body_sha256: str,
    received_at: datetime,
) -> tuple[int, int | None]:
    """(customer id, event id or None for a repeat): one statement per table."""
    customer_id = _customer_store(user=data["user"], as_of=data["occurred_at"])
    with connection.cursor() as cursor:
        cursor.execute(
            _EVENT_SQL,
            [
                source,
                data["id"],
                data["type"],
                customer_id,
                _db_datetime(data["occurred_at"]),
                _db_datetime(received_at),
                json.dumps(payload),
                body_sha256,
            ],
        )
        row = cursor.fetchone()
    if row is None:
        return customer_id, None
    if cart := data.get("cart"):
        _cart_store(customer_id=customer_id, cart=cart)
    if payment := data.get("payment"):
        _payment_store(customer_id=customer_id, payment=payment)
    return customer_id, int(row[0])


# PostgreSQL: the customer (_CUSTOMER_SQL), the event, its cart or payment in one statement
# (one round trip, which costs more than the work on this kind of machine), the same writes
# as stepwise.
_EVENT_AT_ONCE_SQL = (
    "WITH upserted AS ("  # noqa: S608 - constant strings only, no input
    + _CUSTOMER_SQL
    + """), customer AS (
    SELECT id FROM upserted
    UNION ALL
    SELECT id FROM marketing_customer
     WHERE external_id = %(id)s AND NOT EXISTS (SELECT 1 FROM upserted)
), event AS (
    INSERT INTO marketing_event
           (source, event_id, type, customer_id, occurred_at, received_at, payload,
            body_sha256, applied_at, apply_claimed_at, apply_attempts, apply_error)
    SELECT %(source)s, %(event_id)s, %(type)s, customer.id, %(occurred_at)s, %(now)s,
           %(payload)s::jsonb, %(sha)s, NULL, NULL, 0, ''
      FROM customer
    ON CONFLICT (source, event_id) DO NOTHING
    RETURNING id
), cart AS (
    INSERT INTO marketing_cart
           (external_id, customer_id, total, currency, checkout_url, items, created_at,
            updated_at)
    SELECT %(cart_id)s, customer.id, %(cart_total)s, %(cart_currency)s, %(cart_url)s,
           %(cart_items)s::jsonb, %(now)s, %(now)s
      FROM customer, event
     WHERE %(cart_id)s::text IS NOT NULL
"""
    + _CART_UPSERT
    + """
    RETURNING id, external_id
), payment AS (
    INSERT INTO marketing_payment
           (external_id, customer_id, cart_id, amount, currency, discount_code, created_at)
    SELECT %(payment_id)s, customer.id,
           COALESCE((SELECT id FROM cart WHERE external_id = %(payment_cart)s),
                    (SELECT c.id FROM marketing_cart c
                      WHERE c.external_id = %(payment_cart)s AND c.customer_id = customer.id)),
           %(amount)s, %(payment_currency)s, %(discount_code)s, %(now)s
      FROM customer, event
     WHERE %(payment_id)s::text IS NOT NULL
    ON CONFLICT (external_id) DO NOTHING
)
SELECT (SELECT id FROM customer), (SELECT id FROM event), (SELECT count(*) FROM cart)
"""
)


_EVENT_AT_ONCE = prepared.Statement(
    "nudge_event_at_once",
    _EVENT_AT_ONCE_SQL,
    {
        **dict.fromkeys(["consent_email", "consent_sms"], "boolean"),
        **dict.fromkeys(["as_of", "now", "occurred_at"], "timestamptz"),
        **dict.fromkeys(["cart_total", "amount"], "numeric"),
        # the rest are text (the statement casts payload and items to jsonb)
        **dict.fromkeys(
            [
                "id",
                "email",
                "phone",
                "first_name",
                "timezone",
                "source",
                "event_id",
                "type",
                "payload",
                "sha",
                "cart_id",
                "cart_currency",
                "cart_url",
                "cart_items",
                "payment_id",
                "payment_cart",
                "payment_currency",
                "discount_code",
            ],
            "text",
        ),
    },
)


def _event_at_once_params(
    source: str,
    data: dict[str, Any],
    payload: dict[str, Any],
    body_sha256: str,
    received_at: datetime,
) -> dict[str, Any]:
    """_EVENT_AT_ONCE's values for one validated event."""
    cart, payment = data.get("cart") or {}, data.get("payment") or {}
    return {
        **_profile(data["user"]),
        "as_of": data["occurred_at"],
        "now": received_at,
        "source": source,
        "event_id": data["id"],
        "type": data["type"],
        "occurred_at": data["occurred_at"],
        "payload": json.dumps(payload),
        "sha": body_sha256,
        "cart_id": cart.get("id"),
        "cart_total": cart.get("total"),
        "cart_currency": cart.get("currency"),
        "cart_url": cart.get("checkout_url") or "",
        "cart_items": json.dumps(cart.get("items") or []),
        "payment_id": payment.get("id"),
        "payment_cart": payment.get("cart_id"),
        "amount": payment.get("amount"),
        "payment_currency": payment.get("currency"),
        "discount_code": payment.get("discount_code") or "",
    }


def _event_store_at_once(
    source: str,
    data: dict[str, Any],
    payload: dict[str, Any],
    body_sha256: str,
    received_at: datetime,
) -> tuple[int, int | None] | None:
    """What _event_store_stepwise does, in one statement; None when the statement could not
    find the customer (an older event for a customer created concurrently: the statement's
    snapshot does not show it), and wrote nothing."""
    params = _event_at_once_params(source, data, payload, body_sha256, received_at)
    cart = data.get("cart")
    with connection.cursor() as cursor:
        _EVENT_AT_ONCE.execute(cursor, params)
        customer_id, event_pk, carts = cursor.fetchone()
    if customer_id is None:
        return None
    if event_pk is not None and cart and not carts:
        raise CartOwnedByAnotherCustomer(f"cart {cart['id']} belongs to another customer")
    return customer_id, event_pk


def event_ingest(*, source: str, data: dict[str, Any], payload: dict[str, Any]) -> IngestResult:
    """Record one validated event (webhook or batch item), idempotently.

    `data` is the validated event, `payload` the event as received (stored as is). A repeat
    of a known id with the same content returns the stored event (created=False); with other
    content it raises EventConflict. Concurrent deliveries of one id produce one event: the
    unique constraint makes the later ones wait and find it.

    Committed together: the event, the customer's profile, the cart or payment, and what
    `events_stored` receivers do (a payment's cancellations). Enrolments follow, applied by
    events_apply once the event is committed.

    On PostgreSQL its fixed statements run prepared (see nudge.db.prepared); if a pooler
    turns out to be in the way, the transaction is run again without them.
    """
    if prepared.usable():
        try:
            with prepared.within():
                return _event_ingest(source=source, data=data, payload=payload)
        except prepared.Unavailable:
            pass  # rolled back; prepared statements are now off in this process
    return _event_ingest(source=source, data=data, payload=payload)


@transaction.atomic
def _event_ingest(*, source: str, data: dict[str, Any], payload: dict[str, Any]) -> IngestResult:
    body_sha256 = canonical_sha256(payload)
    received_at = timezone.now()
    # No look-up first: a repeat finds the stored event on insert, and its upsert of the
    # customer is rolled back.
    stored = None
    if connection.vendor == "postgresql":
        stored = _event_store_at_once(source, data, payload, body_sha256, received_at)
    if stored is None:
        stored = _event_store_stepwise(source, data, payload, body_sha256, received_at)
    customer_id, event_pk = stored
    if event_pk is None:  # a repeat, or a concurrent delivery of the same id committed first
        existing = Event.objects.get(source=source, event_id=data["id"])
        transaction.set_rollback(True)  # a repeat changes nothing, not even updated_at
        return _repeat(existing, body_sha256)
    event = Event(
        pk=event_pk,
        source=source,
        event_id=data["id"],
        type=data["type"],
        customer_id=customer_id,
        occurred_at=data["occurred_at"],
        received_at=received_at,
        payload=payload,
        body_sha256=body_sha256,
    )
    events_stored.send(sender=Event, events=[event])
    return IngestResult(event=event, created=True)


BatchOutcome = IngestResult | EventConflict | CartOwnedByAnotherCustomer


def events_ingest_batch(
    *, source: str, items: list[tuple[dict[str, Any], dict[str, Any]]]
) -> list[BatchOutcome]:
    """Record validated events (data, payload) at once, one outcome per item, in order: what
    event_ingest would have returned or raised for each, had they come one by one.

    On PostgreSQL the batch is stored with a few set-based statements (one per table, not one
    per event); a refused item (conflict, someone else's cart) leaves the others intact. If
    a concurrent writer gets in the way of the set-based pass, the batch is stored item by
    item instead, with the same outcomes. Call it inside a transaction.
    """
    if connection.vendor == "postgresql" and len(items) > 1:
        savepoint = transaction.savepoint()
        try:
            at_once = _batch_store(source, items)
        except _BatchRaced:
            transaction.savepoint_rollback(savepoint)
        else:
            transaction.savepoint_commit(savepoint)
            return at_once
    # item by item, in customer order, so that two concurrent batches lock customers in the
    # same order; the outcomes are given back in the items' order
    outcomes: dict[int, BatchOutcome] = {}
    for index in sorted(range(len(items)), key=lambda i: items[i][0]["user"]["id"]):
        outcomes[index] = _ingest_or_refusal(source, *items[index])
    return [outcomes[index] for index in range(len(items))]


def _ingest_or_refusal(source: str, data: dict[str, Any], payload: dict[str, Any]) -> BatchOutcome:
    try:
        return event_ingest(source=source, data=data, payload=payload)
    except (EventConflict, CartOwnedByAnotherCustomer) as exc:
        return exc


class _BatchRaced(Exception):
    """A concurrent transaction stored one of the batch's events or carts first."""


# Every customer of the batch, in one order (so concurrent batches never deadlock): a new
# one is inserted with the profile of its first event, a known one is only locked (the no-op
# update), to be updated next. `xmax = 0` tells the inserted rows.
_BATCH_CUSTOMERS_UPSERT_SQL = """
INSERT INTO marketing_customer
       (external_id, email, phone, first_name, timezone, consent_email, consent_sms,
        profile_as_of, created_at, updated_at)
SELECT id, COALESCE(email, ''), COALESCE(phone, ''), COALESCE(first_name, ''),
       COALESCE(timezone, 'UTC'), COALESCE(consent_email, TRUE), COALESCE(consent_sms, TRUE),
       as_of, %s, %s
  FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::boolean[],
              %s::boolean[], %s::timestamptz[])
       AS v(id, email, phone, first_name, timezone, consent_email, consent_sms, as_of)
 ORDER BY id
ON CONFLICT (external_id) DO UPDATE SET external_id = excluded.external_id
RETURNING external_id, id, xmax = 0
"""
_BATCH_CUSTOMERS_UPDATE_SQL = """
UPDATE marketing_customer c
   SET email = COALESCE(v.email, c.email), phone = COALESCE(v.phone, c.phone),
       first_name = COALESCE(v.first_name, c.first_name),
       timezone = COALESCE(v.timezone, c.timezone),
       consent_email = COALESCE(v.consent_email, c.consent_email),
       consent_sms = COALESCE(v.consent_sms, c.consent_sms),
       profile_as_of = v.as_of, updated_at = %s
  FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::boolean[],
              %s::boolean[], %s::timestamptz[])
       AS v(id, email, phone, first_name, timezone, consent_email, consent_sms, as_of)
 WHERE c.external_id = v.id AND (c.profile_as_of IS NULL OR c.profile_as_of <= v.as_of)
"""
# In the batch's order: ids (the order events are applied in) follow arrival, as one by one.
# (The customers, locked first, already serialise two batches that share an event.)
_BATCH_EVENTS_SQL = """
INSERT INTO marketing_event
       (source, event_id, type, customer_id, occurred_at, received_at, payload, body_sha256,
        applied_at, apply_claimed_at, apply_attempts, apply_error)
SELECT %s, event_id, type, customer_id, occurred_at, %s, payload::jsonb, body_sha256,
       NULL, NULL, 0, ''
  FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::timestamptz[], %s::text[], %s::text[])
       WITH ORDINALITY AS v(event_id, type, customer_id, occurred_at, payload, body_sha256, n)
 ORDER BY n
ON CONFLICT (source, event_id) DO NOTHING
RETURNING id, event_id
"""
_BATCH_CARTS_SQL = (
    """
INSERT INTO marketing_cart
       (external_id, customer_id, total, currency, checkout_url, items, created_at, updated_at)
SELECT id, customer_id, total, currency, checkout_url, items::jsonb, %s, %s
  FROM unnest(%s::text[], %s::bigint[], %s::numeric[], %s::text[], %s::text[], %s::text[])
       AS v(id, customer_id, total, currency, checkout_url, items)
 ORDER BY id
"""
    + _CART_UPSERT
    + "RETURNING external_id"
)
_BATCH_PAYMENTS_SQL = """
INSERT INTO marketing_payment
       (external_id, customer_id, cart_id, amount, currency, discount_code, created_at)
SELECT v.id, v.customer_id, c.id, v.amount, v.currency, v.discount_code, %s
  FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::numeric[], %s::text[], %s::text[])
       AS v(id, customer_id, cart_id, amount, currency, discount_code)
  LEFT JOIN marketing_cart c ON c.external_id = v.cart_id AND c.customer_id = v.customer_id
 ORDER BY v.id
ON CONFLICT (external_id) DO NOTHING
"""


_BATCH_STORED_SQL = "SELECT id FROM marketing_event WHERE source = %s AND event_id = ANY(%s)"
_BATCH_CART_OWNERS_SQL = """
SELECT c.external_id, u.external_id
  FROM marketing_cart c JOIN marketing_customer u ON u.id = c.customer_id
 WHERE c.external_id = ANY(%s)
"""
_EVENT_FIELDS = [field.attname for field in Event._meta.concrete_fields]


def _event_as_stored(**values: Any) -> Event:
    """The Event a batch just inserted, built the way the ORM builds rows it reads (a
    thousand keyword-argument Event() calls cost more than the batch's SQL)."""
    values.update(applied_at=None, apply_claimed_at=None, apply_attempts=0, apply_error="")
    return Event.from_db("default", _EVENT_FIELDS, [values[name] for name in _EVENT_FIELDS])


def _customer_columns(rows: list[tuple[dict[str, Any], datetime]]) -> list[list[Any]]:
    """The unnest() arrays of customer profiles: id, the six fields (None = not given), as_of."""
    columns: list[list[Any]] = [[] for _ in range(8)]
    for user, as_of in rows:
        values = [*_profile(user).values(), as_of]
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _batch_store(
    source: str, items: list[tuple[dict[str, Any], dict[str, Any]]]
) -> list[BatchOutcome]:
    outcomes: list[BatchOutcome | None] = [None] * len(items)
    # the canonical text is hashed, and stored (jsonb keeps neither key order nor spacing)
    texts = [canonical_json(payload) for _, payload in items]
    hashes = [hashlib.sha256(text.encode()).hexdigest() for text in texts]
    ids = {data["id"] for data, _ in items}
    cart_ids = {data["cart"]["id"] for data, _ in items if data.get("cart")}
    cart_ids |= {data["payment"].get("cart_id") for data, _ in items if data.get("payment")}
    with connection.cursor() as cursor:
        cursor.execute(_BATCH_STORED_SQL, [source, list(ids)])
        found = [pk for (pk,) in cursor.fetchall()]
        cursor.execute(_BATCH_CART_OWNERS_SQL, [list(cart_ids - {None})])
        owners = dict(cursor.fetchall())
    stored = {e.event_id: e for e in Event.objects.filter(pk__in=found)} if found else {}
    # In order, as one by one: repeats of stored events, and carts that belong to another
    # customer (stored, or given to one earlier in this batch) are answered without writing;
    # an id that an earlier item of the batch takes is answered after the rest.
    todo: list[int] = []
    taken: dict[str, int] = {}  # event id: the item that stores it
    repeated_inside: list[int] = []
    payment_cart: dict[int, str | None] = {}  # linked if the cart exists by then
    for index, (data, _) in enumerate(items):
        user_id = data["user"]["id"]
        if data["id"] in stored:
            outcomes[index] = _repeat_or_conflict(stored[data["id"]], hashes[index])
            continue
        if data["id"] in taken:
            repeated_inside.append(index)
            continue
        if cart := data.get("cart"):
            if owners.get(cart["id"], user_id) != user_id:
                outcomes[index] = CartOwnedByAnotherCustomer(
                    f"cart {cart['id']} belongs to another customer"
                )
                continue
            owners[cart["id"]] = user_id
        if payment := data.get("payment"):
            cart_id = payment.get("cart_id")
            payment_cart[index] = cart_id if cart_id in owners else None
        taken[data["id"]] = index
        todo.append(index)
    if not todo:
        return [outcome for outcome in outcomes if outcome is not None]

    now = timezone.now()
    by_user: dict[str, list[int]] = {}
    for index in todo:
        by_user.setdefault(items[index][0]["user"]["id"], []).append(index)
    users = sorted(by_user)
    with connection.cursor() as cursor:
        # a customer with several events in the batch gets them one round at a time, in
        # order, as if they had come one by one (an older one never overwrites a newer one)
        customer_ids: dict[str, int] = {}
        for round_ in range(max(len(indexes) for indexes in by_user.values())):
            profiles = [
                (
                    items[by_user[user][round_]][0]["user"],
                    items[by_user[user][round_]][0]["occurred_at"],
                )
                for user in users
                if len(by_user[user]) > round_
            ]
            created: set[str] = set()
            if round_ == 0:  # all the batch's customers
                cursor.execute(
                    _BATCH_CUSTOMERS_UPSERT_SQL, [now, now, *_customer_columns(profiles)]
                )
                for external_id, pk, inserted in cursor.fetchall():
                    customer_ids[external_id] = pk
                    if inserted:
                        created.add(external_id)
            known = [(user, as_of) for user, as_of in profiles if user["id"] not in created]
            if known:
                cursor.execute(_BATCH_CUSTOMERS_UPDATE_SQL, [now, *_customer_columns(known)])

        cursor.execute(
            _BATCH_EVENTS_SQL,
            [
                source,
                now,
                [items[i][0]["id"] for i in todo],
                [items[i][0]["type"] for i in todo],
                [customer_ids[items[i][0]["user"]["id"]] for i in todo],
                [items[i][0]["occurred_at"] for i in todo],
                [texts[i] for i in todo],
                [hashes[i] for i in todo],
            ],
        )
        event_pks = dict((event_id, pk) for pk, event_id in cursor.fetchall())
        if len(event_pks) != len(todo):
            raise _BatchRaced  # another delivery of one of these ids committed meanwhile

        last_cart: dict[str, int] = {}  # the last state of each cart wins, as one by one
        for index in todo:
            if cart := items[index][0].get("cart"):
                last_cart[cart["id"]] = index
        if last_cart:
            carts = [(items[i][0]["cart"], items[i][0]["user"]["id"]) for i in last_cart.values()]
            cursor.execute(
                _BATCH_CARTS_SQL,
                [
                    now,
                    now,
                    [cart["id"] for cart, _ in carts],
                    [customer_ids[user] for _, user in carts],
                    [cart["total"] for cart, _ in carts],
                    [cart["currency"] for cart, _ in carts],
                    [cart.get("checkout_url") or "" for cart, _ in carts],
                    [json.dumps(cart.get("items") or []) for cart, _ in carts],
                ],
            )
            if len(cursor.fetchall()) != len(carts):
                raise _BatchRaced  # a cart was given to another customer meanwhile

        first_payment: dict[str, int] = {}  # a payment is stored once: the first one wins
        for index in todo:
            if payment := items[index][0].get("payment"):
                first_payment.setdefault(payment["id"], index)
        payments = [
            (items[i][0]["payment"], items[i][0]["user"]["id"], payment_cart[i])
            for i in first_payment.values()
        ]
        if payments:
            cursor.execute(
                _BATCH_PAYMENTS_SQL,
                [
                    now,
                    [payment["id"] for payment, _, _ in payments],
                    [customer_ids[user] for _, user, _ in payments],
                    [cart_id for _, _, cart_id in payments],
                    [payment["amount"] for payment, _, _ in payments],
                    [payment["currency"] for payment, _, _ in payments],
                    [payment.get("discount_code") or "" for payment, _, _ in payments],
                ],
            )

    events = []
    for index in todo:
        data, payload = items[index]
        event = _event_as_stored(
            id=event_pks[data["id"]],
            source=source,
            event_id=data["id"],
            type=data["type"],
            customer_id=customer_ids[data["user"]["id"]],
            occurred_at=data["occurred_at"],
            received_at=now,
            payload=payload,
            body_sha256=hashes[index],
        )
        events.append(event)
        outcomes[index] = IngestResult(event=event, created=True)
    events_stored.send(sender=Event, events=events)
    for index in repeated_inside:  # answered as a repeat of the item that stored the id
        first = outcomes[taken[items[index][0]["id"]]]
        assert isinstance(first, IngestResult)
        outcomes[index] = _repeat_or_conflict(first.event, hashes[index])
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def _repeat_or_conflict(existing: Event, body_sha256: str) -> IngestResult | EventConflict:
    try:
        return _repeat(existing, body_sha256)
    except EventConflict as exc:
        return exc


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


# --- applying events --------------------------------------------------------------------------


_CLAIM_EVENTS_SQL = """
UPDATE marketing_event
   SET apply_claimed_at = now()
 WHERE id = ANY(ARRAY(SELECT id FROM marketing_event
                       WHERE applied_at IS NULL AND apply_attempts < %s
                         AND (apply_claimed_at IS NULL OR apply_claimed_at < %s)
                       ORDER BY id
                       LIMIT %s
                       FOR UPDATE SKIP LOCKED))
RETURNING id
"""


def events_claim_unapplied(*, limit: int, lease: timedelta) -> list[int]:
    """Claim up to `limit` stored events whose effects are not applied yet, oldest first,
    including those whose previous claim ran out of lease (a lost task, a killed worker) and
    leaving out those that failed NUDGE_SEND_MAX_ATTEMPTS times. Like the sends' claim: a
    compare-and-set with SKIP LOCKED, safe for many tickers."""
    cutoff = timezone.now() - lease
    attempts = settings.NUDGE_SEND_MAX_ATTEMPTS
    if connection.vendor == "postgresql":
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_CLAIM_EVENTS_SQL, [attempts, cutoff, limit])
            return sorted(row[0] for row in cursor.fetchall())
    with transaction.atomic():
        ids = list(
            Event.objects.filter(applied_at__isnull=True, apply_attempts__lt=attempts)
            .filter(Q(apply_claimed_at__isnull=True) | Q(apply_claimed_at__lt=cutoff))
            .order_by("id")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        if ids:
            Event.objects.filter(pk__in=ids).update(apply_claimed_at=Now())
    return ids


def events_apply(*, event_ids: list[int]) -> int:
    """Apply stored events' effects on journeys (enrolments); an event already applied is
    skipped. Returns how many were applied.

    The chunk is applied in one transaction with its customers locked (journeys read what
    they need once for all of it). If that fails, each event is applied in its own
    transaction: an event whose receivers fail keeps its error and is retried after the
    lease, until it has failed NUDGE_SEND_MAX_ATTEMPTS times; the others go on.
    """
    ids = sorted(set(event_ids))
    if len(ids) > 1:
        try:
            return _events_apply_together(ids)
        except Exception:
            logger.warning("applying %d events together failed", len(ids), exc_info=True)
    applied = 0
    for event_id in ids:
        try:
            applied += _events_apply_together([event_id])
        except DatabaseError:
            raise  # the database is unavailable: the task fails, the lease brings it back
        except Exception as exc:
            logger.exception("applying event %s failed", event_id)
            Event.objects.filter(pk=event_id).update(
                apply_error=f"{type(exc).__name__}: {exc}"[:2000],
                apply_attempts=F("apply_attempts") + 1,
            )
    return applied


@transaction.atomic
def _events_apply_together(event_ids: list[int]) -> int:
    # Events, then customers, each in id order: appliers never wait for each other in a
    # cycle, and a webhook locks one customer (a batch: its customers in id order).
    events = list(
        Event.objects.select_for_update()
        .filter(pk__in=event_ids, applied_at__isnull=True)
        .order_by("pk")
    )
    if not events:
        return 0
    customers = Customer.objects.select_for_update().filter(
        pk__in={e.customer_id for e in events if e.customer_id is not None}
    )
    by_id = {customer.pk: customer for customer in customers.order_by("pk")}
    for event in events:
        if event.customer_id is not None:
            event.customer = by_id[event.customer_id]
    events_applying.send(sender=Event, events=events)
    Event.objects.filter(pk__in=[e.pk for e in events]).update(applied_at=Now(), apply_error="")
    return len(events)


def events_apply_pending() -> int:
    """Apply every stored event not applied yet, in this process (tests, management), in
    chunks of NUDGE_APPLY_CHUNK as the workers do: a chunk locks its customers until it
    commits."""
    ids = list(
        Event.objects.filter(applied_at__isnull=True).order_by("id").values_list("id", flat=True)
    )
    chunk = settings.NUDGE_APPLY_CHUNK
    return sum(
        events_apply(event_ids=ids[start : start + chunk]) for start in range(0, len(ids), chunk)
    )


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
        events_stored.send(sender=Event, events=[event])
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
