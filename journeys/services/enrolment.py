"""Enrolment: what stored events mean for journeys, decided for a chunk of events at once.

`enrolment_plan_apply(events=...)` is the entry: it loads an `EnrolmentPlan` (what the
chunk's events read, once for all of them), lets every event in id order take the decisions
it would take alone (first the exits it causes, then its enrolments), and saves the plan with
one statement per table. The caller (services.applying) holds the customers' locks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models.functions import Now
from django.utils import timezone

from journeys import selectors
from journeys.durations import humanize
from journeys.models import Enrollment, Journey, ScheduledSend
from journeys.services import codes, pacing
from journeys.services.attribution import conversions_record
from journeys.services.codes import discount_code_generate
from journeys.services.conditions import EntryConditions
from journeys.services.exits import (
    describe_event,
    event_cart_id,
    event_exits_send,
    exit_event_first,
    exit_reason,
)
from journeys.services.holdout import (
    enrollment_held_out,
    held_out_awaiting,
    held_out_awaiting_is,
    held_out_reason,
)
from journeys.sqlnames import sql
from marketing.models import Cart, Event

logger = logging.getLogger(__name__)

Status = ScheduledSend.Status
__all__ = ["EnrolmentPlan", "discount_code_generate", "enrolment_plan_apply"]


def enrolment_plan_apply(*, events: list[Event]) -> None:
    """Apply stored events to journeys, event by event in id order: first the exits each
    causes (again: sends enrolled since it was stored, some by earlier events of the same
    chunk), then its enrolments. Runs in the caller's transaction, with the customers locked
    (services.applying.events_apply).

    A chunk's reads are done once for all its events (active sends, earlier enrolments, carts,
    exit events), the decisions in memory in the same order as one by one, and the writes
    with one statement per table: a worker's cost per event is then mostly PostgreSQL's.
    """
    events = sorted((e for e in events if e.customer_id is not None), key=lambda e: e.pk)
    if not events:
        return
    journeys = selectors.journeys_all()
    plan = EnrolmentPlan.load(events, journeys)
    for event in events:
        plan.exit(event, [j for j in journeys if event.type in j.exit_on])
        for journey in journeys:
            if journey.active and journey.trigger == event.type:
                note = plan.enrol(journey, event)
                logger.debug("event %s, journey %s: %s", event.pk, journey.slug, note)
    plan.save()
    # payments that carry a discount code: redeemed, duplicate, expired, void or unknown
    codes.code_redemptions_record(events=events)
    conversions_record(events=events)


# Cancellations decided while applying a chunk, for sends stored before it: one UPDATE, rows
# locked in id order (see services.exits), and only rows still active (a worker may have sent
# one meanwhile: it is not ours to cancel).
_CANCEL_IDS_SQL = sql("""
UPDATE {send} s
   SET status = {cancelled}, reason = v.reason, updated_at = now()
  FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) AS v(id, reason),
       (SELECT id FROM {send}
         WHERE id = ANY(%(ids)s::bigint[]) AND status IN ({active})
         ORDER BY id FOR UPDATE) l
 WHERE s.id = v.id AND s.id = l.id
""")


@dataclass
class EnrolmentPlan:
    """A chunk of events being applied: what they read, loaded once, and what they write,
    kept until save(). Decisions are the ones each event would take alone, in order: an
    event sees the sends and enrolments of the events before it in the chunk.

    Complete because the customers are locked: no other applier or webhook changes their
    sends meanwhile; a worker may only take a send out of the active ones (sent, skipped),
    and save() cancels only rows still active.
    """

    journeys: dict[int, Journey]  # id -> journey
    active: dict[int, list[ScheduledSend]]  # customer id -> active sends, stored and new
    enrolled: dict[tuple[int, int], list[datetime]]  # (journey, customer) -> triggers
    carts: dict[str, Cart]  # external id -> cart
    exits: dict[int, list[Event]]  # customer id -> candidate exit events, earliest first
    conditions: EntryConditions = field(default_factory=EntryConditions)
    cancelled: dict[int, str] = field(default_factory=dict)  # stored send id -> reason
    enrollments: list[Enrollment] = field(default_factory=list)
    sends: list[ScheduledSend] = field(default_factory=list)

    @classmethod
    def load(cls, events: list[Event], journeys: list[Journey]) -> EnrolmentPlan:
        customer_ids = {e.customer_id for e in events}
        journeys_by_id = {j.pk: j for j in journeys}
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
            # held-out sends stand for pending ones until their due time (services.holdout)
            held = held_out_awaiting(
                customer_ids=customer_ids, journeys=[journeys_by_id[pk] for pk in watched]
            )
            for send in held:
                active.setdefault(send.customer_id, []).append(send)
            for sends in active.values() if held else ():
                sends.sort(key=lambda s: (-s.due_at.timestamp(), s.pk))
        enrolled: dict[tuple[int, int], list[datetime]] = {}
        checked = [pk for pk, j in triggered.items() if j.reentry != Journey.Reentry.EVERY]
        if checked:
            for journey_id, customer_id, occurred in Enrollment.objects.filter(
                journey_id__in=checked, customer_id__in={e.customer_id for _, e in triggers}
            ).values_list("journey_id", "customer_id", "trigger_occurred_at"):
                enrolled.setdefault((journey_id, customer_id), []).append(occurred)
        cart_ids = {cart_id for _, e in triggers if (cart_id := event_cart_id(e))}
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
        return cls(
            journeys={j.pk: j for j in journeys},
            active=active,
            enrolled=enrolled,
            carts=carts,
            exits=exits,
            conditions=EntryConditions.load(triggers),
        )

    def _cancel(self, send: ScheduledSend, reason: str) -> None:
        self.active[send.customer_id].remove(send)
        if held_out_awaiting_is(send):  # out of the running; its row stays held out
            return
        send.status, send.reason = Status.CANCELLED, reason
        if send.pk is not None:
            self.cancelled[send.pk] = reason

    def exit(self, event: Event, journeys: list[Journey]) -> None:
        """Cancel the customer's active sends (stored, or planned by earlier events) in
        `journeys` that `event` exits (services.exits)."""
        if not journeys:
            return
        assert event.customer_id is not None
        exited = {j.pk for j in journeys}
        for send in list(self.active.get(event.customer_id, [])):
            journey = self.journeys[send.journey_id]
            if send.journey_id in exited and event_exits_send(event, send, journey):
                self._cancel(send, exit_reason(event))

    def _reentry_refusal(self, journey: Journey, customer_id: int, occurred: datetime) -> str:
        previous = self.enrolled.get((journey.pk, customer_id), [])
        if journey.reentry == Journey.Reentry.ONCE and previous:
            return "ignored: already enrolled once (re-entry once)"
        if journey.reentry == Journey.Reentry.PERIOD and journey.reentry_period:
            window = journey.reentry_period
            if any(occurred - window < at < occurred + window for at in previous):
                return f"ignored: enrolled less than {humanize(window)} ago (re-entry per period)"
        return ""

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
        # before dedupe and re-entry: an event the conditions refuse is no trigger at all
        if refusal := self.conditions.refusal(journey, event):
            return refusal

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

        cart_id = event_cart_id(event)
        cart = self.carts.get(cart_id) if cart_id else None
        anchor = occurred
        if journey.dedupe == Journey.Dedupe.LATEST and journey.max_wait is not None:
            anchor = min(occurred, chain_started_at + journey.max_wait)
        held_out = enrollment_held_out(journey, customer_id)
        enrollment = Enrollment(
            journey=journey,
            customer_id=customer_id,
            cart=cart,
            trigger_event=event,
            trigger_occurred_at=occurred,
            chain_started_at=chain_started_at,
            held_out=held_out,
        )
        self.enrollments.append(enrollment)
        self.enrolled.setdefault((journey.pk, customer_id), []).append(occurred)
        # an exit event stored already that exits the new sends (never the trigger itself)
        exit_event = exit_event_first(
            (e for e in self.exits.get(customer_id, []) if e.pk != event.pk),
            journey=journey,
            customer_id=customer_id,
            trigger_occurred_at=occurred,
            cart_id=cart.external_id if cart is not None else None,
        )
        dedupe_key = str(customer_id)
        if journey.dedupe == Journey.Dedupe.EVERY:
            dedupe_key = f"{customer_id}:{event.pk}"
        now = timezone.now()
        settle = timedelta(seconds=settings.NUDGE_SETTLE_SECONDS)
        settled_at = event.received_at + settle if settle > timedelta(0) else None
        for step in steps:
            # the later of when the step is due by the event's time and when the event has
            # settled (nothing goes out within NUDGE_SETTLE_SECONDS of its trigger's arrival)
            intended_at = anchor + step.delay
            due_at = max(intended_at, settled_at) if settled_at is not None else intended_at
            status: str = Status.PENDING
            reason, stands_in = "", False
            if exit_event is not None:
                status, reason = Status.CANCELLED, exit_reason(exit_event)
            elif (late := now - intended_at) > journey.max_lateness:
                status, reason = Status.SKIPPED, f"stale: {humanize(late)} late at enrolment"
            elif held_out:  # never sent, and no discount code (only pending sends get one)
                status, reason, stands_in = Status.SKIPPED, held_out_reason(journey), True
            moved_from = None
            if status == Status.PENDING and (
                paced := pacing.send_due_paced(journey=journey, event=event, due_at=due_at)
            ):  # quiet hours: moved to the window's next opening, or skipped
                status, reason, due_at, moved_from = (
                    paced.status, paced.reason, paced.due_at, paced.intended_at
                )  # fmt: skip
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
                intended_at=moved_from,
                dedupe_key=dedupe_key,
                status=status,
                reason=reason,
                **codes.send_discount_fields(step, status=status),
            )
            self.sends.append(send)
            if status == Status.PENDING or stands_in:  # stands_in: services.holdout
                active_sends = self.active.setdefault(customer_id, [])
                active_sends.append(send)
                active_sends.sort(key=lambda s: s.due_at, reverse=True)
        return "enrolled"

    def save(self) -> None:
        """The plan's writes: the cancellations of stored sends first (a new send may take
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
