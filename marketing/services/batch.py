"""Many events in: `events_ingest_batch`, with the outcomes event_ingest would have given
each of them one by one (tests/marketing/test_event_batch_equivalence.py holds it to that).

On PostgreSQL a batch is stored with a few set-based statements (one per table, not one per
event), built from the same column definitions as the single event's (profiles.py,
purchases.py); elsewhere, or when a concurrent writer gets in the way, item by item.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from marketing.models import Customer, Event
from marketing.services.canonical import canonical_json, text_sha256
from marketing.services.ingest import (
    EVENT_COLUMNS,
    EVENT_TABLE,
    EVENT_UNAPPLIED,
    EVENT_UNAPPLIED_COLUMNS,
    EVENT_UNAPPLIED_VALUES,
    event_ingest,
)
from marketing.services.outcomes import (
    BatchOutcome,
    CartOwnedByAnotherCustomer,
    EventConflict,
    IngestResult,
    event_repeat_or_conflict,
)
from marketing.services.profiles import (
    BATCH_CUSTOMERS_INSERT_SQL,
    BATCH_CUSTOMERS_LOCK_SQL,
    BATCH_CUSTOMERS_UPDATE_SQL,
    CUSTOMER_TABLE,
    customer_profiles_arrays,
)
from marketing.services.purchases import (
    BATCH_CARTS_SQL,
    BATCH_PAYMENTS_SQL,
    CART_TABLE,
    carts_arrays,
    payments_arrays,
)
from marketing.signals import events_stored
from nudge.db.retry import atomic_retried

Item = tuple[dict[str, Any], dict[str, Any]]  # (validated data, payload as received)


def events_ingest_batch(*, source: str, items: list[Item]) -> list[BatchOutcome]:
    """Record validated events (data, payload) at once, one outcome per item, in order: what
    event_ingest would have returned or raised for each, had they come one by one.

    On PostgreSQL the batch is stored with a few set-based statements (one per table, not one
    per event); a refused item (conflict, someone else's cart) leaves the others intact. If
    a concurrent writer gets in the way of the set-based pass, the batch is stored item by
    item instead, with the same outcomes.

    The batch's customers are locked in primary-key order, as appliers and every other path
    that locks several customers lock them (new ones are inserted first, in external id
    order, the only order concurrent inserts of one id can agree on). Should PostgreSQL
    still abort the batch to break a deadlock, it is rolled back to where it began (a
    savepoint when called inside a transaction, as the batch view does) and run again
    (nudge.db.retry), rather than failing the request.
    """
    return atomic_retried(lambda: _events_ingest_batch(source, items), what="event batch")


def _events_ingest_batch(source: str, items: list[Item]) -> list[BatchOutcome]:
    if connection.vendor == "postgresql" and len(items) > 1:
        savepoint = transaction.savepoint()
        try:
            at_once = _batch_store(source, items)
        except _BatchRaced:
            transaction.savepoint_rollback(savepoint)
        else:
            transaction.savepoint_commit(savepoint)
            return at_once
    # Item by item: the known customers are locked first, in one statement in primary-key
    # order, then the items go in that order, those of new customers last, by external id;
    # the outcomes are given back in the items' order.
    known = dict(
        Customer.objects.select_for_update()
        .filter(external_id__in={data["user"]["id"] for data, _ in items})
        .order_by("pk")
        .values_list("external_id", "pk")
    )

    def customer_order(index: int) -> tuple[bool, int, str]:
        user_id = items[index][0]["user"]["id"]
        pk = known.get(user_id)
        return (pk is None, pk or 0, user_id)

    outcomes: dict[int, BatchOutcome] = {}
    for index in sorted(range(len(items)), key=customer_order):
        outcomes[index] = event_ingest_outcome(source, *items[index])
    return [outcomes[index] for index in range(len(items))]


def event_ingest_outcome(
    source: str, data: dict[str, Any], payload: dict[str, Any]
) -> BatchOutcome:
    """event_ingest's result, or the refusal it raised: one item's outcome, one by one."""
    try:
        return event_ingest(source=source, data=data, payload=payload)
    except (EventConflict, CartOwnedByAnotherCustomer) as exc:
        return exc


class _BatchRaced(Exception):
    """A concurrent transaction stored one of the batch's events or carts first."""


# In the batch's order: ids (the order events are applied in) follow arrival, as one by one.
# (The customers, locked first, already serialise two batches that share an event.)
_BATCH_EVENTS_SQL = f"""
INSERT INTO {EVENT_TABLE} ({EVENT_COLUMNS}, {EVENT_UNAPPLIED_COLUMNS})
SELECT %s, event_id, type, customer_id, occurred_at, %s, payload::jsonb, body_sha256,
       {EVENT_UNAPPLIED_VALUES}
  FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::timestamptz[], %s::text[], %s::text[])
       WITH ORDINALITY AS v(event_id, type, customer_id, occurred_at, payload, body_sha256, n)
 ORDER BY n
ON CONFLICT (source, event_id) DO NOTHING
RETURNING id, event_id
"""  # noqa: S608 - the models' names only, no input
_BATCH_STORED_SQL = f"SELECT id FROM {EVENT_TABLE} WHERE source = %s AND event_id = ANY(%s)"  # noqa: S608
_BATCH_CART_OWNERS_SQL = f"""
SELECT c.external_id, u.external_id
  FROM {CART_TABLE} c JOIN {CUSTOMER_TABLE} u ON u.id = c.customer_id
 WHERE c.external_id = ANY(%s)
"""  # noqa: S608 - the models' names only, no input
_EVENT_FIELDS = [field.attname for field in Event._meta.concrete_fields]


def _event_as_stored(**values: Any) -> Event:
    """The Event a batch just inserted, built the way the ORM builds rows it reads (a
    thousand keyword-argument Event() calls cost more than the batch's SQL)."""
    values.update(EVENT_UNAPPLIED)
    return Event.from_db("default", _EVENT_FIELDS, [values[name] for name in _EVENT_FIELDS])


def _batch_store(source: str, items: list[Item]) -> list[BatchOutcome]:
    outcomes: list[BatchOutcome | None] = [None] * len(items)
    # the canonical text is hashed, and stored (jsonb keeps neither key order nor spacing)
    texts = [canonical_json(payload) for _, payload in items]
    hashes = [text_sha256(text) for text in texts]
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
            outcomes[index] = event_repeat_or_conflict(stored[data["id"]], hashes[index])
            continue
        if data["id"] in taken:
            repeated_inside.append(index)
            continue
        if cart := data.get("cart"):
            if owners.get(cart["id"], user_id) != user_id:
                outcomes[index] = CartOwnedByAnotherCustomer(cart["id"])
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
                    items[by_user[user][round_]][0]["id"],
                )
                for user in users
                if len(by_user[user]) > round_
            ]
            created: set[str] = set()
            if round_ == 0:  # all the batch's customers: the new ones in, then all locked
                cursor.execute(
                    BATCH_CUSTOMERS_INSERT_SQL, [now, now, *customer_profiles_arrays(profiles)]
                )
                created = {external_id for (external_id,) in cursor.fetchall()}
                cursor.execute(BATCH_CUSTOMERS_LOCK_SQL, [users])
                customer_ids = dict(cursor.fetchall())
                if len(customer_ids) != len(users):
                    raise _BatchRaced  # a customer went away meanwhile
            known = [profile for profile in profiles if profile[0]["id"] not in created]
            if known:
                cursor.execute(BATCH_CUSTOMERS_UPDATE_SQL, [now, *customer_profiles_arrays(known)])

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
            carts = [
                (items[i][0]["cart"], customer_ids[items[i][0]["user"]["id"]])
                for i in last_cart.values()
            ]
            cursor.execute(BATCH_CARTS_SQL, [now, now, *carts_arrays(carts)])
            if len(cursor.fetchall()) != len(carts):
                raise _BatchRaced  # a cart was given to another customer meanwhile

        first_payment: dict[str, int] = {}  # a payment is stored once: the first one wins
        for index in todo:
            if payment := items[index][0].get("payment"):
                first_payment.setdefault(payment["id"], index)
        payments = [
            (items[i][0]["payment"], customer_ids[items[i][0]["user"]["id"]], payment_cart[i])
            for i in first_payment.values()
        ]
        if payments:
            cursor.execute(BATCH_PAYMENTS_SQL, [now, *payments_arrays(payments)])

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
        outcomes[index] = event_repeat_or_conflict(first.event, hashes[index])
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]
