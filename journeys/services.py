"""Every write of the journey engine: enrolment, cancellation, claiming and dispatch."""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from journeys import selectors
from journeys.channels import ChannelError, OutgoingMessage, get_channel
from journeys.durations import humanize
from journeys.models import Enrollment, Journey, JourneyStep, ScheduledSend
from journeys.rendering import render
from journeys.specs import JourneySpec, journey_spec_parse
from marketing.models import Cart, Channel, Customer, Event

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
    payload = event.payload if isinstance(event.payload, dict) else {}
    for key, field in (("cart", "id"), ("payment", "cart_id")):
        if isinstance(payload.get(key), dict) and payload[key].get(field):
            return str(payload[key][field])
    return None


# --- events in ------------------------------------------------------------------------------


def event_apply(*, event: Event) -> None:
    """What one recorded event means for journeys: first the exits it causes, then the
    enrolments. Runs inside the event's transaction, with the customer row locked."""
    if event.customer_id is None:
        return
    exited = selectors.journeys_exited_by(event.type)
    if exited:
        scheduled_send_cancel_for_exit(event=event, journeys=exited)
    for journey in selectors.journeys_triggered_by(event.type):
        enrollment_start(journey=journey, event=event)


@transaction.atomic
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
            cart_id = _event_cart_id(event)
            if cart_id is None:
                continue
            sends = sends.filter(cart__external_id=cart_id)
        cancelled += sends.update(status=Status.CANCELLED, reason=reason, updated_at=Now())
    return cancelled


@dataclass(frozen=True)
class EnrollmentOutcome:
    enrollment: Enrollment | None
    note: str


@transaction.atomic
def enrollment_start(*, journey: Journey, event: Event) -> EnrollmentOutcome:
    """Enrol the event's customer into `journey` and write its ScheduledSend rows.

    Decisions use the events' occurred_at, not arrival order: an exit event that occurred
    after this trigger (even one that arrived first) cancels the new sends at once.
    """
    if event.customer_id is None:
        return EnrollmentOutcome(None, "event has no customer")
    customer = Customer.objects.get(pk=event.customer_id)
    occurred = event.occurred_at
    steps = list(journey.steps.order_by("position"))
    if not steps:
        return EnrollmentOutcome(None, "journey has no steps")

    chain_started_at = occurred
    if journey.dedupe != Journey.Dedupe.EVERY:
        active = list(
            ScheduledSend.objects.active()
            .filter(journey=journey, customer=customer)
            .select_related("enrollment")
        )
        if active:
            current = active[0].enrollment
            if journey.dedupe == Journey.Dedupe.FIRST:
                return EnrollmentOutcome(None, "ignored: already pending (dedupe first)")
            if occurred < current.trigger_occurred_at:
                return EnrollmentOutcome(None, "ignored: a later trigger is already pending")
            # .active() again: a worker may have sent one while we waited for its row lock
            ScheduledSend.objects.active().filter(pk__in=[s.pk for s in active]).update(
                status=Status.CANCELLED,
                reason=f"superseded by {describe_event(event)}",
                updated_at=Now(),
            )
            chain_started_at = current.chain_started_at
        elif refusal := _reentry_refusal(journey, customer, occurred):
            return EnrollmentOutcome(None, refusal)
    elif refusal := _reentry_refusal(journey, customer, occurred):
        return EnrollmentOutcome(None, refusal)

    cart_id = _event_cart_id(event)
    cart = Cart.objects.filter(external_id=cart_id).first() if cart_id else None
    anchor = occurred
    if journey.dedupe == Journey.Dedupe.LATEST and journey.max_wait is not None:
        anchor = min(occurred, chain_started_at + journey.max_wait)
    enrollment = Enrollment.objects.create(
        journey=journey,
        customer=customer,
        cart=cart,
        trigger_event=event,
        trigger_occurred_at=occurred,
        chain_started_at=chain_started_at,
    )
    exit_event = selectors.exit_event_since(
        customer_id=customer.pk,
        exit_types=journey.exit_on,
        since=occurred,
        cart_external_id=cart_id if journey.exit_scope == Journey.ExitScope.CART else None,
        exclude_event_id=event.pk,
    )
    dedupe_key = str(customer.pk)
    if journey.dedupe == Journey.Dedupe.EVERY:
        dedupe_key = f"{customer.pk}:{event.pk}"
    now = timezone.now()
    sends = []
    for step in steps:
        due_at = anchor + step.delay
        status, reason = Status.PENDING, ""
        if exit_event is not None:
            status, reason = Status.CANCELLED, f"cancelled by {describe_event(exit_event)}"
        elif now - due_at > journey.max_lateness:
            status, reason = Status.SKIPPED, f"stale: {humanize(now - due_at)} late at enrolment"
        sends.append(
            ScheduledSend(
                enrollment=enrollment,
                journey=journey,
                step=step,
                step_position=step.position,
                customer=customer,
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
        )
    ScheduledSend.objects.bulk_create(sends)
    return EnrollmentOutcome(enrollment, "enrolled")


def _reentry_refusal(journey: Journey, customer: Customer, occurred: datetime) -> str | None:
    previous = Enrollment.objects.filter(journey=journey, customer=customer)
    if journey.reentry == Journey.Reentry.ONCE and previous.exists():
        return "ignored: already enrolled once (re-entry once)"
    if journey.reentry == Journey.Reentry.PERIOD and journey.reentry_period:
        window = journey.reentry_period
        if previous.filter(
            trigger_occurred_at__gt=occurred - window, trigger_occurred_at__lt=occurred + window
        ).exists():
            return f"ignored: enrolled less than {humanize(window)} ago (re-entry per period)"
    return None


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


def scheduled_sends_claim_due(*, limit: int) -> list[int]:
    """Move up to `limit` due pending sends to `sending` and return their ids.

    FOR UPDATE SKIP LOCKED lets any number of tickers on any number of machines claim at
    once without waiting for or double-claiming each other; on SQLite (one ticker) the
    database lock does the same.
    """
    with transaction.atomic():
        ids = list(
            ScheduledSend.objects.due()
            .order_by("due_at")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        if ids:
            ScheduledSend.objects.filter(pk__in=ids).update(
                status=Status.SENDING, claimed_at=Now(), attempts=F("attempts") + 1
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


def _reason_not_to_send(send: ScheduledSend, now: datetime) -> tuple[str, str] | None:
    """(status, reason) when the send must not go out; None when it may."""
    journey = send.journey
    if not journey.active:
        return Status.CANCELLED, "cancelled: journey deactivated"
    if send.step is None:
        return Status.CANCELLED, "cancelled: step removed from the journey"
    exit_event = selectors.exit_event_since(
        customer_id=send.customer_id,
        exit_types=journey.exit_on,
        since=send.trigger_occurred_at,
        cart_external_id=(
            send.cart.external_id
            if journey.exit_scope == Journey.ExitScope.CART and send.cart
            else None
        ),
    )
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


def scheduled_send_dispatch(*, send_id: int) -> str:
    """Send one claimed message, at most once, and record the outcome on its row.

    Everything is re-checked under the row lock (still in flight? exit event since the
    trigger? opted out? too late?) and the lock is held across the channel call, so an
    exit event's cancellation (which updates this row) either commits first and is seen
    here, or waits until this send is recorded. Returns the new status ('noop' when the row
    was not ours to send: already handled by another delivery of the same task).
    """
    with transaction.atomic():
        send = (
            ScheduledSend.objects.select_for_update(of=("self",))
            .select_related("journey", "step", "customer", "cart")
            .filter(pk=send_id)
            .first()
        )
        if send is None or send.status != Status.SENDING:
            return "noop"
        now = timezone.now()
        refusal = _reason_not_to_send(send, now)
        if refusal is not None:
            send.status, send.reason = refusal
            send.save(update_fields=["status", "reason", "updated_at"])
            return send.status
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
            if exc.retryable and send.attempts < settings.NUDGE_SEND_MAX_ATTEMPTS:
                # stays in flight; recovery hands it out again after the lease
                send.reason = f"retrying after provider error: {exc}"[:500]
                send.claimed_at = now
            else:
                send.status = Status.FAILED
                send.reason = f"failed: provider error: {exc}"[:500]
            send.save()
            return send.status
        send.status = Status.SENT
        send.reason = ""
        send.sent_at = timezone.now()
        send.save()
        return send.status


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
