"""The sweeper: the work the ticker should have handed out and did not, found and handed out.

The ticker claims what is due every NUDGE_TICK_SECONDS. When no ticker runs (killed, its
machine gone, never started), nothing else would: pending sends pass their due time unsent,
sends whose worker was lost stay `sending`, stored events stay unapplied. `queues_reconcile`
looks for exactly that, by the database's clock, with NUDGE_RECONCILE_AFTER_SECONDS of grace
past the moment a live ticker would have acted:

- **sends overdue**: pending, due longer ago than the grace;
- **sends stuck**: in flight (`sending`) longer than their lease (NUDGE_SEND_LEASE_SECONDS)
  plus the grace: a lost worker's, or a retry whose wait is over;
- **events unapplied**: never claimed and received longer ago than the grace, or claimed and
  past their lease (NUDGE_APPLY_LEASE_SECONDS) plus the grace;
- **events given up**: failed NUDGE_SEND_MAX_ATTEMPTS times (counted only: an operator's).

For each of the first three it finds, it does what the ticker's tick does, with the same
services and enqueue functions: `scheduled_sends_recover`, `scheduled_sends_claim_due`,
`events_claim_unapplied` (while the messaging queue has room, as the ticker), batch by batch
until none is left or its time budget is spent. A live ticker leaves nothing past the grace,
so the sweeper then only counts. When both act at once they never hand a row out twice: each
claim is one transaction that locks its rows FOR UPDATE SKIP LOCKED, skips those another holds,
and re-checks the status or lease of a row another has just claimed (PostgreSQL re-evaluates
the condition on the newest row version once it has the lock), so a row goes to whichever
claim locks it first (tests/journeys/test_reconcile.py runs them against each other).

It runs as a django-q2 schedule on the messaging cluster every NUDGE_RECONCILE_MINUTES
(`queues_reconcile_schedule_ensure`, on every `migrate`) and on demand as
`manage.py nudge_reconcile [--dry-run]`. It lives beside the ticker, not in journeys.services:
like the ticker it enqueues, and the ticker imports the services.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Count, Min, Q
from django.utils import timezone
from django_q.models import Schedule

from journeys import services, ticker
from journeys.models import ScheduledSend
from marketing import services as marketing_services
from marketing.models import Event
from nudge import conf

logger = logging.getLogger(__name__)

RECONCILE_TASK = "journeys.tasks.queues_reconcile"
SCHEDULE_NAME = "nudge: reconcile queues"
# a PostgreSQL advisory lock (the one-bigint key space, apart from the customers' int pairs of
# journeys.services.inflight): concurrent `migrate` runs write the schedule one at a time
_SCHEDULE_LOCK = 0x4E55_5245_434F  # "NURECO"

Status = ScheduledSend.Status


@dataclass
class Finding:
    """One kind of neglected work: how many rows, how long the oldest has been neglected (in
    whole seconds past when the ticker should have handed it out), and how many were handed
    out (claimed and enqueued) by this run."""

    found: int = 0
    oldest_seconds: int | None = None
    handed_out: int = 0


@dataclass
class Reconciliation:
    dry_run: bool
    sends_overdue: Finding = field(default_factory=Finding)
    sends_stuck: Finding = field(default_factory=Finding)
    events_unapplied: Finding = field(default_factory=Finding)
    events_given_up: int = 0
    # the messaging queue was full: events were left in their table, as the ticker leaves them
    events_held_back: bool = False
    out_of_time: bool = False

    @property
    def neglected(self) -> bool:
        """Something was found that a live ticker would have handed out already."""
        return bool(
            self.sends_overdue.found or self.sends_stuck.found or self.events_unapplied.found
        )

    def counts(self) -> dict[str, int]:
        """Flat counts (the task's result)."""
        counts: dict[str, int] = {}
        for name in ("sends_overdue", "sends_stuck", "events_unapplied"):
            finding: Finding = getattr(self, name)
            counts[f"{name}_found"] = finding.found
            counts[f"{name}_handed_out"] = finding.handed_out
        counts["events_given_up"] = self.events_given_up
        return counts

    def lines(self) -> list[str]:
        """The report of `manage.py nudge_reconcile`, one line per kind (README)."""
        verb = "would hand out" if self.dry_run else "handed out"
        lines = []
        for label, finding, past in (
            ("sends overdue", self.sends_overdue, "past due"),
            ("sends stuck", self.sends_stuck, "past lease"),
            ("events unapplied", self.events_unapplied, "past due"),
        ):
            oldest = (
                ""
                if finding.oldest_seconds is None
                else f", oldest {finding.oldest_seconds}s {past}"
            )
            done = finding.found if self.dry_run else finding.handed_out
            lines.append(f"{label}: {finding.found}{oldest}; {verb} {done}")
        if self.events_held_back:
            lines.append("events held back: the messaging queue is full (the workers are behind)")
        lines.append(
            f"events given up: {self.events_given_up} "
            f"(failed {settings.NUDGE_SEND_MAX_ATTEMPTS} times; not retried)"
        )
        if self.out_of_time:
            lines.append("out of time: the rest is left to the next run")
        if self.dry_run:
            lines.append("dry run: nothing changed")
        return lines


def queues_reconcile(
    *,
    dry_run: bool = False,
    after: timedelta | None = None,
    budget_seconds: float | None = None,
) -> Reconciliation:
    """Find the sends and events the ticker left behind (see the module's docstring) and,
    unless `dry_run`, hand them out. `after` is the grace (NUDGE_RECONCILE_AFTER_SECONDS);
    `budget_seconds` bounds the handing out (by default half the messaging task timeout, as
    the sweeper runs as a task); the finding is always complete."""
    grace = (
        after if after is not None else timedelta(seconds=settings.NUDGE_RECONCILE_AFTER_SECONDS)
    )
    budget = budget_seconds if budget_seconds is not None else settings.Q_MESSAGING_TIMEOUT / 2
    send_lease = timedelta(seconds=settings.NUDGE_SEND_LEASE_SECONDS)
    apply_lease = timedelta(seconds=settings.NUDGE_APPLY_LEASE_SECONDS)
    result = Reconciliation(dry_run=dry_run)
    now = _database_now()
    result.sends_overdue = _sends_overdue(now, grace)
    result.sends_stuck = _sends_stuck(now, grace, send_lease)
    result.events_unapplied, result.events_given_up = _events_unapplied(now, grace, apply_lease)
    if dry_run:
        result.events_held_back = bool(result.events_unapplied.found) and _queue_full()
        return result

    # The claims compare leases with this process's clock (timezone.now() - lease); the
    # sweeper runs on any worker, whose clock may be off. Shifting the lease by this clock's
    # offset from the database's makes the cutoff the database's now - lease.
    offset = timezone.now() - now
    deadline = time.monotonic() + budget
    batch = settings.NUDGE_CLAIM_BATCH

    def out_of_time() -> bool:
        result.out_of_time = time.monotonic() >= deadline
        return result.out_of_time

    if result.events_unapplied.found:
        while not out_of_time():
            if _queue_full():
                result.events_held_back = True
                break
            events = marketing_services.events_claim_unapplied(
                limit=batch, lease=apply_lease + offset
            )
            if events:
                ticker.enqueue_apply(events)
                result.events_unapplied.handed_out += len(events)
            if len(events) < batch:
                break
    if result.sends_stuck.found:
        while not out_of_time():
            recovered = services.scheduled_sends_recover(lease=send_lease + offset, limit=batch)
            if recovered:
                ticker.enqueue_dispatch(recovered)
                result.sends_stuck.handed_out += len(recovered)
            if len(recovered) < batch:
                break
    if result.sends_overdue.found:
        while not out_of_time():
            claimed = services.scheduled_sends_claim_due(limit=batch)
            if claimed:
                ticker.enqueue_dispatch(claimed)
                result.sends_overdue.handed_out += len(claimed)
            if len(claimed) < batch:
                break
    if result.neglected:
        logger.warning(
            "reconcile: the ticker left work behind (is one running?): %s",
            "; ".join(result.lines()),
        )
    return result


def _queue_full() -> bool:
    """The ticker's test: the workers are behind, events wait in their table meanwhile."""
    return ticker.messaging_queue_size() >= settings.NUDGE_APPLY_QUEUE_LIMIT


def _database_now() -> datetime:
    """The database's clock (every machine's due times are by it); this process's on SQLite
    (one machine)."""
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.vendor != "postgresql":
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        (now,) = cursor.fetchone()
    return now


def _age(now: datetime, moment: datetime | None) -> int | None:
    return None if moment is None else max(0, int((now - moment).total_seconds()))


def _sends_overdue(now: datetime, grace: timedelta) -> Finding:
    """Pending and due before now - grace (on the partial index send_pending_due)."""
    row = (
        ScheduledSend.objects.pending()
        .filter(due_at__lt=now - grace)
        .aggregate(found=Count("pk"), oldest=Min("due_at"))
    )
    return Finding(found=row["found"], oldest_seconds=_age(now, row["oldest"]))


def _sends_stuck(now: datetime, grace: timedelta, lease: timedelta) -> Finding:
    """In flight since before now - lease - grace (on the partial index send_in_flight)."""
    row = ScheduledSend.objects.in_flight_since(now - lease - grace).aggregate(
        found=Count("pk"), oldest=Min("claimed_at")
    )
    oldest = None if row["oldest"] is None else row["oldest"] + lease
    return Finding(found=row["found"], oldest_seconds=_age(now, oldest))


def _events_unapplied(now: datetime, grace: timedelta, lease: timedelta) -> tuple[Finding, int]:
    """Unapplied events (on the partial index event_unapplied) never claimed since now -
    grace, or claimed before now - lease - grace; and those given up."""
    unclaimed = Q(apply_claimed_at__isnull=True, received_at__lt=now - grace)
    expired = Q(apply_claimed_at__lt=now - lease - grace)
    retryable = Q(apply_attempts__lt=settings.NUDGE_SEND_MAX_ATTEMPTS)
    row = Event.objects.filter(applied_at__isnull=True).aggregate(
        found=Count("pk", filter=retryable & (unclaimed | expired)),
        oldest_unclaimed=Min("received_at", filter=retryable & unclaimed),
        oldest_expired=Min("apply_claimed_at", filter=retryable & expired),
        given_up=Count("pk", filter=~retryable),
    )
    moments = [
        row["oldest_unclaimed"],
        None if row["oldest_expired"] is None else row["oldest_expired"] + lease,
    ]
    oldest = min((m for m in moments if m is not None), default=None)
    return Finding(found=row["found"], oldest_seconds=_age(now, oldest)), row["given_up"]


def queues_reconcile_schedule_ensure(*, using: str = DEFAULT_DB_ALIAS) -> Schedule | None:
    """Make the sweeper's django-q2 schedule exist exactly once, as the settings say: every
    NUDGE_RECONCILE_MINUTES on the messaging cluster (whose scheduler runs it; django-q2 runs
    a schedule whose cluster is null only on a cluster named like Q_CLUSTER's `name`), or
    none when NUDGE_RECONCILE_MINUTES is 0. Returns the schedule.

    Called after every `migrate` (journeys.receivers), from any number of machines at once:
    the row is found by its fixed name under a transaction-level advisory lock (PostgreSQL;
    SQLite has one writer), so two deploys never both insert it, and copies left by hand are
    deleted. Its next run is left alone; django-q2's scheduler locks the row when it runs it,
    so several messaging clusters start one task per period between them.
    """
    minutes = settings.NUDGE_RECONCILE_MINUTES
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEDULE_LOCK])
        schedules = Schedule.objects.using(using).filter(name=SCHEDULE_NAME).order_by("pk")
        if not minutes:
            schedules.delete()
            return None
        keep = schedules.first()
        if keep is not None:
            schedules.exclude(pk=keep.pk).delete()
        schedule, _ = Schedule.objects.using(using).update_or_create(
            name=SCHEDULE_NAME,
            defaults={
                "func": RECONCILE_TASK,
                "schedule_type": Schedule.MINUTES,
                "minutes": minutes,
                "repeats": -1,
                "cluster": conf.messaging_cluster(),
                "args": None,
                "kwargs": None,
                "hook": None,
            },
        )
    return schedule
