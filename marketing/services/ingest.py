"""One event in: `event_record` (a webhook-shaped body, validated) and `event_ingest` (already
validated), the one path both webhooks and the host's own events take.

Ingestion is the webhook's hot path, and a round trip to the database costs more than most
statements' work, so it is upserts in SQL, not ORM get-or-create: the event, the customer's
profile (profiles.py), the cart or payment it carries (purchases.py), and, through
`events_stored`, the cancellations an exit event causes. On PostgreSQL one statement does all
but the cancellations; elsewhere (SQLite >= 3.35) one statement per table. What the event
means for journeys (enrolments) is applied afterwards, by journeys' own task, through the
verbs in applying.py.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from marketing.models import Event
from marketing.services.canonical import canonical_sha256
from marketing.services.columns import literal, table
from marketing.services.outcomes import (
    CartOwnedByAnotherCustomer,
    EventInvalid,
    IngestResult,
    event_repeat,
)
from marketing.services.profiles import (
    CUSTOMER_TABLE,
    CUSTOMER_UPSERT_SQL,
    CUSTOMER_UPSERT_TYPES,
    customer_profile,
    customer_store,
)
from marketing.services.purchases import (
    CART_ON_CONFLICT,
    CART_STATE,
    CART_TABLE,
    PAYMENT_RECORD,
    PAYMENT_TABLE,
    cart_store,
    payment_store,
)
from marketing.signals import events_stored
from marketing.validation import event_validate
from nudge.db import prepared
from nudge.db.retry import retried

EVENT_TABLE = table(Event)
# A new event's columns: what it says, then the state of its application, which starts at the
# model's defaults (not applied, not claimed, no attempt, no error).
EVENT_COLUMNS = (
    "source, event_id, type, customer_id, occurred_at, received_at, payload, body_sha256"
)
_UNAPPLIED = [
    Event._meta.get_field(name)
    for name in ("applied_at", "apply_claimed_at", "apply_attempts", "apply_error")
]
EVENT_UNAPPLIED = {field.name: field.get_default() for field in _UNAPPLIED}  # type: ignore[union-attr]
EVENT_UNAPPLIED_COLUMNS = ", ".join(field.column for field in _UNAPPLIED)  # type: ignore[union-attr, misc]
EVENT_UNAPPLIED_VALUES = ", ".join(literal(value) for value in EVENT_UNAPPLIED.values())


def event_record(*, source: str, payload: dict[str, Any]) -> IngestResult:
    """Record an event given as a webhook body, from inside the process: validated exactly as
    a webhook's body (EventInvalid with the serializer's errors when it is not valid), then
    stored by event_ingest (EventConflict, CartOwnedByAnotherCustomer as there)."""
    data, errors = event_validate(payload)
    if data is None:
        raise EventInvalid(errors)
    return event_ingest(source=source, data=data, payload=payload)


def event_ingest(*, source: str, data: dict[str, Any], payload: dict[str, Any]) -> IngestResult:
    """Record one validated event (webhook or batch item), idempotently.

    `data` is the validated event, `payload` the event as received (stored as is). A repeat
    of a known id with the same content returns the stored event (created=False); with other
    content it raises EventConflict. Concurrent deliveries of one id produce one event: the
    unique constraint makes the later ones wait and find it.

    Committed together: the event, the customer's profile, the cart or payment, and what
    `events_stored` receivers do (a payment's cancellations). Enrolments follow, once the
    event is committed.

    On PostgreSQL its fixed statements run prepared (see nudge.db.prepared); if a pooler
    turns out to be in the way, the transaction is run again without them. A transaction
    PostgreSQL aborts to break a deadlock is run again too (nudge.db.retry), unless the
    caller's transaction holds it (a batch item by item: the batch is retried).
    """
    return retried(lambda: _event_ingest_prepared(source, data, payload), what="event")


def _event_ingest_prepared(
    source: str, data: dict[str, Any], payload: dict[str, Any]
) -> IngestResult:
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
        return event_repeat(existing, body_sha256)
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


# --- one statement per table (SQLite; PostgreSQL when the at-once statement cannot) ----------

_EVENT_SQL = f"""
INSERT INTO {EVENT_TABLE} ({EVENT_COLUMNS}, {EVENT_UNAPPLIED_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, {EVENT_UNAPPLIED_VALUES})
ON CONFLICT (source, event_id) DO NOTHING
RETURNING id
"""  # noqa: S608 - the models' names only, no input


def _event_store_stepwise(
    source: str,
    data: dict[str, Any],
    payload: dict[str, Any],
    body_sha256: str,
    received_at: datetime,
) -> tuple[int, int | None]:
    """(customer id, event id or None for a repeat): one statement per table."""
    customer_id = customer_store(user=data["user"], as_of=data["occurred_at"], event_id=data["id"])
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.execute(
            _EVENT_SQL,
            [
                source,
                data["id"],
                data["type"],
                customer_id,
                adapt(data["occurred_at"]),
                adapt(received_at),
                json.dumps(payload),
                body_sha256,
            ],
        )
        row = cursor.fetchone()
    if row is None:
        return customer_id, None
    if cart := data.get("cart"):
        cart_store(customer_id=customer_id, cart=cart)
    if payment := data.get("payment"):
        payment_store(customer_id=customer_id, payment=payment)
    return customer_id, int(row[0])


# --- PostgreSQL: all in one statement ----------------------------------------------------
#
# The customer (CUSTOMER_UPSERT_SQL), the event, its cart or payment in one statement (one
# round trip, which costs more than the work on this kind of machine): the same writes as
# stepwise.

# The cart's and the payment's parameters: (column, parameter name).
_CART_PARAMS = [(c, f"cart_{c.name}") for c in CART_STATE]
_PAYMENT_PARAMS = [(c, f"payment_{c.name}") for c in PAYMENT_RECORD]

_EVENT_AT_ONCE_SQL = f"""
WITH upserted AS ({CUSTOMER_UPSERT_SQL}), customer AS (
    SELECT id FROM upserted
    UNION ALL
    SELECT id FROM {CUSTOMER_TABLE}
     WHERE external_id = %(id)s AND NOT EXISTS (SELECT 1 FROM upserted)
), event AS (
    INSERT INTO {EVENT_TABLE} ({EVENT_COLUMNS}, {EVENT_UNAPPLIED_COLUMNS})
    SELECT %(source)s, %(event_id)s, %(type)s, customer.id, %(occurred_at)s, %(now)s,
           %(payload)s::jsonb, %(sha)s, {EVENT_UNAPPLIED_VALUES}
      FROM customer
    ON CONFLICT (source, event_id) DO NOTHING
    RETURNING id
), cart AS (
    INSERT INTO {CART_TABLE}
           (external_id, customer_id, {", ".join(c.column for c in CART_STATE)},
            created_at, updated_at)
    SELECT %(cart_id)s, customer.id,
           {", ".join(c.cast(f"%({name})s") for c, name in _CART_PARAMS)}, %(now)s, %(now)s
      FROM customer, event
     WHERE %(cart_id)s::text IS NOT NULL
    {CART_ON_CONFLICT}
    RETURNING id, external_id
), payment AS (
    INSERT INTO {PAYMENT_TABLE}
           (external_id, customer_id, cart_id, {", ".join(c.column for c in PAYMENT_RECORD)},
            created_at)
    SELECT %(payment_id)s, customer.id,
           COALESCE((SELECT id FROM cart WHERE external_id = %(payment_cart)s),
                    (SELECT c.id FROM {CART_TABLE} c
                      WHERE c.external_id = %(payment_cart)s AND c.customer_id = customer.id)),
           {", ".join(f"%({name})s" for _, name in _PAYMENT_PARAMS)}, %(now)s
      FROM customer, event
     WHERE %(payment_id)s::text IS NOT NULL
    ON CONFLICT (external_id) DO NOTHING
)
SELECT (SELECT id FROM customer), (SELECT id FROM event), (SELECT count(*) FROM cart)
"""  # noqa: S608 - the models' names only, no input

_EVENT_AT_ONCE = prepared.Statement(
    "nudge_event_at_once",
    _EVENT_AT_ONCE_SQL,
    {
        **CUSTOMER_UPSERT_TYPES,
        "source": "text",
        "event_id": "text",
        "type": "text",
        "occurred_at": "timestamptz",
        "payload": "text",  # cast to jsonb in the statement
        "sha": "text",
        "cart_id": "text",
        **{name: c.param_type for c, name in _CART_PARAMS},
        "payment_id": "text",
        "payment_cart": "text",
        **{name: c.param_type for c, name in _PAYMENT_PARAMS},
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
    params = {
        **customer_profile(data["user"]),
        "as_of": data["occurred_at"],
        "now": received_at,
        "source": source,
        "event_id": data["id"],
        "type": data["type"],
        "occurred_at": data["occurred_at"],
        "payload": json.dumps(payload),
        "sha": body_sha256,
        "cart_id": cart.get("id"),
        "payment_id": payment.get("id"),
        "payment_cart": payment.get("cart_id"),
    }
    # without a cart (a payment), its values are not used (the statement tests cart_id)
    for c, name in _CART_PARAMS:
        params[name] = c.stored(cart) if cart else None
    for c, name in _PAYMENT_PARAMS:
        params[name] = c.stored(payment) if payment else None
    return params


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
        raise CartOwnedByAnotherCustomer(cart["id"])
    return customer_id, event_pk
