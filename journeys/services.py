"""Every write of the journey engine: enrolment, cancellation, claiming and dispatch."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.db.models.sql import Query
from django.utils import timezone

from journeys import selectors
from journeys.channels import ChannelError, OutgoingMessage, get_channel
from journeys.durations import humanize
from journeys.models import Enrollment, Journey, JourneyStep, ScheduledSend
from journeys.rendering import render
from journeys.specs import JourneySpec, journey_spec_parse
from marketing.models import Cart, Channel, Customer, Event
from nudge.db import prepared

logger = logging.getLogger(__name__)

Status = ScheduledSend.Status
DISCOUNT_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


def discount_code_generate() -> str:
    """A fresh code from `secrets`: 32^10 (about 10^15) possibilities, unique in the database."""
    return "".join(secrets.choice(DISCOUNT_ALPHABET) for _ in range(10))


def describe_event(event: Event) -> str:
    """'payment p_9', 'checkout c_3', or 'user_registered evt_1': how reasons name an event."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    if isinstance(payload.get("payment"), dict) and payload["payment"].get("id"):
        return f"payment {payload['payment']['id']}"
    if event.type == "checkout_started" and isinstance(payload.get("cart"), dict):
        return f"checkout {payload['cart'].get('id')}"
    return f"{event.type} {event.event_id}"


def _event_cart_id(event: Event) -> str | None:
    """The cart a trigger event is about (its cart, else its payment's cart)."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    for key, name in (("cart", "id"), ("payment", "cart_id")):
        if isinstance(payload.get(key), dict) and payload[key].get(name):
            return str(payload[key][name])
    return None


# --- events in ------------------------------------------------------------------------------


def events_exits_apply(*, events: list[Event]) -> int:
    """The cancellations newly stored events cause as exit events; runs inside the
    transaction that stores them. Returns how many sends were cancelled.

    On PostgreSQL: one UPDATE for all the events, whose text is fixed (a single payment pays
    no query building for it). Elsewhere: one indexed UPDATE per event and exit scope.
    Either way, a send that several events of a batch exit is cancelled by the first of them,
    as if they had come one by one.
    """
    # Every event asks; the journeys' version is re-read at most every
    # NUDGE_JOURNEY_RECHECK_SECONDS (dispatch and the workers re-check exits with fresh rows).
    journeys = selectors.journeys_all(recheck_after=settings.NUDGE_JOURNEY_RECHECK_SECONDS)
    exiting: list[tuple[Event, list[Journey]]] = []
    for event in events:
        exited = [j for j in journeys if event.type in j.exit_on]
        if exited and event.customer_id is not None:
            exiting.append((event, exited))
    if connection.vendor != "postgresql":
        return sum(
            scheduled_send_cancel_for_exit(event=event, journeys=exited)
            for event, exited in exiting
        )
    if len(exiting) == 1:  # a send matches once at most: the simplest statement to plan
        ((event, exited),) = exiting
        cart_id = selectors.exit_cart_id(event)
        per_customer = [j.pk for j in exited if j.exit_scope != Journey.ExitScope.CART]
        per_cart = [j.pk for j in exited if j.exit_scope == Journey.ExitScope.CART and cart_id]
        with connection.cursor() as cursor:
            _CANCEL_ONE.execute(
                cursor,
                [
                    f"cancelled by {describe_event(event)}",
                    event.customer_id,
                    event.occurred_at,
                    per_customer,
                    per_cart,
                    cart_id,
                ],
            )
            return cursor.rowcount
    # one row per (event, journey it exits): the cart is set for journeys exited per cart
    rows: list[tuple[int, int | None, datetime, str, int, str | None]] = []
    for n, (event, exited) in enumerate(exiting):
        reason, cart_id = f"cancelled by {describe_event(event)}", selectors.exit_cart_id(event)
        for journey in exited:
            if journey.exit_scope != Journey.ExitScope.CART:
                rows.append((n, event.customer_id, event.occurred_at, reason, journey.pk, None))
            elif cart_id is not None:
                rows.append((n, event.customer_id, event.occurred_at, reason, journey.pk, cart_id))
    if not rows:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(_CANCEL_SQL, [list(column) for column in zip(*rows, strict=True)])
        return cursor.rowcount


# Every cancellation locks its rows in id order first (ORDER BY id FOR UPDATE), as dispatch
# locks its chunk: a plain UPDATE locks in the order its scan meets the rows, and a payment
# locking a customer's second send while a dispatch holds the first and waits for the second
# would deadlock. A row that changed while we waited is re-checked (no longer active: left).

# One exit event (PostgreSQL): the customer's active sends in the journeys it exits per
# customer, and in those it exits per cart about its cart, whose trigger occurred no later.
_CANCEL_ONE_SQL = """
UPDATE journeys_scheduledsend s
   SET status = 'cancelled', reason = %s, updated_at = now()
  FROM (SELECT id FROM journeys_scheduledsend
         WHERE customer_id = %s AND status IN ('pending', 'sending')
           AND trigger_occurred_at <= %s
           AND (journey_id = ANY(%s::bigint[])
                OR (journey_id = ANY(%s::bigint[])
                    AND cart_id IN (SELECT id FROM marketing_cart WHERE external_id = %s)))
         ORDER BY id FOR UPDATE) l
 WHERE s.id = l.id
"""
# Prepared in event_ingest (planning it cost about three times what running it does)
_CANCEL_ONE = prepared.Statement(
    "nudge_cancel_one",
    _CANCEL_ONE_SQL,
    ["text", "bigint", "timestamptz", "bigint[]", "bigint[]", "text"],
)
# Exit events of a batch (PostgreSQL): the same, for many events at once, by the (customer)
# index of active sends. A send several events match takes the first event's reason
# (DISTINCT ON): an UPDATE joined to several rows would take any one of them.
_CANCEL_SQL = """
WITH m AS (
    SELECT DISTINCT ON (a.id) a.id, v.reason
      FROM unnest(%s::int[], %s::bigint[], %s::timestamptz[], %s::text[], %s::bigint[],
                  %s::text[]) AS v(n, customer_id, occurred_at, reason, journey_id, cart_id)
      JOIN journeys_scheduledsend a
        ON a.customer_id = v.customer_id AND a.status IN ('pending', 'sending')
       AND a.journey_id = v.journey_id AND a.trigger_occurred_at <= v.occurred_at
      LEFT JOIN marketing_cart c ON c.id = a.cart_id
     WHERE v.cart_id IS NULL OR c.external_id = v.cart_id
     ORDER BY a.id, v.n
), l AS (
    SELECT s.id FROM journeys_scheduledsend s JOIN m ON m.id = s.id
     WHERE s.status IN ('pending', 'sending')
     ORDER BY s.id FOR UPDATE OF s
)
UPDATE journeys_scheduledsend s
   SET status = 'cancelled', reason = m.reason, updated_at = now()
  FROM m, l
 WHERE s.id = m.id AND s.id = l.id
"""


def events_apply(*, events: list[Event]) -> None:
    """What stored events mean for journeys, event by event in id order: first the exits it
    causes (again: sends enrolled since it was stored, some by earlier events of the same
    chunk), then its enrolments. Runs in services.events_apply's transaction (marketing's),
    with the customers locked.

    A chunk's reads are done once for all its events (active sends, earlier enrolments, carts,
    exit events), the decisions in memory in the same order as one by one, and the writes
    with one statement per table: a worker's cost per event is then mostly PostgreSQL's.
    """
    events = sorted((e for e in events if e.customer_id is not None), key=lambda e: e.pk)
    if not events:
        return
    journeys = selectors.journeys_all()
    chunk = _Chunk.load(events, journeys)
    for event in events:
        chunk.exit(event, [j for j in journeys if event.type in j.exit_on])
        for journey in journeys:
            if journey.active and journey.trigger == event.type:
                note = chunk.enrol(journey, event)
                logger.debug("event %s, journey %s: %s", event.pk, journey.slug, note)
    chunk.save()


@transaction.atomic(savepoint=False)
def scheduled_send_cancel_for_exit(*, event: Event, journeys: list[Journey]) -> int:
    """Cancel the customer's active sends in `journeys` whose trigger occurred no later than
    the exit event: one indexed UPDATE per exit scope. Returns how many were cancelled."""
    reason = f"cancelled by {describe_event(event)}"
    cancelled = 0
    by_scope: dict[str, list[int]] = {}
    for journey in journeys:
        by_scope.setdefault(journey.exit_scope, []).append(journey.pk)
    for scope, journey_ids in by_scope.items():
        sends = ScheduledSend.objects.active().filter(
            customer_id=event.customer_id,
            journey_id__in=journey_ids,
            trigger_occurred_at__lte=event.occurred_at,
        )
        if scope == Journey.ExitScope.CART:
            cart_id = selectors.exit_cart_id(event)
            if cart_id is None:
                continue
            sends = sends.filter(cart__external_id=cart_id)
        cancelled += sends.update(status=Status.CANCELLED, reason=reason, updated_at=Now())
    return cancelled


# Cancellations decided while applying a chunk, for sends stored before it: one UPDATE, rows
# locked in id order (see _CANCEL_ONE_SQL), and only rows still active (a worker may have
# sent one meanwhile: it is not ours to cancel).
_CANCEL_IDS_SQL = """
UPDATE journeys_scheduledsend s
   SET status = 'cancelled', reason = v.reason, updated_at = now()
  FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) AS v(id, reason),
       (SELECT id FROM journeys_scheduledsend
         WHERE id = ANY(%(ids)s::bigint[]) AND status IN ('pending', 'sending')
         ORDER BY id FOR UPDATE) l
 WHERE s.id = v.id AND s.id = l.id
"""


@dataclass
class _Chunk:
    """A chunk of events being applied: what they read, loaded once, and what they write,
    kept until save(). Decisions are the ones each event would take alone, in order: an
    event sees the sends and enrolments of the events before it in the chunk.

    Complete because the customers are locked: no other applier or webhook changes their
    sends meanwhile; a worker may only take a send out of the active ones (sent, skipped),
    and save() cancels only rows still active.
    """

    active: dict[int, list[ScheduledSend]]  # customer id -> active sends, stored and new
    enrolled: dict[tuple[int, int], list[datetime]]  # (journey, customer) -> triggers
    carts: dict[str, Cart]  # external id -> cart
    exits: dict[int, list[Event]]  # customer id -> candidate exit events, earliest first
    cancelled: dict[int, str] = field(default_factory=dict)  # stored send id -> reason
    enrollments: list[Enrollment] = field(default_factory=list)
    sends: list[ScheduledSend] = field(default_factory=list)

    @classmethod
    def load(cls, events: list[Event], journeys: list[Journey]) -> _Chunk:
        customer_ids = {e.customer_id for e in events}
        triggers = [(j, e) for e in events for j in journeys if j.active and j.trigger == e.type]
        triggered = {j.pk: j for j, _ in triggers}
        # sends an event may cancel: by its exits, or by superseding them
        watched = {j.pk for e in events for j in journeys if e.type in j.exit_on}
        watched |= {pk for pk, j in triggered.items() if j.dedupe != Journey.Dedupe.EVERY}
        active: dict[int, list[ScheduledSend]] = {}
        if watched:
            for send in (
                ScheduledSend.objects.active()
                .filter(customer_id__in=customer_ids, journey_id__in=watched)
                .select_related("cart", "enrollment")
                .order_by("-due_at", "pk")
            ):
                active.setdefault(send.customer_id, []).append(send)
        enrolled: dict[tuple[int, int], list[datetime]] = {}
        checked = [pk for pk, j in triggered.items() if j.reentry != Journey.Reentry.EVERY]
        if checked:
            for journey_id, customer_id, occurred in Enrollment.objects.filter(
                journey_id__in=checked, customer_id__in={e.customer_id for _, e in triggers}
            ).values_list("journey_id", "customer_id", "trigger_occurred_at"):
                enrolled.setdefault((journey_id, customer_id), []).append(occurred)
        cart_ids = {cart_id for _, e in triggers if (cart_id := _event_cart_id(e))}
        carts = {c.external_id: c for c in Cart.objects.filter(external_id__in=cart_ids)}
        exits: dict[int, list[Event]] = {}
        exit_types = {t for j in triggered.values() for t in j.exit_on}
        if exit_types:
            for event in (
                Event.objects.filter(
                    customer_id__in={e.customer_id for _, e in triggers},
                    type__in=exit_types,
                    occurred_at__gte=min(e.occurred_at for _, e in triggers),
                )
                .order_by("occurred_at", "pk")
                .only("id", "event_id", "type", "customer_id", "occurred_at", "payload")
            ):
                assert event.customer_id is not None
                exits.setdefault(event.customer_id, []).append(event)
        return cls(active=active, enrolled=enrolled, carts=carts, exits=exits)

    def _cancel(self, send: ScheduledSend, reason: str) -> None:
        send.status, send.reason = Status.CANCELLED, reason
        self.active[send.customer_id].remove(send)
        if send.pk is not None:
            self.cancelled[send.pk] = reason

    def exit(self, event: Event, journeys: list[Journey]) -> None:
        """The customer's active sends in `journeys` (exited by `event`) whose trigger
        occurred no later than it; per cart for journeys whose exit scope is the cart."""
        if not journeys:
            return
        assert event.customer_id is not None
        scopes = {j.pk: j.exit_scope for j in journeys}
        cart_id = selectors.exit_cart_id(event)
        reason = f"cancelled by {describe_event(event)}"
        for send in list(self.active.get(event.customer_id, [])):
            scope = scopes.get(send.journey_id)
            if scope is None or send.trigger_occurred_at > event.occurred_at:
                continue
            if scope == Journey.ExitScope.CART and (
                cart_id is None or send.cart is None or send.cart.external_id != cart_id
            ):
                continue
            self._cancel(send, reason)

    def _reentry_refusal(self, journey: Journey, customer_id: int, occurred: datetime) -> str:
        previous = self.enrolled.get((journey.pk, customer_id), [])
        if journey.reentry == Journey.Reentry.ONCE and previous:
            return "ignored: already enrolled once (re-entry once)"
        if journey.reentry == Journey.Reentry.PERIOD and journey.reentry_period:
            window = journey.reentry_period
            if any(occurred - window < at < occurred + window for at in previous):
                return f"ignored: enrolled less than {humanize(window)} ago (re-entry per period)"
        return ""

    def _exit_event_since(
        self, journey: Journey, event: Event, cart_id: str | None
    ) -> Event | None:
        """The earliest exit event of the customer that occurred at or after the trigger
        (with a cart-scoped journey and a cart: one about that cart)."""
        assert event.customer_id is not None
        for candidate in self.exits.get(event.customer_id, []):
            if (
                candidate.type in journey.exit_on
                and candidate.occurred_at >= event.occurred_at
                and candidate.pk != event.pk
                and (
                    journey.exit_scope != Journey.ExitScope.CART
                    or cart_id is None
                    or selectors.exit_cart_id(candidate) == cart_id
                )
            ):
                return candidate
        return None

    def enrol(self, journey: Journey, event: Event) -> str:
        """Enrol the event's customer into `journey` and schedule its steps; returns what
        happened. Decisions use the events' occurred_at, not arrival order: an exit event
        that occurred after this trigger (even one that arrived first) cancels the new sends
        at once."""
        customer_id = event.customer_id
        assert customer_id is not None
        occurred = event.occurred_at
        # the prefetched steps of selectors.journeys_all()
        steps = sorted(journey.steps.all(), key=lambda step: step.position)
        if not steps:
            return "journey has no steps"

        chain_started_at = occurred
        if journey.dedupe != Journey.Dedupe.EVERY:
            active = [s for s in self.active.get(customer_id, []) if s.journey_id == journey.pk]
            if active:
                current = active[0].enrollment
                if journey.dedupe == Journey.Dedupe.FIRST:
                    return "ignored: already pending (dedupe first)"
                if occurred < current.trigger_occurred_at:
                    return "ignored: a later trigger is already pending"
                for send in active:
                    self._cancel(send, f"superseded by {describe_event(event)}")
                chain_started_at = current.chain_started_at
            elif refusal := self._reentry_refusal(journey, customer_id, occurred):
                return refusal
        elif refusal := self._reentry_refusal(journey, customer_id, occurred):
            return refusal

        cart_id = _event_cart_id(event)
        cart = self.carts.get(cart_id) if cart_id else None
        anchor = occurred
        if journey.dedupe == Journey.Dedupe.LATEST and journey.max_wait is not None:
            anchor = min(occurred, chain_started_at + journey.max_wait)
        enrollment = Enrollment(
            journey=journey,
            customer_id=customer_id,
            cart=cart,
            trigger_event=event,
            trigger_occurred_at=occurred,
            chain_started_at=chain_started_at,
        )
        self.enrollments.append(enrollment)
        self.enrolled.setdefault((journey.pk, customer_id), []).append(occurred)
        exit_event = self._exit_event_since(journey, event, cart_id)
        dedupe_key = str(customer_id)
        if journey.dedupe == Journey.Dedupe.EVERY:
            dedupe_key = f"{customer_id}:{event.pk}"
        now = timezone.now()
        for step in steps:
            due_at = anchor + step.delay
            status, reason = Status.PENDING, ""
            if exit_event is not None:
                status, reason = Status.CANCELLED, f"cancelled by {describe_event(exit_event)}"
            elif (late := now - due_at) > journey.max_lateness:
                status, reason = Status.SKIPPED, f"stale: {humanize(late)} late at enrolment"
            send = ScheduledSend(
                enrollment=enrollment,
                journey=journey,
                step=step,
                step_position=step.position,
                customer_id=customer_id,
                cart=cart,
                channel=step.channel,
                trigger_occurred_at=occurred,
                due_at=due_at,
                dedupe_key=dedupe_key,
                status=status,
                reason=reason,
                discount_code=(
                    discount_code_generate()
                    if step.discount_percent and status == Status.PENDING
                    else None
                ),
                discount_percent=step.discount_percent,
            )
            self.sends.append(send)
            if status == Status.PENDING:
                active_sends = self.active.setdefault(customer_id, [])
                active_sends.append(send)
                active_sends.sort(key=lambda s: s.due_at, reverse=True)
        return "enrolled"

    def save(self) -> None:
        """The chunk's writes: the cancellations of stored sends first (a new send may take
        the place of one), then the enrolments and their sends."""
        if self.cancelled:
            ids = sorted(self.cancelled)
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    reasons = [self.cancelled[i] for i in ids]
                    cursor.execute(_CANCEL_IDS_SQL, {"ids": ids, "reasons": reasons})
            else:
                by_reason: dict[str, list[int]] = {}
                for send_id in ids:
                    by_reason.setdefault(self.cancelled[send_id], []).append(send_id)
                for reason, send_ids in by_reason.items():
                    ScheduledSend.objects.active().filter(pk__in=send_ids).update(
                        status=Status.CANCELLED, reason=reason, updated_at=Now()
                    )
        Enrollment.objects.bulk_create(self.enrollments)
        ScheduledSend.objects.bulk_create(self.sends)


# --- operators ------------------------------------------------------------------------------


class SendNotCancellable(Exception):
    pass


@transaction.atomic
def scheduled_send_cancel(*, send_id: int, reason: str) -> ScheduledSend:
    """Cancel one send that has not gone out yet (API, admin)."""
    send = ScheduledSend.objects.select_for_update().get(pk=send_id)
    if send.status not in ScheduledSend.ACTIVE:
        raise SendNotCancellable(f"send {send_id} is already {send.status}")
    send.status = Status.CANCELLED
    send.reason = reason[:500]
    send.save(update_fields=["status", "reason", "updated_at"])
    return send


# --- the timer: claim, recover, dispatch ----------------------------------------------------


_CLAIM_SQL = """
UPDATE journeys_scheduledsend
   SET status = 'sending', claimed_at = now(), updated_at = now(), attempts = attempts + 1
 WHERE id = ANY(ARRAY(SELECT id FROM journeys_scheduledsend
                       WHERE status = 'pending' AND due_at <= now()
                       ORDER BY due_at
                       LIMIT %s
                       FOR UPDATE SKIP LOCKED))
RETURNING id
"""


def scheduled_sends_claim_due(*, limit: int) -> list[int]:
    """Move up to `limit` due pending sends to `sending` and return their ids.

    The claim is a compare-and-set: only a row still pending moves, and FOR UPDATE SKIP
    LOCKED lets any number of tickers on any number of machines claim at once without
    waiting for or double-claiming each other. On PostgreSQL it is one statement (one round
    trip, the ids come back with RETURNING); on SQLite (one ticker) the database lock does
    the same job over two statements. `id = ANY(ARRAY(...))` rather than `id IN (...)`: with
    IN, the planner may hash-join the claimed ids against a sequential scan of the whole
    table when few rows are due (tests/journeys/test_query_plans.py).
    """
    if connection.vendor == "postgresql":
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_CLAIM_SQL, [limit])
            return sorted(row[0] for row in cursor.fetchall())
    with transaction.atomic():
        ids = list(
            ScheduledSend.objects.due()
            .order_by("due_at")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        if ids:
            ScheduledSend.objects.filter(pk__in=ids).update(
                status=Status.SENDING,
                claimed_at=Now(),
                updated_at=Now(),
                attempts=F("attempts") + 1,
            )
    return ids


def scheduled_sends_recover(*, lease: timedelta, limit: int) -> list[int]:
    """Hand out again sends claimed longer than `lease` ago whose worker never finished (a
    lost queue entry, a killed worker); fail those out of attempts. Returns ids to enqueue."""
    cutoff = timezone.now() - lease
    with transaction.atomic():
        stuck = list(
            ScheduledSend.objects.in_flight_since(cutoff)
            .order_by("claimed_at")
            .select_for_update(skip_locked=True)
            .values_list("id", "attempts")[:limit]
        )
        spent = [pk for pk, attempts in stuck if attempts >= settings.NUDGE_SEND_MAX_ATTEMPTS]
        retry = [pk for pk, attempts in stuck if attempts < settings.NUDGE_SEND_MAX_ATTEMPTS]
        if spent:
            ScheduledSend.objects.filter(pk__in=spent).update(
                status=Status.FAILED,
                reason=f"failed: no worker finished it in {settings.NUDGE_SEND_MAX_ATTEMPTS} "
                "attempts",
                updated_at=Now(),
            )
        if retry:
            ScheduledSend.objects.filter(pk__in=retry).update(
                claimed_at=Now(), attempts=F("attempts") + 1
            )
    return retry


def _reason_not_to_send(
    send: ScheduledSend, now: datetime, exit_event: Event | None
) -> tuple[str, str] | None:
    """(status, reason) when the send must not go out; None when it may. `exit_event` is the
    earliest exit event since the trigger (see _exit_events_for)."""
    journey = send.journey
    if not journey.active:
        return Status.CANCELLED, "cancelled: journey deactivated"
    if send.step is None:
        return Status.CANCELLED, "cancelled: step removed from the journey"
    if exit_event is not None:
        return Status.CANCELLED, f"cancelled by {describe_event(exit_event)}"
    customer = send.customer
    if not customer.has_consent(send.channel):
        return Status.SKIPPED, f"opted out of {send.get_channel_display()}"
    if not _recipient(send):
        missing = "email address" if send.channel == Channel.EMAIL else "phone number"
        return Status.SKIPPED, f"no {missing}"
    late = now - send.due_at
    if late > journey.max_lateness:
        return Status.SKIPPED, f"stale: {humanize(late)} late"
    return None


_EXIT_EVENTS_SQL = """
SELECT * FROM marketing_event
 WHERE customer_id IN ({customers}) AND type IN ({types}) AND occurred_at >= %s
 ORDER BY occurred_at, id
"""


def _exit_events_query(
    *, customer_ids: set[int], types: set[str], since: datetime
) -> tuple[str, list[Any]]:
    sql = _EXIT_EVENTS_SQL.format(
        customers=", ".join(["%s"] * len(customer_ids)), types=", ".join(["%s"] * len(types))
    )
    return sql, [*customer_ids, *types, connection.ops.adapt_datetimefield_value(since)]


def _exit_events_for(sends: list[ScheduledSend]) -> dict[int, Event]:
    """For each send, the earliest exit event of its customer since its trigger (same cart
    with a per-cart exit scope), by send id: one query for the whole chunk, on the
    (customer, type, occurred_at) index, instead of one per send."""
    exit_types = {t for send in sends for t in send.journey.exit_on}
    if not sends or not exit_types:
        return {}
    # raw() instead of filter(): Django compiled the same query anew for every chunk
    candidates = Event.objects.raw(
        *_exit_events_query(
            customer_ids={send.customer_id for send in sends},
            types=exit_types,
            since=min(send.trigger_occurred_at for send in sends),
        )
    )
    by_customer: dict[int, list[Event]] = {}
    for event in candidates:
        assert event.customer_id is not None
        by_customer.setdefault(event.customer_id, []).append(event)
    found: dict[int, Event] = {}
    for send in sends:
        journey = send.journey
        cart_id = None
        if journey.exit_scope == Journey.ExitScope.CART and send.cart is not None:
            cart_id = send.cart.external_id
        for event in by_customer.get(send.customer_id, ()):
            if event.type not in journey.exit_on or event.occurred_at < send.trigger_occurred_at:
                continue
            if cart_id is not None and selectors.exit_cart_id(event) != cart_id:
                continue
            found[send.pk] = event
            break
    return found


def _recipient(send: ScheduledSend) -> str:
    return send.customer.email if send.channel == Channel.EMAIL else send.customer.phone


def _message_context(send: ScheduledSend, now: datetime) -> dict[str, Any]:
    customer, cart, step = send.customer, send.cart, send.step
    discount = None
    if send.discount_code:
        expires_at = send.discount_expires_at
        if expires_at is None and step is not None and step.discount_valid_for:
            expires_at = now + step.discount_valid_for
        discount = {
            "code": send.discount_code,
            "percent_off": send.discount_percent,
            "expires_at": expires_at,
        }
    return {
        "customer": {
            "id": customer.external_id,
            "external_id": customer.external_id,
            "first_name": customer.first_name,
            "email": customer.email,
            "phone": customer.phone,
            "timezone": customer.timezone,
        },
        "cart": (
            {
                "id": cart.external_id,
                "external_id": cart.external_id,
                "total": cart.total,
                "currency": cart.currency,
                "checkout_url": cart.checkout_url,
                "items": cart.items,
            }
            if cart
            else None
        ),
        "discount": discount,
        "journey": {"slug": send.journey.slug, "name": send.journey.name},
    }


def scheduled_sends_dispatch_chunks(
    *, send_ids: list[int], budget_seconds: float
) -> tuple[dict[str, int], list[int]]:
    """Dispatch a task's sends NUDGE_DISPATCH_CHUNK at a time (one transaction, and so one
    set of row locks, each), and start no chunk once `budget_seconds` have passed: with a
    slow provider the rest would run into the task's timeout, and a task killed mid-chunk
    has called the provider for sends it never recorded. Returns the outcome counts, and
    the ids not attempted (still claimed: the caller hands them to a new task)."""
    outcomes: Counter[str] = Counter()
    chunk = settings.NUDGE_DISPATCH_CHUNK
    deadline = time.monotonic() + budget_seconds
    for start in range(0, len(send_ids), chunk):
        if start and time.monotonic() > deadline:
            return dict(outcomes), send_ids[start:]
        outcomes.update(scheduled_sends_dispatch(send_ids=send_ids[start : start + chunk]).values())
    return dict(outcomes), []


def scheduled_send_dispatch(*, send_id: int) -> str:
    """Send one claimed message; see scheduled_sends_dispatch. Returns its new status."""
    return scheduled_sends_dispatch(send_ids=[send_id]).get(send_id, "noop")


_DISPATCH_FIELDS = [
    "status",
    "reason",
    "recipient",
    "subject",
    "body",
    "discount_expires_at",
    "provider_message_id",
    "claimed_at",
    "sent_at",
    "updated_at",
]


def scheduled_sends_dispatch(*, send_ids: list[int]) -> dict[int, str]:
    """Send a chunk of claimed messages, each at most once, and record the outcomes.

    The chunk's rows are locked in id order with one SELECT ... FOR UPDATE, and only rows
    still in flight come back (a row cancelled meanwhile is re-read under the lock and
    dropped). Everything is re-checked under those locks (exit event since the trigger, in
    one query for the chunk; opted out? too late?) and the locks are held across the channel
    calls, so an exit event's cancellation (which updates these rows) either commits first
    and is seen here, or waits until the chunk is recorded. The outcomes are written with
    one UPDATE. Returns the new status of each id; ids not ours to send (already handled by
    another delivery of the same task) are left out.
    """
    outcome: dict[int, str] = {}
    with transaction.atomic():
        sends = _sends_lock(send_ids)
        if not sends:
            return outcome
        _journeys_attach(sends)
        exits = _exit_events_for(sends)
        now = timezone.now()
        for send in sends:
            try:
                _dispatch_locked(send, now, exits.get(send.pk))
            except Exception as exc:
                # One bad row must not roll back the chunk: its other messages are gone.
                logger.exception("dispatch of send %s failed", send.pk)
                _retry_or_fail(send, now, f"unexpected error: {exc!r}")
            send.updated_at = timezone.now()
            outcome[send.pk] = send.status
        _dispatch_outcomes_save(sends)
    return outcome


# The chunk's in-flight rows with their customers and carts, locked in id order: what
# select_for_update(of=("self",)).select_related("customer", "cart") sends, written once.
# Django compiled that queryset anew for every chunk (~1.2 ms, timed apart from the query).
_LOCKED_PARTS = ((ScheduledSend, "s"), (Customer, "c"), (Cart, "k"))
_LOCK_SQL = """
SELECT {columns}
  FROM journeys_scheduledsend s
  JOIN marketing_customer c ON c.id = s.customer_id
  LEFT JOIN marketing_cart k ON k.id = s.cart_id
 WHERE s.id IN ({ids}) AND s.status = %s
 ORDER BY s.id{lock}
"""


def _sends_lock(send_ids: list[int]) -> list[ScheduledSend]:
    if not send_ids:
        return []
    parts, cols, _ = _lock_layout()
    with connection.cursor() as cursor:
        cursor.execute(*_sends_lock_query(send_ids))
        rows: Any = cursor.fetchall()
    # the database's values as the ORM gives them (SQLite's datetimes and booleans, JSON)
    compiler = connection.ops.compiler("SQLCompiler")(Query(ScheduledSend), connection, "default")
    if converters := compiler.get_converters(cols):
        rows = compiler.apply_converters(rows, converters)
    sends = []
    for row in rows:
        instances: list[Any] = []
        start = 0
        for model, names in parts:
            values = row[start : start + len(names)]
            start += len(names)
            # the cart's columns (id first) are NULL when the send has none: LEFT JOIN
            instances.append(None if values[0] is None else model.from_db("default", names, values))
        send, customer, cart = instances
        _SEND_CUSTOMER.set_cached_value(send, customer)
        _SEND_CART.set_cached_value(send, cart)
        sends.append(send)
    return sends


def _sends_lock_query(send_ids: list[int]) -> tuple[str, list[Any]]:
    sql = _LOCK_SQL.format(
        columns=_lock_layout()[2],
        ids=", ".join(["%s"] * len(send_ids)),
        lock=" FOR UPDATE OF s" if connection.features.has_select_for_update_of else "",
    )
    return sql, [*send_ids, Status.SENDING]


@cache
def _lock_layout() -> tuple[list[tuple[type[Any], list[str]]], list[Any], str]:
    """Each model of _LOCKED_PARTS with its field names, the columns as the ORM's Cols, and
    the SELECT list they make (built once: they never change while the process runs)."""
    parts, cols = [], []
    for model, alias in _LOCKED_PARTS:
        columns = model._meta.concrete_fields
        parts.append((model, [column.attname for column in columns]))
        cols += [column.get_col(alias) for column in columns]
    select = ", ".join(
        f"{col.alias}.{connection.ops.quote_name(col.target.column)}" for col in cols
    )
    return parts, cols, select


_OUTCOMES_SQL = """
UPDATE journeys_scheduledsend AS s
   SET status = v.status, reason = v.reason, recipient = v.recipient, subject = v.subject,
       body = v.body, discount_expires_at = v.discount_expires_at,
       provider_message_id = v.provider_message_id, claimed_at = v.claimed_at,
       sent_at = v.sent_at, updated_at = v.updated_at
  FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[],
              %s::text[], %s::timestamptz[], %s::varchar[], %s::timestamptz[],
              %s::timestamptz[], %s::timestamptz[])
       AS v(id, status, reason, recipient, subject, body, discount_expires_at,
            provider_message_id, claimed_at, sent_at, updated_at)
 WHERE s.id = v.id
"""


def _dispatch_outcomes_save(sends: list[ScheduledSend]) -> None:
    """One UPDATE for the chunk's outcomes. On PostgreSQL it joins the rows to arrays of the
    new values (Django's bulk_update builds a CASE per field and row, and spent more time in
    Python than the whole rest of the dispatch)."""
    if connection.vendor != "postgresql":
        ScheduledSend.objects.bulk_update(sends, _DISPATCH_FIELDS)
        return
    columns = [[s.pk for s in sends]]
    columns += [[getattr(s, name) for s in sends] for name in _DISPATCH_FIELDS]
    with connection.cursor() as cursor:
        cursor.execute(_OUTCOMES_SQL, columns)


def _journeys_attach(sends: list[ScheduledSend]) -> None:
    """Give each send its journey and step from this process's copy of the journeys, after
    the version query (selectors.journeys_and_steps_by_id): a chunk's sends share a few
    journeys, and loading them again for every chunk cost a tenth of its time."""
    journeys, steps = selectors.journeys_and_steps_by_id()
    for send in sends:
        # the related-object cache directly: the descriptors' checks cost more than the rest
        _SEND_JOURNEY.set_cached_value(send, journeys[send.journey_id])
        _SEND_STEP.set_cached_value(send, steps.get(send.step_id) if send.step_id else None)


_SEND_JOURNEY = ScheduledSend._meta.get_field("journey")
_SEND_STEP = ScheduledSend._meta.get_field("step")
_SEND_CUSTOMER = ScheduledSend._meta.get_field("customer")
_SEND_CART = ScheduledSend._meta.get_field("cart")


def _retry_or_fail(
    send: ScheduledSend, now: datetime, problem: str, *, retryable: bool = True
) -> None:
    if retryable and send.attempts < settings.NUDGE_SEND_MAX_ATTEMPTS:
        # stays in flight; recovery hands it out again after the lease
        send.reason = f"retrying after {problem}"[:500]
        send.claimed_at = now
    else:
        send.status = Status.FAILED
        send.reason = f"failed: {problem}"[:500]


def _dispatch_locked(send: ScheduledSend, now: datetime, exit_event: Event | None) -> None:
    """Decide, render and send one locked row; sets its outcome fields (saved by the caller)."""
    refusal = _reason_not_to_send(send, now, exit_event)
    if refusal is not None:
        send.status, send.reason = refusal
        return
    assert send.step is not None  # _reason_not_to_send refuses a removed step
    context = _message_context(send, now)
    send.recipient = _recipient(send)
    send.subject = render(send.step.subject, context) if send.step.subject else ""
    send.body = render(send.step.body, context)
    if context["discount"]:
        send.discount_expires_at = context["discount"]["expires_at"]
    message = OutgoingMessage(
        send_id=send.pk,
        channel=send.channel,
        recipient=send.recipient,
        subject=send.subject,
        body=send.body,
    )
    try:
        send.provider_message_id = get_channel(send.channel).send(message)
    except ChannelError as exc:
        _retry_or_fail(send, now, f"provider error: {exc}", retryable=exc.retryable)
        return
    send.status = Status.SENT
    send.reason = ""
    send.sent_at = timezone.now()


# --- journeys as code -----------------------------------------------------------------------


class JourneyImportError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class ImportSummary:
    created: list[str]
    updated: list[str]
    deactivated: list[str]


@transaction.atomic
def journeys_import(*, data: Any, replace: bool = False, dry_run: bool = False) -> ImportSummary:
    """Create or update journeys from the journeys-as-code format, all or nothing.

    Every journey is validated before anything is written; errors name the journey and the
    field. With `replace`, active journeys absent from `data` are deactivated. With
    `dry_run`, everything is validated and reported, and nothing is kept.
    """
    if not isinstance(data, dict) or not isinstance(data.get("journeys"), list):
        raise JourneyImportError(['the file must be an object {"journeys": [...]}'])
    known = selectors.known_event_types()
    specs: list[JourneySpec] = []
    errors: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(data["journeys"]):
        label = f"journeys[{index}]"
        if isinstance(raw, dict) and isinstance(raw.get("slug"), str):
            label += f" ({raw['slug']})"
        spec, problems = journey_spec_parse(raw, known_types=known)
        errors.extend(f"{label}: {problem}" for problem in problems)
        if spec is not None:
            if spec.slug in seen:
                errors.append(f"{label}: slug: appears twice in the file")
            seen.add(spec.slug)
            specs.append(spec)
    if errors:
        raise JourneyImportError(errors)
    created: list[str] = []
    updated: list[str] = []
    for spec in specs:
        _, was_created = journey_save_spec(spec=spec)
        (created if was_created else updated).append(spec.slug)
    deactivated: list[str] = []
    if replace:
        absent = Journey.objects.filter(active=True).exclude(slug__in=seen)
        deactivated = list(absent.values_list("slug", flat=True))
        absent.update(active=False, updated_at=Now())
    if dry_run:
        transaction.set_rollback(True)
    return ImportSummary(created=created, updated=updated, deactivated=deactivated)


@transaction.atomic
def journey_save_spec(*, spec: JourneySpec) -> tuple[Journey, bool]:
    """Write one validated journey and its steps (by position); steps that disappear have
    their pending sends cancelled with a reason."""
    journey, created = Journey.objects.update_or_create(
        slug=spec.slug,
        defaults={
            "name": spec.name,
            "trigger": spec.trigger,
            "exit_on": spec.exit_on,
            "exit_scope": spec.exit_scope,
            "dedupe": spec.dedupe,
            "max_wait": spec.max_wait,
            "reentry": spec.reentry,
            "reentry_period": spec.reentry_period,
            "max_lateness": spec.max_lateness,
            "active": spec.active,
        },
    )
    for position, step in enumerate(spec.steps):
        JourneyStep.objects.update_or_create(
            journey=journey,
            position=position,
            defaults={
                "delay": step.delay,
                "channel": step.channel,
                "subject": step.subject,
                "body": step.body,
                "discount_percent": step.discount_percent,
                "discount_valid_for": step.discount_valid_for,
            },
        )
    removed = journey.steps.filter(position__gte=len(spec.steps))
    scheduled_send_cancel_for_steps(step_ids=list(removed.values_list("pk", flat=True)))
    removed.delete()
    return journey, created


def scheduled_send_cancel_for_steps(*, step_ids: list[int]) -> int:
    """Cancel the active sends of steps that are being removed from their journey."""
    if not step_ids:
        return 0
    return (
        ScheduledSend.objects.active()
        .filter(step_id__in=step_ids)
        .update(
            status=Status.CANCELLED,
            reason="cancelled: step removed from the journey",
            updated_at=Now(),
        )
    )


DEMO_JOURNEYS = Path(__file__).with_name("demo_journeys.json")


def demo_journeys_ensure() -> ImportSummary:
    """Load the three journeys the business asked for (idempotent: updates them in place)."""
    return journeys_import(data=json.loads(DEMO_JOURNEYS.read_text()))
