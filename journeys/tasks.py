"""django-q2 entry points: take ids (or nothing), call one service (and hand on what it had no
time for)."""

from __future__ import annotations

from django.conf import settings

from journeys import reconcile, services, ticker


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
