"""Dispatch: claimed sends are re-checked, rendered and handed to their channel with many
provider calls in flight at once, and their outcomes recorded as each call returns.

The pipeline of one task (PostgreSQL):

1. **Take** up to NUDGE_DISPATCH_CHUNK claimed sends, as window room allows: try each one's
   customer lock (services.inflight; a customer whose lock is held elsewhere is tried again
   moments later), then lock the rows, re-check everything (exit event since the trigger,
   opted out, suppressed, too late), render, and commit the refusals and the calls about to
   be made (`attempts`, `call_started_at`) in one short transaction. No row lock outlives it.
2. **Call** the providers on a thread pool, up to NUDGE_DISPATCH_INFLIGHT calls at once.
3. **Record** each returned call's outcome with one UPDATE for whatever returned together,
   then release those customers' locks.

A payment's cancellation waits on the customer lock: for the one call in flight to that
customer, never for a chunk, and not at all when none is. On SQLite (one process, one
writer) each send is taken, called and recorded in one transaction, one after another.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter, deque
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from journeys import selectors
from journeys.channels import Channel as ChannelBackend
from journeys.channels import (
    ChannelError,
    OutgoingMessage,
    channels_batch,
    get_channel,
    provider_name,
)
from journeys.channels.sms import phone_normalise, sms_segments
from journeys.codes import value_text
from journeys.durations import humanize
from journeys.models import ScheduledSend
from journeys.rendering import render, render_subject
from journeys.services import codes, inflight, pacing, providers
from journeys.services.conditions import step_condition_refusals
from journeys.services.consent import consent_refusal
from journeys.services.exits import exit_event_first, exit_reason
from journeys.sqlnames import sql
from marketing.models import Cart, Channel, Customer, Event, Suppression
from marketing.services.canonical import iso_utc
from marketing.services.consent import unsubscribe_headers, unsubscribe_url
from marketing.services.erasure import erased_addresses
from marketing.services.suppression import suppressed_reason, suppression_first
from nudge import shutdown
from nudge.db.rows import related_set, rows_as_instances, select_list

logger = logging.getLogger(__name__)

Status = ScheduledSend.Status

# how long a send whose customer is locked elsewhere waits before it is tried again, and how
# many times, before the task leaves it to the next one (still claimed)
_BUSY_RETRY_SECONDS = 0.05
_BUSY_TRIES = 40
# once a call returns, how long the others that return meanwhile are waited for, to record
# them all in one statement (a payment waiting on one of these customers waits this much more)
_GATHER_SECONDS = 0.01


def scheduled_sends_dispatch_chunks(
    *, send_ids: list[int], budget_seconds: float
) -> tuple[dict[str, int], list[int]]:
    """Dispatch a task's sends, and take no more once `budget_seconds` have passed: with a
    slow provider the rest would run into the task's timeout. Returns the outcome counts,
    and the ids not attempted (still claimed: the caller hands them to a new task)."""
    statuses, left = _Run(deadline=time.monotonic() + budget_seconds).run(send_ids)
    return dict(Counter(statuses.values())), left


def scheduled_send_dispatch(*, send_id: int) -> str:
    """Send one claimed message; see scheduled_sends_dispatch. Returns its new status."""
    return scheduled_sends_dispatch(send_ids=[send_id]).get(send_id, "noop")


def scheduled_sends_dispatch(*, send_ids: list[int]) -> dict[int, str]:
    """Send claimed messages, each at most once, and record the outcomes (the module's
    pipeline, with no time budget). Returns the new status of each id; ids not ours to send
    (no longer in flight: cancelled, or handled by another delivery of the same task) are
    left out. A send still waiting for a retry stays `sending` (see _retry_or_fail)."""
    statuses, _ = _Run(deadline=None).run(send_ids)
    return statuses


@dataclass
class _Call:
    """One provider call: made on the pool's thread, recorded on the dispatching one."""

    send: ScheduledSend
    channel: ChannelBackend
    message: OutgoingMessage
    started_at: datetime
    # when the provider's rate limit lets the call start (services.providers), if later
    not_before: datetime | None = None
    provider_id: str = ""
    error: ChannelError | None = None
    unexpected: Exception | None = None
    seconds: float = 0.0

    def run(self) -> _Call:
        if self.not_before is not None:
            wait = (self.not_before - timezone.now()).total_seconds()
            if wait > 0:
                time.sleep(wait)
        started = time.perf_counter()
        try:
            self.provider_id = self.channel.send(self.message)
        except ChannelError as exc:
            self.error = exc
        except Exception as exc:  # a channel's bug must not lose the outcome of the others
            logger.exception("provider call of send %s failed", self.send.pk)
            self.unexpected = exc
        self.seconds = time.perf_counter() - started
        return self


_pool_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(size: int) -> ThreadPoolExecutor:
    """This process's call threads (made on first use: after django-q2 forks the worker)."""
    with _pool_lock:
        pool = _pools.get(size)
        if pool is None:
            pool = _pools[size] = ThreadPoolExecutor(size, thread_name_prefix="nudge-call")
        return pool


@dataclass
class _Run:
    deadline: float | None
    statuses: dict[int, str] = field(default_factory=dict)
    # customer locks this session holds, per customer (one per send being called)
    held: Counter[int] = field(default_factory=Counter)

    def run(self, send_ids: list[int]) -> tuple[dict[int, str], list[int]]:
        with channels_batch(settings.NUDGE_CHANNELS):
            if connection.vendor != "postgresql":
                return self._run_serial(send_ids)
            try:
                return self._run_pipelined(send_ids)
            finally:
                self._release(list(self.held.elements()))

    def _out_of_time(self) -> bool:
        """A task's budget is spent, or its worker is stopping (the rest go to a new task)."""
        return self.deadline is not None and (
            time.monotonic() > self.deadline or shutdown.requested()
        )

    def _run_serial(self, send_ids: list[int]) -> tuple[dict[int, str], list[int]]:
        for n, send_id in enumerate(send_ids):
            if n and self._out_of_time():
                return self.statuses, send_ids[n:]
            with transaction.atomic():  # the database's write lock spans the call
                calls, _ = self._take([send_id], lock_customers=False)
                for call in calls:
                    call.run()
                self._record(calls)
        return self.statuses, []

    def _run_pipelined(self, send_ids: list[int]) -> tuple[dict[int, str], list[int]]:
        window = max(1, settings.NUDGE_DISPATCH_INFLIGHT)
        chunk = max(1, min(settings.NUDGE_DISPATCH_CHUNK, window))
        refill_at = max(1, chunk // 4)
        pool = _pool(window)
        queue = deque((send_id, 0) for send_id in send_ids)
        busy: list[tuple[float, int, int]] = []  # (when to try again, id, tries)
        calls: dict[Future[_Call], _Call] = {}
        given_up: list[int] = []
        took = False
        while queue or busy or calls:
            now_mono = time.monotonic()
            for entry in [b for b in busy if b[0] <= now_mono]:
                busy.remove(entry)
                queue.append((entry[1], entry[2]))
            room = window - len(calls)
            may_take = not took or not self._out_of_time()  # the first take in any case
            if queue and may_take and (room >= refill_at or not calls):
                took = True
                taking = [queue.popleft() for _ in range(min(room, chunk, len(queue)))]
                tries = dict(taking)
                taken, locked_elsewhere = self._take(list(tries), lock_customers=True)
                for call in taken:
                    calls[pool.submit(call.run)] = call
                for send_id in locked_elsewhere:
                    if tries[send_id] + 1 < _BUSY_TRIES:
                        retry_at = now_mono + _BUSY_RETRY_SECONDS
                        busy.append((retry_at, send_id, tries[send_id] + 1))
                    else:
                        given_up.append(send_id)  # left to the next task, still claimed
                continue
            if not calls:
                if busy and not queue:
                    time.sleep(max(0.0, min(b[0] for b in busy) - time.monotonic()))
                    continue
                break  # out of time: what is queued goes to the next task
            timeout = _BUSY_RETRY_SECONDS if busy or queue else None
            done, _ = wait(calls, timeout=timeout, return_when=FIRST_COMPLETED)
            if done and len(done) < len(calls):
                done, _ = wait(calls, timeout=_GATHER_SECONDS, return_when=ALL_COMPLETED)
            returned = [calls.pop(future) for future in done]
            if returned:
                self._record(returned, release=True)
        left = [send_id for send_id, _ in queue] + [send_id for _, send_id, _ in busy]
        left += given_up
        return self.statuses, left

    def _release(self, customer_ids: list[int]) -> None:
        if not customer_ids:
            return
        inflight.customers_unlock(customer_ids)
        self._forget(customer_ids)

    def _forget(self, customer_ids: list[int]) -> None:
        """Count these customers' locks as released."""
        self.held.subtract(customer_ids)
        self.held = +self.held

    def _take(self, send_ids: list[int], *, lock_customers: bool) -> tuple[list[_Call], list[int]]:
        """Lock, re-check and render claimed sends; commit their refusals and the calls about
        to be made. Returns the calls, and the ids whose customer is locked elsewhere."""
        locked_elsewhere: list[int] = []
        locked: Counter[int] = Counter()
        starts: dict[int, datetime] = {}
        if lock_customers:
            send_ids, locked_elsewhere, locked, channels = self._customers_lock(send_ids)
            send_ids, starts = self._gates_pass(send_ids, channels)
        with transaction.atomic():
            sends = _sends_lock(send_ids)
            _journeys_attach(sends)
            exits = _exit_events_for(sends)
            suppressions = _suppressions_for(sends)
            conditions = step_condition_refusals(sends)
            # pool codes for the sends that need one, given back below if they do not go out
            pooled = codes.pool_codes_take(sends=sends)
            now = timezone.now()
            paced = pacing.DispatchPacing.load(sends, now)
            calls: list[_Call] = []
            for send in paced.order(sends):  # by priority: see services.pacing
                try:
                    call = _call_prepare(
                        send,
                        now,
                        exits.get(send.pk),
                        suppressions.get(send.pk),
                        paced,
                        condition_refusal=conditions.get(send.pk),
                        no_code=pooled.missing.get(send.pk, ""),
                    )
                except Exception as exc:
                    # One bad row must not hold up the others: count it as an attempt
                    logger.exception("dispatch of send %s failed", send.pk)
                    send.attempts += 1
                    _retry_or_fail(send, now, f"unexpected error: {exc!r}")
                    call = None
                if call is not None:
                    call.not_before = starts.get(send.pk)
                    calls.append(call)
                else:
                    self.statuses[send.pk] = send.status
                send.updated_at = now
            codes.pool_codes_give_back(sends=sends, take=pooled)
            _outcomes_save(sends)
        # made in id order, as the gates gave their start slots (a call waits in its pool
        # thread for its slot: one submitted out of order would hold up the earlier ones)
        calls.sort(key=lambda call: call.send.pk)
        if lock_customers:
            # the customers of sends that were refused, or were no longer in flight
            calling = Counter(call.send.customer_id for call in calls)
            self._release(list((locked - calling).elements()))
        return calls, locked_elsewhere

    def _customers_lock(
        self, send_ids: list[int]
    ) -> tuple[list[int], list[int], Counter[int], dict[int, tuple[str, int]]]:
        """Try the customer lock of each still-claimed send, in one statement; (ids locked,
        ids whose customer is locked elsewhere, the locks taken by customer, the channel and
        customer of each id locked). Ids no longer in flight are left out."""
        with connection.cursor() as cursor:
            cursor.execute(_CUSTOMERS_TRY_LOCK_SQL, [send_ids, Status.SENDING])
            rows = cursor.fetchall()
        locked, elsewhere, customers = [], [], Counter[int]()
        channels: dict[int, tuple[str, int]] = {}
        for send_id, customer_id, channel, ok in rows:
            if ok:
                locked.append(send_id)
                customers[customer_id] += 1
                channels[send_id] = (channel, customer_id)
            else:
                elsewhere.append(send_id)
        self.held.update(customers)
        return locked, elsewhere, customers, channels

    def _gates_pass(
        self, send_ids: list[int], channels: dict[int, tuple[str, int]]
    ) -> tuple[list[int], dict[int, datetime]]:
        """Ask each provider's gates (services.providers) for its sends: returns the ids let
        through with the moment each may start. The others wait in flight, costing no attempt,
        until the moment their gate gave (their customers' locks released)."""
        by_provider: dict[str, list[int]] = {}
        for send_id in send_ids:
            try:
                name = provider_name(get_channel(channels[send_id][0]))
            except ChannelError:
                name = ""  # a misconfigured channel: its call fails, with the reason
            by_provider.setdefault(name, []).append(send_id)
        passed: list[int] = []
        starts: dict[int, datetime] = {}
        waiting: list[tuple[int, datetime, str]] = []
        for name, ids in by_provider.items():
            if not name:
                passed += ids
                continue
            admission = providers.calls_admit(provider=name, count=len(ids))
            granted = ids[: len(admission.starts)]
            passed += granted
            starts.update(zip(granted, admission.starts, strict=True))
            rest = zip(ids[len(granted) :], admission.waits, strict=True)
            waiting += [(send_id, when, admission.reason) for send_id, when in rest]
        if waiting:
            _sends_wait(waiting)
            self._release([channels[send_id][1] for send_id, _, _ in waiting])
        return sorted(passed), starts

    def _record(self, calls: list[_Call], *, release: bool = False) -> None:
        """Save the outcomes of returned calls; with `release`, unlock their customers in the
        same statement (one round trip and one commit for both)."""
        if not calls:
            return
        now = timezone.now()
        for call in calls:
            _call_outcome(call, now)
            self.statuses[call.send.pk] = call.send.status
        customers = [call.send.customer_id for call in calls] if release else None
        _outcomes_save([call.send for call in calls], unlock=customers)
        if customers:
            self._forget(customers)
        _gates_tell(calls)


# how long a 429 without Retry-After holds every call to its provider
_THROTTLED_SECONDS = 1.0


def _gates_tell(calls: list[_Call]) -> None:
    """Tell each provider's gates how its calls went: successes, transient failures (the
    earliest start among them), and how long a 429 asked every caller to wait."""
    by_provider: dict[str, list[_Call]] = {}
    for call in calls:
        by_provider.setdefault(call.send.provider, []).append(call)
    for name, returned in by_provider.items():
        failed = [
            c
            for c in returned
            if c.unexpected is not None or (c.error is not None and c.error.retryable)
        ]
        ok = sum(1 for c in returned if c.error is None and c.unexpected is None)
        retry_after = max(
            (
                c.error.retry_after or _THROTTLED_SECONDS
                for c in failed
                if c.error is not None and c.error.throttled
            ),
            default=0.0,
        )
        providers.outcomes_record(
            provider=name,
            ok=ok,
            failed=len(failed),
            started_first=min((c.started_at for c in failed), default=None),
            retry_after=retry_after or None,
            error=str(failed[-1].error or failed[-1].unexpected) if failed else "",
        )


# the lock call runs once per row returned (the select list is computed after the WHERE)
_CUSTOMERS_TRY_LOCK_SQL = sql("""
SELECT id, customer_id, channel, {{lock}}
  FROM {send} WHERE id = ANY(%s::bigint[]) AND status = %s ORDER BY id
""").format(lock=inflight.lock_call("pg_try_advisory_lock", "customer_id"))


# sends a provider's gate holds back: still in flight, their lease moved to end when they may
# be tried again (the timer hands them out then), no attempt spent
_WAIT_SQL = sql("""
UPDATE {send} AS s
   SET claimed_at = v.until - %s * interval '1 second', reason = v.reason, updated_at = now()
  FROM unnest(%s::bigint[], %s::timestamptz[], %s::varchar[]) AS v(id, until, reason)
 WHERE s.id = v.id AND s.status = {sending}
""")


def _sends_wait(waiting: list[tuple[int, datetime, str]]) -> None:
    ids = [send_id for send_id, _, _ in waiting]
    untils = [until for _, until, _ in waiting]
    reasons = [f"{reason} (next try at {iso_utc(until)})"[:500] for _, until, reason in waiting]
    with connection.cursor() as cursor:
        cursor.execute(_WAIT_SQL, [settings.NUDGE_SEND_LEASE_SECONDS, ids, untils, reasons])


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


def _suppressions_for(sends: list[ScheduledSend]) -> dict[int, Suppression]:
    """For each send whose address is on the suppression list (a hard bounce, a complaint,
    an unsubscribe, a STOP, an operator's entry, an erasure) or whose customer's external id
    was erased, the suppression it gives as its reason, by send id (the erasure's first,
    marketing.services.suppression.REASON_PRECEDENCE): one query for the whole chunk, none
    when it is empty. The list holds keyed hashes, so the recipients are hashed here."""
    addresses: dict[int, list[tuple[str, str]]] = {}
    for send in sends:
        # the stored address, not _recipient(): a phone is stored E.164 (Customer.phone's
        # validator), and parsing it again with phonenumbers here would double that cost
        customer = send.customer
        recipient = customer.email if send.channel == Channel.EMAIL else customer.phone
        hashed = erased_addresses(
            channel=send.channel, external_id=customer.external_id, address=recipient
        )
        addresses[send.pk] = [(send.channel, address) for address in hashed]
    if not addresses:
        return {}
    pairs = {pair for candidates in addresses.values() for pair in candidates}
    where = Q()
    for channel in {c for c, _ in pairs}:
        where |= Q(channel=channel, address__in=[a for c, a in pairs if c == channel])
    found: dict[tuple[str, str], list[Suppression]] = {}
    for suppression in Suppression.objects.filter(where):
        found.setdefault((suppression.channel, suppression.address), []).append(suppression)
    chosen = {}
    for pk, candidates in addresses.items():
        rows = [row for pair in candidates for row in found.get(pair, [])]
        if rows:
            chosen[pk] = suppression_first(rows)
    return chosen


# --- deciding and sending -------------------------------------------------------------------


def _reason_not_to_send(
    send: ScheduledSend,
    now: datetime,
    exit_event: Event | None,
    suppression: Suppression | None = None,
    *,
    condition_refusal: str | None = None,
) -> tuple[str, str] | None:
    """(status, reason) when the send must not go out; None when it may. `exit_event` is the
    earliest exit event since the trigger (see _exit_events_for), `suppression` the
    address's (see _suppressions_for), `condition_refusal` the reason its step's condition
    is false (services.conditions.step_condition_refusals)."""
    journey = send.journey
    if not journey.active:
        return Status.CANCELLED, "cancelled: journey deactivated"
    if send.step is None:
        return Status.CANCELLED, "cancelled: step removed from the journey"
    if exit_event is not None:
        return Status.CANCELLED, exit_reason(exit_event)
    no_consent = consent_refusal(
        send.customer,
        send.channel,
        transactional=journey.transactional,
        channel_label=send.get_channel_display(),
    )
    if no_consent is not None:
        return Status.SKIPPED, no_consent
    if condition_refusal is not None:
        return Status.SKIPPED, condition_refusal
    try:
        recipient = _recipient(send)
    except ValueError as exc:  # never sent, never retried: the number will not become valid
        return Status.SKIPPED, f"invalid phone number: {exc}"[:500]
    if not recipient:
        missing = "email address" if send.channel == Channel.EMAIL else "phone number"
        return Status.SKIPPED, f"no {missing}"
    if suppression is not None:
        return Status.SKIPPED, suppressed_reason(suppression)[:500]
    late = now - send.intended  # from when it was meant to go out, however pacing moved it
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
        amount, percent = send.discount_amount, send.discount_percent
        discount = {
            "code": send.discount_code,
            # the value, as words ("10%", "10.00 EUR") and as parts (empty when not its kind)
            "value": value_text(percent=percent, amount=amount, currency=send.discount_currency),
            "kind": "amount" if amount is not None else "percent",
            "percent": percent if percent is not None else "",
            "percent_off": percent if percent is not None else "",  # `percent`'s first name
            "amount": f"{amount:.2f}" if amount is not None else "",
            "currency": send.discount_currency,
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
    """After a failed attempt: fail at once when the error is permanent, the attempts are
    spent, or the next try would come later than the step's max lateness; otherwise stay in
    flight until the next try, after an exponential backoff with full jitter (or the
    provider's Retry-After, when longer). The timer hands it out again then: claimed_at
    moves so that its lease ends at that moment."""
    if not retryable:
        send.status, send.reason = Status.FAILED, f"failed: {problem}"[:500]
        return
    if send.attempts >= settings.NUDGE_SEND_MAX_ATTEMPTS:
        send.status = Status.FAILED
        send.reason = f"failed after {send.attempts} attempts: {problem}"[:500]
        return
    ceiling = min(
        settings.NUDGE_SEND_RETRY_MAX_SECONDS,
        settings.NUDGE_SEND_RETRY_BASE_SECONDS * 2 ** max(0, send.attempts - 1),
    )
    delay = max(random.uniform(0, ceiling), retry_after or 0.0)  # jitter, not a secret
    retry_at = now + timedelta(seconds=delay)
    if retry_at - send.intended > send.journey.max_lateness:
        late = "; a retry would be later than the step's max lateness"
        send.status, send.reason = Status.FAILED, f"failed: {problem[: 500 - len(late) - 8]}{late}"
        return
    next_try = f" (next try at {iso_utc(retry_at)})"
    send.reason = f"retrying after {problem[: 500 - len(next_try) - 15]}{next_try}"
    send.claimed_at = retry_at - timedelta(seconds=settings.NUDGE_SEND_LEASE_SECONDS)


def _call_prepare(
    send: ScheduledSend,
    now: datetime,
    exit_event: Event | None,
    suppression: Suppression | None = None,
    paced: pacing.DispatchPacing | None = None,
    *,
    condition_refusal: str | None = None,
    no_code: str = "",
) -> _Call | None:
    """Decide and render one locked row: None when it must not go out (its outcome fields
    are set; a send pacing defers is pending again, due later), else the call to make (and
    the row marked as called: attempts, call_started_at, provider). `no_code`: why the send
    has no discount code when its step takes them from a pool (services.codes)."""
    refusal = _reason_not_to_send(
        send, now, exit_event, suppression, condition_refusal=condition_refusal
    )
    if refusal is None and paced is not None:
        refusal = paced.send_check(send, now)  # quiet hours, frequency caps, priority
    if refusal is None and no_code:
        refusal = Status.SKIPPED, no_code
    if refusal is not None:
        send.status, send.reason = refusal
        return None
    assert send.step is not None  # _reason_not_to_send refuses a removed step
    context = _message_context(send, now)
    headers: dict[str, str] = {}
    if send.channel == Channel.EMAIL:
        context["unsubscribe_url"] = unsubscribe_url(customer_id=send.customer_id)
        headers = unsubscribe_headers(url=context["unsubscribe_url"])
    send.recipient = _recipient(send)
    send.subject = render_subject(send.step.subject, context) if send.step.subject else ""
    send.body = render(send.step.body, context)
    if send.channel == Channel.SMS:
        send.segments = sms_segments(send.body)
    if context["discount"]:
        send.discount_expires_at = context["discount"]["expires_at"]
    send.attempts += 1
    try:
        channel = get_channel(send.channel)
    except ChannelError as exc:
        _retry_or_fail(send, now, f"provider error: {exc}", retryable=exc.retryable)
        return None
    send.call_started_at = now
    send.provider = provider_name(channel)
    message = OutgoingMessage(
        send_id=send.pk,
        channel=send.channel,
        recipient=send.recipient,
        subject=send.subject,
        body=send.body,
        headers=headers,
        segments=send.segments,
    )
    return _Call(send=send, channel=channel, message=message, started_at=now)


def _call_outcome(call: _Call, now: datetime) -> None:
    """Set the outcome fields of a returned call's send (saved by the caller)."""
    send = call.send
    send.call_started_at = None
    send.updated_at = now
    if call.error is None and call.unexpected is None:
        outcome = "sent"
        send.status, send.reason = Status.SENT, ""
        send.provider_message_id = call.provider_id
        send.sent_at = now
    elif call.error is not None:
        error = call.error
        send.last_error = str(error)[:500]
        outcome = f"{'transient' if error.retryable else 'permanent'} error: {error}"
        _retry_or_fail(
            send,
            now,
            f"provider error: {error}",
            retryable=error.retryable,
            retry_after=error.retry_after,
        )
    else:
        send.last_error = f"unexpected error: {call.unexpected!r}"[:500]
        outcome = send.last_error
        _retry_or_fail(send, now, send.last_error)
    entry = {"at": iso_utc(call.started_at), "ms": round(call.seconds * 1000), "outcome": outcome}
    send.attempt_log = [*send.attempt_log, entry]


# --- recording the outcomes -----------------------------------------------------------------

_DISPATCH_FIELDS = [
    "status",
    "reason",
    "due_at",
    "intended_at",
    "recipient",
    "subject",
    "body",
    "discount_expires_at",
    "provider_message_id",
    "claimed_at",
    "sent_at",
    "updated_at",
    "segments",
    "attempts",
    "call_started_at",
    "provider",
    "last_error",
    "attempt_log",
]

_OUTCOMES_SQL = sql("""
UPDATE {send} AS s
   SET status = v.status, reason = v.reason, due_at = v.due_at, intended_at = v.intended_at,
       recipient = v.recipient, subject = v.subject,
       body = v.body, discount_expires_at = v.discount_expires_at,
       provider_message_id = v.provider_message_id, claimed_at = v.claimed_at,
       sent_at = v.sent_at, updated_at = v.updated_at, segments = v.segments,
       attempts = v.attempts, call_started_at = v.call_started_at, provider = v.provider,
       last_error = v.last_error, attempt_log = v.attempt_log::jsonb
  FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[], %s::timestamptz[],
              %s::timestamptz[], %s::varchar[], %s::varchar[], %s::text[],
              %s::timestamptz[], %s::varchar[], %s::timestamptz[],
              %s::timestamptz[], %s::timestamptz[], %s::smallint[], %s::smallint[],
              %s::timestamptz[], %s::varchar[], %s::varchar[], %s::text[])
       AS v(id, status, reason, due_at, intended_at, recipient, subject, body,
            discount_expires_at,
            provider_message_id, claimed_at, sent_at, updated_at, segments, attempts,
            call_started_at, provider, last_error, attempt_log)
 WHERE s.id = v.id
""")


_OUTCOMES_UNLOCK_SQL = f"{_OUTCOMES_SQL};\n{inflight.UNLOCK_SQL}"


def _outcomes_save(sends: list[ScheduledSend], *, unlock: list[int] | None = None) -> None:
    """One UPDATE for the outcomes. On PostgreSQL it joins the rows to arrays of the new
    values (Django's bulk_update builds a CASE per field and row, and spent more time in
    Python than the whole rest of the dispatch). `unlock`: customer locks to release in the
    same round trip (PostgreSQL), once the UPDATE is done."""
    if not sends:
        return
    if connection.vendor != "postgresql":
        ScheduledSend.objects.bulk_update(sends, _DISPATCH_FIELDS)
        return
    columns: list[Any] = [[s.pk for s in sends]]
    columns += [[getattr(s, name) for s in sends] for name in _DISPATCH_FIELDS[:-1]]
    columns.append([json.dumps(s.attempt_log) for s in sends])
    with connection.cursor() as cursor:
        if unlock:
            cursor.execute(_OUTCOMES_UNLOCK_SQL, [*columns, unlock])
        else:
            cursor.execute(_OUTCOMES_SQL, columns)
