"""The ticker: turns due ScheduledSend rows into django-q2 dispatch tasks.

The table is the timer (a partial index on due_at of pending rows); the ticker only claims
what is due, in batches, and enqueues chunks of ids. Any number of tickers may run on any
number of machines (claims use FOR UPDATE SKIP LOCKED); one is enough for most sites.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import OperationalError, close_old_connections
from django_q.tasks import async_task

from journeys import services

logger = logging.getLogger(__name__)

DISPATCH_TASK = "journeys.tasks.scheduled_sends_dispatch"


def enqueue_dispatch(send_ids: list[int]) -> None:
    chunk = settings.NUDGE_DISPATCH_CHUNK
    for start in range(0, len(send_ids), chunk):
        async_task(
            DISPATCH_TASK,
            send_ids[start : start + chunk],
            group="dispatch",
            cluster=settings.Q_CLUSTER["cluster_name"],
            # the ScheduledSend rows are the record: a successful task leaves no result row
            # (failures are still saved), which spares the monitor a write and a prune
            save=False,
        )


def tick() -> int:
    """Claim and enqueue everything due now (and recover stuck sends); returns how many."""
    handed_out = 0
    recovered = services.scheduled_sends_recover(
        lease=timedelta(seconds=settings.NUDGE_SEND_LEASE_SECONDS),
        limit=settings.NUDGE_CLAIM_BATCH,
    )
    if recovered:
        logger.warning(
            "ticker: handing out %d sends again after their lease ran out", len(recovered)
        )
        enqueue_dispatch(recovered)
        handed_out += len(recovered)
    while True:
        claimed = services.scheduled_sends_claim_due(limit=settings.NUDGE_CLAIM_BATCH)
        if claimed:
            enqueue_dispatch(claimed)
            handed_out += len(claimed)
        if len(claimed) < settings.NUDGE_CLAIM_BATCH:
            return handed_out


def run(
    *, stop: threading.Event | None = None, on_tick: Callable[[int], None] | None = None
) -> None:
    """Tick every NUDGE_TICK_SECONDS until `stop` is set; survives a database outage."""
    stop = stop or threading.Event()
    interval = settings.NUDGE_TICK_SECONDS
    while not stop.is_set():
        started = time.monotonic()
        try:
            count = tick()
        except OperationalError as exc:
            logger.error("ticker: database unavailable, retrying: %s", exc)
            close_old_connections()
            stop.wait(2)
            continue
        if on_tick is not None:
            on_tick(count)
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
