"""The timer's claims: due sends handed to the workers, and sends whose worker never finished
handed out again."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from journeys.models import ScheduledSend
from journeys.sqlnames import sql

logger = logging.getLogger(__name__)

Status = ScheduledSend.Status

_CLAIM_SQL = sql("""
UPDATE {send}
   SET status = {sending}, claimed_at = now(), updated_at = now()
 WHERE id = ANY(ARRAY(SELECT id FROM {send}
                       WHERE status = {pending} AND due_at <= now()
                       ORDER BY due_at
                       LIMIT %s
                       FOR UPDATE SKIP LOCKED))
RETURNING id
""")


def scheduled_sends_claim_due(*, limit: int) -> list[int]:
    """Move up to `limit` due pending sends to `sending` and return their ids.

    The claim is a compare-and-set: only a row still pending moves, and FOR UPDATE SKIP
    LOCKED lets any number of tickers on any number of machines claim at once without
    waiting for or double-claiming each other. On PostgreSQL it is one statement (one round
    trip, the ids come back with RETURNING); on SQLite (one ticker) the database lock does
    the same job over two statements. `id = ANY(ARRAY(...))` rather than `id IN (...)`: with
    IN, the planner may hash-join the claimed ids against a sequential scan of the whole
    table when few rows are due (tests/journeys/test_query_plans.py).
    """
    if connection.vendor == "postgresql":
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_CLAIM_SQL, [limit])
            return sorted(row[0] for row in cursor.fetchall())
    with transaction.atomic():
        ids = list(
            ScheduledSend.objects.due()
            .order_by("due_at")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        if ids:
            ScheduledSend.objects.filter(pk__in=ids).update(
                status=Status.SENDING,
                claimed_at=Now(),
                updated_at=Now(),
            )
    return ids


def scheduled_sends_recover(*, lease: timedelta, limit: int) -> list[int]:
    """Hand out again the sends whose lease ran out: those waiting for a retry (their
    claimed_at was moved so that the lease ends at the retry time), and those whose worker
    never finished (a lost queue entry, a killed worker). Returns ids to enqueue.

    `attempts` counts provider calls, not hand-outs: a task lost before its call costs no
    attempt (a send late beyond its max lateness is skipped at dispatch). A send whose call
    started and never recorded an outcome may have been accepted: it is an ambiguous retry,
    counted on the row (`ambiguous_retries`) and sent again with the same idempotency key,
    or failed when its attempts are spent.
    """
    cutoff = timezone.now() - lease
    with transaction.atomic():
        stuck = list(
            ScheduledSend.objects.in_flight_since(cutoff)
            .order_by("claimed_at")
            .select_for_update(skip_locked=True)
            .values_list("id", "attempts", "call_started_at")[:limit]
        )
        ambiguous = [pk for pk, _, started in stuck if started is not None]
        spent_ids = {
            pk
            for pk, attempts, started in stuck
            if started is not None and attempts >= settings.NUDGE_SEND_MAX_ATTEMPTS
        }
        retry = [pk for pk, _, _ in stuck if pk not in spent_ids]
        if ambiguous:
            logger.warning(
                "recovery: %d sends whose provider call never recorded an outcome are "
                "handed out again (ambiguous: the provider may have accepted them)",
                len(ambiguous),
            )
            ScheduledSend.objects.filter(pk__in=ambiguous).update(
                ambiguous_retries=F("ambiguous_retries") + 1,
                call_started_at=None,
                last_error="no outcome recorded for the provider call (worker lost)",
            )
        if spent_ids:
            ScheduledSend.objects.filter(pk__in=spent_ids).update(
                status=Status.FAILED,
                reason=f"failed: no outcome recorded after {settings.NUDGE_SEND_MAX_ATTEMPTS} "
                "provider calls",
                updated_at=Now(),
            )
        if retry:
            ScheduledSend.objects.filter(pk__in=retry).update(claimed_at=Now())
    return retry
