"""Applying stored events to journeys, on the messaging workers (journeys.tasks.events_apply,
enqueued by journeys.ticker): one way through. Journeys call marketing's public verbs to lock
the events and their customers and to record the outcome; marketing never calls back."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import DatabaseError

from journeys.services.enrolment import enrolment_plan_apply
from journeys.services.erasure import erased_customers_settle
from marketing import services as marketing_services
from nudge.db.retry import atomic_retried

logger = logging.getLogger(__name__)


def events_apply(*, event_ids: list[int]) -> int:
    """Apply stored events' effects on journeys (exits again, then enrolments); an event
    already applied is skipped. Returns how many were applied.

    The chunk is applied in one transaction with its customers locked (the enrolment plan
    reads what it needs once for all of it); a transaction PostgreSQL aborts to break a
    deadlock is run again (nudge.db.retry). If that fails, each event is applied in its own
    transaction: an event whose application fails keeps its error and is retried after the
    lease, until it has failed NUDGE_SEND_MAX_ATTEMPTS times; the others go on.
    """
    ids = sorted(set(event_ids))
    if len(ids) > 1:
        try:
            return _events_apply_retried(ids)
        except Exception:
            logger.warning("applying %d events together failed", len(ids), exc_info=True)
    applied = 0
    for event_id in ids:
        try:
            applied += _events_apply_retried([event_id])
        except DatabaseError:
            raise  # the database is unavailable: the task fails, the lease brings it back
        except Exception as exc:
            logger.exception("applying event %s failed", event_id)
            marketing_services.event_apply_failed(
                event_id=event_id, error=f"{type(exc).__name__}: {exc}"[:2000]
            )
    return applied


def _events_apply_retried(event_ids: list[int]) -> int:
    return atomic_retried(lambda: _events_apply_together(event_ids), what="applying events")


def _events_apply_together(event_ids: list[int]) -> int:
    # in the caller's transaction: marketing locks the events, then their customers, each in
    # primary-key order, the order every path that locks several customers takes (a batch
    # too): appliers and batches never wait for each other in a cycle, and a webhook locks
    # one customer
    events = marketing_services.events_lock_for_apply(event_ids=event_ids)
    if not events:
        return 0
    enrolment_plan_apply(events=erased_customers_settle(events=events))
    marketing_services.events_mark_applied(event_ids=[event.pk for event in events])
    return len(events)


def events_apply_pending() -> int:
    """Apply every stored event not applied yet, in this process (tests, management), in
    chunks of NUDGE_APPLY_CHUNK as the workers do: a chunk locks its customers until it
    commits."""
    ids = marketing_services.events_unapplied_ids()
    chunk = settings.NUDGE_APPLY_CHUNK
    return sum(
        events_apply(event_ids=ids[start : start + chunk]) for start in range(0, len(ids), chunk)
    )
