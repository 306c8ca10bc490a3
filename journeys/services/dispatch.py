"""Dispatch: claimed sends are locked, re-checked, rendered, handed to their channel, and their
outcomes recorded, a chunk at a time."""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from journeys import selectors
from journeys.channels import ChannelError, OutgoingMessage, channels_batch, get_channel
from journeys.channels.sms import phone_normalise, sms_segments
from journeys.durations import humanize
from journeys.models import ScheduledSend
from journeys.rendering import render
from journeys.services.exits import exit_event_first, exit_reason
from journeys.sqlnames import sql
from marketing.models import Cart, Channel, Customer, Event
from marketing.services.consent import opted_out_reason, unsubscribe_headers, unsubscribe_url
from nudge.db.rows import related_set, rows_as_instances, select_list

logger = logging.getLogger(__name__)

Status = ScheduledSend.Status


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

    The channels' batch scopes (channels_batch) enclose the transaction: a chunk's emails
    share one SMTP connection, opened at its first email, and its QUIT comes after the
    commit, with no row lock held.
    """
    outcome: dict[int, str] = {}
    with channels_batch(settings.NUDGE_CHANNELS), transaction.atomic():
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


# --- reading the chunk ----------------------------------------------------------------------

# The chunk's in-flight rows with their customers and carts, locked in id order: what
# select_for_update(of=("self",)).select_related("customer", "cart") sends, written once.
# Django compiled that queryset anew for every chunk (~1.2 ms, timed apart from the query).
_LOCKED_PARTS = ((ScheduledSend, "s"), (Customer, "c"), (Cart, "k"))
_LOCK_SQL = sql("""
SELECT {{columns}}
  FROM {send} s
  JOIN {customer} c ON c.id = s.customer_id
  LEFT JOIN {cart} k ON k.id = s.cart_id
 WHERE s.id IN ({{ids}}) AND s.status = %s
 ORDER BY s.id{{lock}}
""")


def _sends_lock(send_ids: list[int]) -> list[ScheduledSend]:
    if not send_ids:
        return []
    with connection.cursor() as cursor:
        cursor.execute(*_sends_lock_query(send_ids))
        rows = cursor.fetchall()
    sends = []
    for send, customer, cart in rows_as_instances(_LOCKED_PARTS, rows):
        related_set(send, "customer", customer)
        related_set(send, "cart", cart)
        sends.append(send)
    return sends


def _sends_lock_query(send_ids: list[int]) -> tuple[str, list[Any]]:
    sql_text = _LOCK_SQL.format(
        columns=select_list(_LOCKED_PARTS),
        ids=", ".join(["%s"] * len(send_ids)),
        lock=" FOR UPDATE OF s" if connection.features.has_select_for_update_of else "",
    )
    return sql_text, [*send_ids, Status.SENDING]


def _journeys_attach(sends: list[ScheduledSend]) -> None:
    """Give each send its journey and step from this process's copy of the journeys, after
    the version query (selectors.journeys_and_steps_by_id): a chunk's sends share a few
    journeys, and loading them again for every chunk cost a tenth of its time."""
    journeys, steps = selectors.journeys_and_steps_by_id()
    for send in sends:
        related_set(send, "journey", journeys[send.journey_id])
        related_set(send, "step", steps.get(send.step_id) if send.step_id else None)


# Candidate exit events of a chunk's customers since its earliest trigger, on the (customer,
# type, occurred_at) index; which of them exits which send is services.exits' rule.
_EXIT_EVENTS_SQL = sql("""
SELECT * FROM {event}
 WHERE customer_id IN ({{customers}}) AND type IN ({{types}}) AND occurred_at >= %s
 ORDER BY occurred_at, id
""")


def _exit_events_query(
    *, customer_ids: set[int], types: set[str], since: datetime
) -> tuple[str, list[Any]]:
    sql_text = _EXIT_EVENTS_SQL.format(
        customers=", ".join(["%s"] * len(customer_ids)), types=", ".join(["%s"] * len(types))
    )
    return sql_text, [*customer_ids, *types, connection.ops.adapt_datetimefield_value(since)]


def _exit_events_for(sends: list[ScheduledSend]) -> dict[int, Event]:
    """For each send, the earliest exit event that exits it (services.exits), by send id:
    one query for the whole chunk instead of one per send."""
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
        cart = send.cart
        exit_event = exit_event_first(
            by_customer.get(send.customer_id, ()),
            journey=send.journey,
            customer_id=send.customer_id,
            trigger_occurred_at=send.trigger_occurred_at,
            cart_id=cart.external_id if cart is not None else None,
        )
        if exit_event is not None:
            found[send.pk] = exit_event
    return found


# --- deciding and sending -------------------------------------------------------------------


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
        return Status.CANCELLED, exit_reason(exit_event)
    customer = send.customer
    if not customer.has_consent(send.channel):
        return Status.SKIPPED, opted_out_reason(customer, send.channel, send.get_channel_display())
    try:
        recipient = _recipient(send)
    except ValueError as exc:  # never sent, never retried: the number will not become valid
        return Status.SKIPPED, f"invalid phone number: {exc}"[:500]
    if not recipient:
        missing = "email address" if send.channel == Channel.EMAIL else "phone number"
        return Status.SKIPPED, f"no {missing}"
    late = now - send.due_at
    if late > journey.max_lateness:
        return Status.SKIPPED, f"stale: {humanize(late)} late"
    return None


def _recipient(send: ScheduledSend) -> str:
    """The address to send to; an SMS number in E.164 (ValueError when it is not valid)."""
    if send.channel == Channel.EMAIL:
        return send.customer.email
    phone = send.customer.phone
    return phone_normalise(phone) if phone else ""


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


def _retry_or_fail(
    send: ScheduledSend,
    now: datetime,
    problem: str,
    *,
    retryable: bool = True,
    retry_after: float | None = None,
) -> None:
    if retryable and send.attempts < settings.NUDGE_SEND_MAX_ATTEMPTS:
        # stays in flight; recovery hands it out again after the lease, or after the
        # provider's Retry-After when that is longer (claimed_at moves forward by the rest)
        send.reason = f"retrying after {problem}"[:500]
        later = (retry_after or 0) - settings.NUDGE_SEND_LEASE_SECONDS
        send.claimed_at = now + timedelta(seconds=later) if later > 0 else now
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
    headers: dict[str, str] = {}
    if send.channel == Channel.EMAIL:
        context["unsubscribe_url"] = unsubscribe_url(customer_id=send.customer_id)
        headers = unsubscribe_headers(url=context["unsubscribe_url"])
    send.recipient = _recipient(send)
    send.subject = render(send.step.subject, context) if send.step.subject else ""
    send.body = render(send.step.body, context)
    if send.channel == Channel.SMS:
        send.segments = sms_segments(send.body)
    if context["discount"]:
        send.discount_expires_at = context["discount"]["expires_at"]
    message = OutgoingMessage(
        send_id=send.pk,
        channel=send.channel,
        recipient=send.recipient,
        subject=send.subject,
        body=send.body,
        headers=headers,
        segments=send.segments,
    )
    try:
        send.provider_message_id = get_channel(send.channel).send(message)
    except ChannelError as exc:
        _retry_or_fail(
            send,
            now,
            f"provider error: {exc}",
            retryable=exc.retryable,
            retry_after=exc.retry_after,
        )
        return
    send.status = Status.SENT
    send.reason = ""
    send.sent_at = timezone.now()


# --- recording the outcomes -----------------------------------------------------------------

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
    "segments",
]

_OUTCOMES_SQL = sql("""
UPDATE {send} AS s
   SET status = v.status, reason = v.reason, recipient = v.recipient, subject = v.subject,
       body = v.body, discount_expires_at = v.discount_expires_at,
       provider_message_id = v.provider_message_id, claimed_at = v.claimed_at,
       sent_at = v.sent_at, updated_at = v.updated_at, segments = v.segments
  FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[],
              %s::text[], %s::timestamptz[], %s::varchar[], %s::timestamptz[],
              %s::timestamptz[], %s::timestamptz[], %s::smallint[])
       AS v(id, status, reason, recipient, subject, body, discount_expires_at,
            provider_message_id, claimed_at, sent_at, updated_at, segments)
 WHERE s.id = v.id
""")


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
