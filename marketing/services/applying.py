"""The verbs journeys applies stored events with (journeys.services owns the task and the
decisions): claim a chunk of unapplied events, lock them and their customers, mark them
applied, or record a failure. Marketing calls nothing back: the way runs journeys -> marketing.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from marketing.models import Customer, Event
from marketing.services.columns import table

_EVENT_TABLE = table(Event)

# The unapplied events, oldest first, through the small partial index event_unapplied.
_CLAIM_EVENTS_SQL = f"""
UPDATE {_EVENT_TABLE}
   SET apply_claimed_at = now()
 WHERE id = ANY(ARRAY(SELECT id FROM {_EVENT_TABLE}
                       WHERE applied_at IS NULL AND apply_attempts < %s
                         AND (apply_claimed_at IS NULL OR apply_claimed_at < %s)
                       ORDER BY id
                       LIMIT %s
                       FOR UPDATE SKIP LOCKED))
RETURNING id
"""  # noqa: S608 - the model's table only, no input


def events_claim_unapplied(*, limit: int, lease: timedelta) -> list[int]:
    """Claim up to `limit` stored events whose effects are not applied yet, oldest first,
    including those whose previous claim ran out of lease (a lost task, a killed worker) and
    leaving out those that failed NUDGE_SEND_MAX_ATTEMPTS times. Like the sends' claim: a
    compare-and-set with SKIP LOCKED, safe for many tickers."""
    cutoff = timezone.now() - lease
    attempts = settings.NUDGE_SEND_MAX_ATTEMPTS
    if connection.vendor == "postgresql":
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_CLAIM_EVENTS_SQL, [attempts, cutoff, limit])
            return sorted(row[0] for row in cursor.fetchall())
    with transaction.atomic():
        ids = list(
            Event.objects.filter(applied_at__isnull=True, apply_attempts__lt=attempts)
            .filter(Q(apply_claimed_at__isnull=True) | Q(apply_claimed_at__lt=cutoff))
            .order_by("id")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        if ids:
            Event.objects.filter(pk__in=ids).update(apply_claimed_at=Now())
    return ids


def events_lock_for_apply(*, event_ids: list[int]) -> list[Event]:
    """Lock the events of `event_ids` not applied yet, then their customers, and return the
    events in id order with `event.customer` set; [] when all are applied already.

    Runs inside the caller's transaction (it raises outside one), which holds the locks until
    it commits: what the caller writes for these events and events_mark_applied commit or roll
    back together, so an event is applied once. Events, then customers, each in primary-key
    order: appliers never wait for each other in a cycle, a webhook locks one customer, and a
    batch locks its customers in primary-key order too (services.batch); a batch inserts
    events but never waits for an event row's lock.
    """
    if not connection.in_atomic_block:
        raise TransactionManagementError("events_lock_for_apply runs inside a transaction")
    events = list(
        Event.objects.select_for_update()
        .filter(pk__in=event_ids, applied_at__isnull=True)
        .order_by("pk")
    )
    if not events:
        return []
    customers = Customer.objects.select_for_update().filter(
        pk__in={e.customer_id for e in events if e.customer_id is not None}
    )
    by_id = {customer.pk: customer for customer in customers.order_by("pk")}
    for event in events:
        if event.customer_id is not None:
            event.customer = by_id[event.customer_id]
    return events


def events_mark_applied(*, event_ids: list[int]) -> None:
    """The events' effects are applied: they leave the queue, and any earlier error is gone."""
    Event.objects.filter(pk__in=event_ids).update(applied_at=Now(), apply_error="")


def event_apply_failed(*, event_id: int, error: str) -> None:
    """Applying the event failed: keep why, and count the attempt (after
    NUDGE_SEND_MAX_ATTEMPTS of them, events_claim_unapplied no longer hands it out)."""
    Event.objects.filter(pk=event_id).update(
        apply_error=error[:2000], apply_attempts=F("apply_attempts") + 1
    )


def events_unapplied_ids() -> list[int]:
    """Every stored event not applied yet, in id order (tests, management commands)."""
    return list(
        Event.objects.filter(applied_at__isnull=True).order_by("id").values_list("id", flat=True)
    )
