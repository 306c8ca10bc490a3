"""The ticker: turns due ScheduledSend rows into django-q2 dispatch tasks, and stored events
into tasks that apply them to journeys.

The tables are the queues (a partial index on due_at of pending sends, one on the events not
applied yet); the ticker only claims what is due, in batches, and enqueues chunks of ids. Any
number of tickers may run on any number of machines (claims use FOR UPDATE SKIP LOCKED); one
is enough for most sites. When none runs, the sweeper (journeys.reconcile, a django-q2
schedule) hands out what was left behind.

A stop (`stop` set, by SIGTERM or SIGINT in `manage.py nudge_ticker`) is seen between two
batches: every batch claimed is enqueued before the ticker returns, so a graceful stop leaves
nothing claimed and not enqueued. A row claimed and never enqueued all the same (a SIGKILL
between the claim's commit and the enqueue, a broker that refuses the task) is not lost: a
send stays `sending` and is handed out again once NUDGE_SEND_LEASE_SECONDS have passed since
its claim, at no cost in attempts (no provider call started), and an event's claim runs out
after NUDGE_APPLY_LEASE_SECONDS, when it is claimed again.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import OperationalError, close_old_connections
from django_q.brokers import Broker, get_broker
from django_q.tasks import async_task

from journeys import services
from marketing import services as marketing_services
from nudge import conf

logger = logging.getLogger(__name__)

DISPATCH_TASK = "journeys.tasks.scheduled_sends_dispatch"
APPLY_TASK = "journeys.tasks.events_apply"


@functools.cache
def _messaging_broker() -> Broker:
    return get_broker(conf.messaging_cluster())


def messaging_queue_size() -> int:
    """Tasks waiting in the messaging queue, not yet taken by a worker; when the broker does
    not answer, as good as full (events then wait in their table; sends are not held up)."""
    try:
        return int(_messaging_broker().queue_size() or 0)
    except Exception as exc:
        logger.warning("ticker: the messaging queue does not answer: %s", exc)
        return sys.maxsize


def _enqueue(task: str, ids: list[int], *, chunk: int, group: str) -> None:
    for start in range(0, len(ids), chunk):
        async_task(
            task,
            ids[start : start + chunk],
            group=group,
            cluster=conf.messaging_cluster(),
            # the rows (ScheduledSend, Event.applied_at) are the record: a successful task
            # leaves no result row (failures are still saved), which spares the monitor a
            # write and a prune
            save=False,
        )


def enqueue_apply(event_ids: list[int]) -> None:
    _enqueue(APPLY_TASK, event_ids, chunk=settings.NUDGE_APPLY_CHUNK, group="apply")


def enqueue_dispatch(send_ids: list[int]) -> None:
    _enqueue(DISPATCH_TASK, send_ids, chunk=settings.NUDGE_DISPATCH_TASK_SIZE, group="dispatch")


def tick(*, stop: threading.Event | None = None) -> int:
    """Claim and enqueue the events to apply and everything due now (and recover stuck
    sends); returns how many ids were handed out. Once `stop` is set, no new batch is
    claimed: the tick returns after enqueueing the batch in hand."""
    stop = stop or threading.Event()
    handed_out = 0
    # Events: one batch per tick, and only while the workers keep up with the queue, so a
    # backlog waits in the event table (claimable again) rather than in the broker, where
    # its leases would run out before a worker got to it.
    if messaging_queue_size() < settings.NUDGE_APPLY_QUEUE_LIMIT:
        events = marketing_services.events_claim_unapplied(
            limit=settings.NUDGE_CLAIM_BATCH,
            lease=timedelta(seconds=settings.NUDGE_APPLY_LEASE_SECONDS),
        )
        if events:
            enqueue_apply(events)
            handed_out += len(events)
    # sends whose retry or gate wait is over, and those a lost worker left: every one whose
    # lease has run out (a provider back after an outage lets thousands go at once)
    while True:
        recovered = services.scheduled_sends_recover(
            lease=timedelta(seconds=settings.NUDGE_SEND_LEASE_SECONDS),
            limit=settings.NUDGE_CLAIM_BATCH,
        )
        if recovered:
            logger.info("ticker: handing out %d sends again as their lease ran out", len(recovered))
            enqueue_dispatch(recovered)
            handed_out += len(recovered)
        if len(recovered) < settings.NUDGE_CLAIM_BATCH or stop.is_set():
            break
    while not stop.is_set():
        claimed = services.scheduled_sends_claim_due(limit=settings.NUDGE_CLAIM_BATCH)
        if claimed:
            enqueue_dispatch(claimed)
            handed_out += len(claimed)
        if len(claimed) < settings.NUDGE_CLAIM_BATCH:
            break
    return handed_out


def run(
    *, stop: threading.Event | None = None, on_tick: Callable[[int], None] | None = None
) -> None:
    """Tick every NUDGE_TICK_SECONDS until `stop` is set; survives a database or broker
    outage. Setting `stop` ends the tick in hand after its current batch (see the module's
    docstring), and any wait at once."""
    stop = stop or threading.Event()
    interval = settings.NUDGE_TICK_SECONDS
    while not stop.is_set():
        started = time.monotonic()
        try:
            count = tick(stop=stop)
        except OperationalError as exc:
            logger.error("ticker: database unavailable, retrying: %s", exc)
            close_old_connections()
            stop.wait(2)
            continue
        except Exception:
            # a broker that refuses the task (Redis restarting): the batch claimed is handed
            # out again after its lease; the ticker goes on rather than exit (under honcho,
            # one process exiting stops them all)
            logger.exception("ticker: the tick failed, retrying")
            close_old_connections()
            stop.wait(2)
            continue
        if on_tick is not None:
            on_tick(count)
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
