"""Retention: event payloads and sent messages are kept NUDGE_RETENTION_EVENT_PAYLOAD_DAYS and
NUDGE_RETENTION_MESSAGE_BODY_DAYS (0: for ever), then purged; the rows stay, so every count
(sends per journey, status, channel and day; events per type and day; revenue from payments)
is kept. `retention_purge` (manage.py nudge_purge, and a daily django-q2 schedule).

- An event's payload is cut down to its skeleton (marketing.services.retention) once it was
  received before the cut-off and applied, and its customer has no send still to decide
  (pending or in flight: dispatch may read its exit events).
- A send's recipient, rendered subject and body are emptied once it is decided (sent,
  failed, skipped, cancelled) and has not changed since the cut-off. A pending send has
  nothing rendered yet, and one in flight renders again at each attempt.

Both walk their table in primary-key order, NUDGE_RETENTION_BATCH rows at a time, one
statement and one short transaction per batch, and stop at the first batch that reaches rows
newer than the cut-off (ids grow with time): nothing holds a long lock, and a run cut short
(the task's time budget, a killed worker) is taken up where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Exists, Model, OuterRef
from django.utils import timezone
from django_q.models import Schedule

from journeys.models import ScheduledSend
from marketing.models import Event
from marketing.services.retention import event_payloads_purge
from nudge import conf

PURGE_SCHEDULE_NAME = "nudge_purge"
PURGE_TASK = "journeys.tasks.retention_purge"
# the schedule's first run: the next 03:30 UTC, a quiet hour for most shops
_PURGE_AT = (3, 30)
# pg_advisory_xact_lock key of the schedule's creation ("NUPG")
_SCHEDULE_LOCK = 0x4E555047


@dataclass
class PurgeReport:
    """What one run purged (with `dry_run`: would purge), and where it stopped."""

    dry_run: bool
    event_payloads: int = 0
    message_bodies: int = 0
    # the last id walked in each table; `finished` False when the time budget ran out first
    event_after: int = 0
    send_after: int = 0
    finished: bool = True

    def summary(self) -> str:
        verb = "would purge" if self.dry_run else "purged"
        line = (
            f"{verb} {self.event_payloads} event payload(s), "
            f"{self.message_bodies} message body(ies)"
        )
        if not self.finished:
            line += (
                f" (out of time: events after id {self.event_after}, sends after id "
                f"{self.send_after} left)"
            )
        return line


def retention_purge(
    *,
    dry_run: bool = False,
    budget_seconds: float | None = None,
    event_after: int = 0,
    send_after: int = 0,
    now: datetime | None = None,
) -> PurgeReport:
    """Purge what the retention settings say is past its time (see the module), in batches;
    `event_after` and `send_after` take up a run that stopped (see PurgeReport). With
    `budget_seconds`, no new batch starts after that long (`finished` is then False)."""
    now = now or timezone.now()
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    report = PurgeReport(dry_run=dry_run, event_after=event_after, send_after=send_after)
    batch = max(1, settings.NUDGE_RETENTION_BATCH)

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() > deadline

    if days := settings.NUDGE_RETENTION_EVENT_PAYLOAD_DAYS:
        cutoff = now - timedelta(days=days)
        for last, ids in _batches(Event, "received_at", cutoff, batch, event_after):
            report.event_payloads += _event_payloads_purge(ids, dry_run=dry_run)
            report.event_after = last
            if out_of_time():
                report.finished = False
                return report
    if days := settings.NUDGE_RETENTION_MESSAGE_BODY_DAYS:
        cutoff = now - timedelta(days=days)
        for last, ids in _batches(ScheduledSend, "created_at", cutoff, batch, send_after):
            report.message_bodies += _message_bodies_purge(ids, cutoff, dry_run=dry_run)
            report.send_after = last
            if out_of_time():
                report.finished = False
                return report
    return report


def _batches(
    model: type[Model], time_field: str, cutoff: datetime, size: int, after: int
) -> Iterator[tuple[int, list[int]]]:
    """(last id walked, ids whose `time_field` is before `cutoff`) per batch of `size` rows in
    id order after `after`, on the primary key's index; it stops after the first batch that
    reaches a row at or after the cut-off."""
    while True:
        rows = list(
            model._default_manager.filter(pk__gt=after)
            .order_by("pk")
            .values_list("pk", time_field)[:size]
        )
        if not rows:
            return
        after = rows[-1][0]
        yield after, [pk for pk, moment in rows if moment < cutoff]
        if rows[-1][1] >= cutoff or len(rows) < size:
            return


def _event_payloads_purge(ids: list[int], *, dry_run: bool) -> int:
    if not ids:
        return 0
    deciding = ScheduledSend.objects.active().filter(customer_id=OuterRef("customer_id"))
    eligible = (
        Event.objects.filter(pk__in=ids, applied_at__isnull=False)
        .exclude(payload__has_key="purged")
        .exclude(Exists(deciding))
        .values_list("pk", flat=True)
    )
    if dry_run:
        return eligible.count()
    return event_payloads_purge(event_ids=list(eligible))


def _message_bodies_purge(ids: list[int], cutoff: datetime, *, dry_run: bool) -> int:
    if not ids:
        return 0
    eligible = (
        ScheduledSend.objects.filter(pk__in=ids, updated_at__lt=cutoff)
        .exclude(status__in=ScheduledSend.ACTIVE)
        .exclude(recipient="", subject="", body="")
    )
    if dry_run:
        return eligible.count()
    # updated_at is left as it was: it still says when the send last changed in business terms
    return eligible.update(recipient="", subject="", body="")


def retention_schedule_ensure(*, using: str = DEFAULT_DB_ALIAS) -> Schedule | None:
    """Make the daily purge's django-q2 schedule exist exactly once, on the messaging
    cluster (none when both retention periods are 0). Called after every `migrate`
    (journeys.receivers), maybe by several machines at once: found by its fixed name under
    an advisory lock (PostgreSQL). An operator's changes to it (its time, its repeats) are
    kept."""
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEDULE_LOCK])
        schedules = Schedule.objects.using(using).filter(name=PURGE_SCHEDULE_NAME).order_by("pk")
        if not (
            settings.NUDGE_RETENTION_EVENT_PAYLOAD_DAYS
            or settings.NUDGE_RETENTION_MESSAGE_BODY_DAYS
        ):
            schedules.delete()
            return None
        keep = schedules.first()
        if keep is not None:
            schedules.exclude(pk=keep.pk).delete()
            return keep
        now = timezone.now()
        first_run = now.replace(hour=_PURGE_AT[0], minute=_PURGE_AT[1], second=0, microsecond=0)
        if first_run <= now:
            first_run += timedelta(days=1)
        return Schedule.objects.using(using).create(
            name=PURGE_SCHEDULE_NAME,
            func=PURGE_TASK,
            schedule_type=Schedule.DAILY,
            repeats=-1,
            next_run=first_run,
            cluster=conf.messaging_cluster(),
        )
