"""The exit rule, in one place.

    An exit event cancels its customer's active sends in the journeys that exit on its type,
    whose trigger occurred no later than the exit event. For a journey whose exit scope is
    the cart, only a send about the cart the exit event is about (`event_cart_id`); a send
    of such a journey that has no cart is exited by any of its customer's exit events (there
    is no cart to tell them apart).

It has one Python body, `event_exits()`, and, because a payment's cancellation runs inside the
webhook's answer, two SQL bodies of the same rule: `_CANCEL_ONE_SQL` for one event (prepared
once per connection: planning it cost about three times what running it does) and
`_CANCEL_SQL` for a batch. tests/journeys/test_exit_rule.py feeds the same table of cases to
all three. Everything else asks `event_exits()`: the SQLite path of a cancellation (over the
customer's loaded sends), an enrolment (an exit event that occurred after its trigger), and
dispatch (an exit event since the trigger that no cancellation recorded).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.models.functions import Now

from journeys import selectors
from journeys.models import Journey, ScheduledSend
from journeys.services import inflight
from journeys.sqlnames import sql
from marketing.models import Event
from nudge.db import prepared

Status = ScheduledSend.Status
CART = Journey.ExitScope.CART


def event_cart_id(event: Event) -> str | None:
    """The cart an event is about: its payment's cart, else its own cart, else None.

    The payment first: a payment says which cart was paid, while an event's `cart` is the
    shop's snapshot of a cart. The one answer for enrolling (the cart of the new sends),
    cancelling and dispatching."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    for key, name in (("payment", "cart_id"), ("cart", "id")):
        part = payload.get(key)
        if isinstance(part, dict) and part.get(name):
            return str(part[name])
    return None


def describe_event(event: Event) -> str:
    """'payment p_9', 'checkout c_3', or 'user_registered evt_1': how reasons name an event."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    if isinstance(payload.get("payment"), dict) and payload["payment"].get("id"):
        return f"payment {payload['payment']['id']}"
    if event.type == "checkout_started" and isinstance(payload.get("cart"), dict):
        return f"checkout {payload['cart'].get('id')}"
    return f"{event.type} {event.event_id}"


def exit_reason(event: Event) -> str:
    return f"cancelled by {describe_event(event)}"


# --- the rule in Python ---------------------------------------------------------------------


def event_exits(
    event: Event,
    *,
    journey: Journey,
    customer_id: int,
    trigger_occurred_at: datetime,
    cart_id: str | None,
) -> bool:
    """Whether `event` exits an active send of `journey` to `customer_id`, whose trigger
    occurred at `trigger_occurred_at`, about the cart `cart_id` (the send's cart's external
    id, or None)."""
    if event.customer_id != customer_id or event.type not in journey.exit_on:
        return False
    if trigger_occurred_at > event.occurred_at:
        return False
    if journey.exit_scope != CART or cart_id is None:
        return True
    return event_cart_id(event) == cart_id


def event_exits_send(event: Event, send: ScheduledSend, journey: Journey) -> bool:
    """event_exits() for a send (its cart loaded, or none)."""
    cart = send.cart
    return event_exits(
        event,
        journey=journey,
        customer_id=send.customer_id,
        trigger_occurred_at=send.trigger_occurred_at,
        cart_id=cart.external_id if cart is not None else None,
    )


def exit_event_first(
    candidates: Iterable[Event],
    *,
    journey: Journey,
    customer_id: int,
    trigger_occurred_at: datetime,
    cart_id: str | None,
) -> Event | None:
    """The first of `candidates` (in the order given: occurred_at, then id) that exits a
    send so described, or None."""
    for event in candidates:
        if event_exits(
            event,
            journey=journey,
            customer_id=customer_id,
            trigger_occurred_at=trigger_occurred_at,
            cart_id=cart_id,
        ):
            return event
    return None


# --- the rule in SQL (PostgreSQL) -----------------------------------------------------------

# Every cancellation locks its rows in id order first (ORDER BY id FOR UPDATE), as dispatch
# locks what it takes: a plain UPDATE locks in the order its scan meets the rows, and a
# payment locking a customer's second send while a dispatch holds the first and waits for
# the second would deadlock. A row that changed while we waited is re-checked (no longer
# active: left). Before a row is locked, the customer's in-flight provider call, if any, is
# waited for (services.inflight): no message leaves after the cancellation commits.

# One exit event: the customer's active sends in the journeys it exits per customer, and in
# those it exits per cart with no cart or about its cart, whose trigger occurred no later.
_CANCEL_ONE_SQL = sql("""
UPDATE {send} s
   SET status = {cancelled}, reason = %s, updated_at = now()
  FROM (SELECT id FROM {send}
         WHERE customer_id = %s AND status IN ({active})
           AND trigger_occurred_at <= %s
           AND (journey_id = ANY(%s::bigint[])
                OR (journey_id = ANY(%s::bigint[])
                    AND (cart_id IS NULL
                         OR cart_id IN (SELECT id FROM {cart} WHERE external_id = %s))))
           AND {{wait}}
         ORDER BY id FOR UPDATE) l
 WHERE s.id = l.id
""").format(wait=inflight.wait_clause("customer_id"))
# Prepared in event_ingest (planning it cost about three times what running it does)
_CANCEL_ONE = prepared.Statement(
    "nudge_cancel_one",
    _CANCEL_ONE_SQL,
    ["text", "bigint", "timestamptz", "bigint[]", "bigint[]", "text"],
)
# Exit events of a batch: the same, for many events at once, by the (customer) index of
# active sends; one row per (event, journey it exits), with the event's cart for a journey
# exited per cart (NULL: every send of that journey matches). A send several events match
# takes the first event's reason (DISTINCT ON): an UPDATE joined to several rows would take
# any one of them.
_CANCEL_SQL = sql("""
WITH m AS (
    SELECT DISTINCT ON (a.id) a.id, v.reason
      FROM unnest(%s::int[], %s::bigint[], %s::timestamptz[], %s::text[], %s::bigint[],
                  %s::bool[], %s::text[])
           AS v(n, customer_id, occurred_at, reason, journey_id, per_cart, cart_id)
      JOIN {send} a
        ON a.customer_id = v.customer_id AND a.status IN ({active})
       AND a.journey_id = v.journey_id AND a.trigger_occurred_at <= v.occurred_at
      LEFT JOIN {cart} c ON c.id = a.cart_id
     WHERE NOT v.per_cart OR a.cart_id IS NULL OR c.external_id = v.cart_id
     ORDER BY a.id, v.n
), l AS (
    SELECT s.id FROM {send} s JOIN m ON m.id = s.id
     WHERE s.status IN ({active}) AND {{wait}}
     ORDER BY s.id FOR UPDATE OF s
)
UPDATE {send} s
   SET status = {cancelled}, reason = m.reason, updated_at = now()
  FROM m, l
 WHERE s.id = m.id AND s.id = l.id
""").format(wait=inflight.wait_clause("s.customer_id"))


def _cancel_one_params(event: Event, exited: list[Journey]) -> list[object]:
    return [
        exit_reason(event),
        event.customer_id,
        event.occurred_at,
        [j.pk for j in exited if j.exit_scope != CART],
        [j.pk for j in exited if j.exit_scope == CART],
        event_cart_id(event),
    ]


def _cancel_params(exiting: list[tuple[Event, list[Journey]]]) -> list[list[object]]:
    """_CANCEL_SQL's arrays: one row per (event, journey it exits), in the events' order."""
    rows: list[tuple[object, ...]] = []
    for n, (event, exited) in enumerate(exiting):
        reason, cart_id = exit_reason(event), event_cart_id(event)
        for journey in exited:
            per_cart = journey.exit_scope == CART
            rows.append(
                (n, event.customer_id, event.occurred_at, reason, journey.pk, per_cart, cart_id)
            )
    return [list(column) for column in zip(*rows, strict=True)]


# --- cancelling -----------------------------------------------------------------------------


def events_exits_apply(*, events: list[Event]) -> int:
    """The cancellations newly stored events cause as exit events; runs inside the
    transaction that stores them. Returns how many sends were cancelled.

    On PostgreSQL: one UPDATE for all the events, whose text is fixed (a single payment pays
    no query building for it). Elsewhere: per event, the customer's active sends in the
    journeys it exits, loaded and judged by event_exits(). Either way, a send that several events
    of a batch exit is cancelled by the first of them, as if they had come one by one.
    """
    # Every event asks; the journeys' version is re-read at most every
    # NUDGE_JOURNEY_RECHECK_SECONDS (dispatch and the workers re-check exits with fresh rows).
    journeys = selectors.journeys_all(recheck_after=settings.NUDGE_JOURNEY_RECHECK_SECONDS)
    exiting: list[tuple[Event, list[Journey]]] = []
    for event in events:
        exited = [j for j in journeys if event.type in j.exit_on]
        if exited and event.customer_id is not None:
            exiting.append((event, exited))
    if not exiting:
        return 0
    if connection.vendor != "postgresql":
        return sum(
            scheduled_send_cancel_for_exit(event=event, journeys=exited)
            for event, exited in exiting
        )
    with connection.cursor() as cursor:
        if len(exiting) == 1:  # a send matches once at most: the simplest statement to plan
            _CANCEL_ONE.execute(cursor, _cancel_one_params(*exiting[0]))
        else:
            cursor.execute(_CANCEL_SQL, _cancel_params(exiting))
        return cursor.rowcount


@transaction.atomic(savepoint=False)
def scheduled_send_cancel_for_exit(*, event: Event, journeys: list[Journey]) -> int:
    """Cancel the customer's active sends in `journeys` that `event` exits (any database):
    their active sends in those journeys are read by the (customer) index and judged by
    event_exits(). Returns how many were cancelled."""
    by_id = {journey.pk: journey for journey in journeys}
    candidates = (
        ScheduledSend.objects.active()
        .filter(customer_id=event.customer_id, journey_id__in=by_id)
        .select_related("cart")
        .order_by("pk")
    )
    ids = [send.pk for send in candidates if event_exits_send(event, send, by_id[send.journey_id])]
    if not ids:
        return 0
    return (
        ScheduledSend.objects.active()
        .filter(pk__in=ids)
        .update(status=Status.CANCELLED, reason=exit_reason(event), updated_at=Now())
    )
