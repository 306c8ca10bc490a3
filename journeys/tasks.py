"""django-q2 entry points: take ids (or nothing), call one service (and hand on what it had no
time for)."""

from __future__ import annotations

from django.conf import settings
from django_q.tasks import async_task

from journeys import reconcile, services, ticker
from journeys.services import retention, stats
from nudge import conf


def scheduled_sends_dispatch(send_ids: list[int]) -> dict[str, int]:
    """Dispatch claimed sends; the outcome counts end up in the task result. Sends left
    when the task has used half its timeout go to a new task (see the service)."""
    outcomes, left = services.scheduled_sends_dispatch_chunks(
        send_ids=send_ids, budget_seconds=settings.Q_MESSAGING_TIMEOUT / 2
    )
    if left:
        ticker.enqueue_dispatch(left)
    return outcomes


def events_apply(event_ids: list[int]) -> int:
    """Apply a chunk of claimed events to journeys; the count ends up in the task result."""
    return services.events_apply(event_ids=event_ids)


def queues_reconcile() -> dict[str, int]:
    """The sweeper's schedule (journeys.reconcile): hand out the sends and events the ticker
    left behind; the counts end up in the task result."""
    return reconcile.queues_reconcile().counts()


def retention_purge(event_after: int = 0, send_after: int = 0) -> str:
    """The daily purge's schedule (services.retention): what is past its retention period,
    for half the task's timeout; the rest goes to a new task that takes up where it stopped.
    The summary line ends up in the task result."""
    report = retention.retention_purge(
        budget_seconds=settings.Q_MESSAGING_TIMEOUT / 2,
        event_after=event_after,
        send_after=send_after,
    )
    if not report.finished:
        async_task(
            retention.PURGE_TASK,
            report.event_after,
            report.send_after,
            cluster=conf.messaging_cluster(),
        )
    return report.summary()


def journey_stats_fold() -> int:
    """The stats rollup's schedule (services.stats): fold the recorded changes into the daily
    figures; how many figures changed ends up in the task result."""
    return stats.journey_stats_fold()
