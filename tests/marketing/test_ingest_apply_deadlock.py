"""Batch ingest against event application on real PostgreSQL: no deadlock between them.

A batch locks its customers, and so does an applier chunk; when the two take overlapping
customers in different orders (a batch once went by external id, appliers by primary key),
PostgreSQL breaks the cycle by killing one of them: the batch answered 503 "Database
unavailable", or the applier chunk fell back to one event at a time. Here the customers' ids
run opposite to their external ids, so any two orders that differ meet.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.test import Client
from django.utils import timezone

from journeys import services as journey_services
from journeys.models import Enrollment
from marketing import services
from marketing.models import Customer, Event
from tests.journeys.conftest import ingest, make_event, make_journey
from tests.webhook_client import post_signed

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL"),
]

CUSTOMERS = 24
BATCH_THREADS = 3
BATCHES = 12  # per thread
APPLY_THREADS = 2


@pytest.fixture
def quick_deadlock_detection() -> Iterator[None]:
    """Every connection of the test checks for deadlocks after 20 ms instead of 1 s, so
    that the old order reproduced them quickly (the test's user is a superuser)."""

    def configure(sender: Any, connection: Any, **kwargs: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SET deadlock_timeout = '20ms'")

    connection_created.connect(configure, dispatch_uid="test-quick-deadlock", weak=False)
    connection.close()  # the next query opens a configured one
    yield
    connection_created.disconnect(dispatch_uid="test-quick-deadlock")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)  # under the handler's own lock


@pytest.fixture
def applier_log() -> Iterator[_Records]:
    """What the appliers and the retries log, from every thread."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("journeys.services.applying", "nudge.db")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def _deadlocks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def _batches(base: Any) -> list[list[list[dict[str, Any]]]]:
    """Per thread, BATCHES batches: checkouts of half the known customers, shuffled, payments
    of carts of earlier rounds, and registrations of two new customers whose external ids
    fall between the known ones'."""
    chooser = random.Random(20261203)
    known = [f"u_{n:02d}" for n in range(CUSTOMERS)]
    plans: list[list[list[dict[str, Any]]]] = []
    for thread in range(BATCH_THREADS):
        batches = []
        for round_ in range(BATCHES):
            batch = []
            for user in chooser.sample(known, CUSTOMERS // 2):
                cart = f"c_{user}_{thread}_{round_}"
                at = base + timedelta(seconds=round_)
                batch.append(make_event(f"co_{cart}", "checkout_started", user=user, at=at,
                                        cart=cart))  # fmt: skip
                if round_ and chooser.random() < 0.3:
                    paid = f"c_{user}_{thread}_{round_ - 1}"
                    batch.append(make_event(f"pay_{paid}", "payment_finished", user=user,
                                            at=base - timedelta(days=1), cart=paid,
                                            payment=f"p_{paid}"))  # fmt: skip
            for k in range(2):
                user = f"u_{chooser.randrange(CUSTOMERS):02d}_new_{thread}_{round_}_{k}"
                batch.append(make_event(f"reg_{user}", "user_registered", user=user, at=base))
            chooser.shuffle(batch)
            batches.append(batch)
        plans.append(batches)
    return plans


def test_concurrent_batches_and_appliers_never_deadlock(quick_deadlock_detection, applier_log):
    make_journey(dedupe="every", reentry="every")
    base = timezone.now() - timedelta(minutes=5)
    # the customers' ids run opposite to their external ids
    for n in reversed(range(CUSTOMERS)):
        ingest(make_event(f"reg_u_{n:02d}", "user_registered", user=f"u_{n:02d}", at=base))
    ids = dict(Customer.objects.values_list("external_id", "pk"))
    assert sorted(ids, key=ids.__getitem__) == sorted(ids, reverse=True)
    deadlocks_before = _deadlocks()

    plans = _batches(base)
    start = threading.Barrier(BATCH_THREADS + APPLY_THREADS)
    posting = threading.Event()
    posting.set()
    answers: list[int] = []
    answers_lock = threading.Lock()

    def post(thread: int) -> None:
        client = Client()
        start.wait()
        try:
            for batch in plans[thread]:
                response = post_signed(client, "/api/events/batch/", {"events": batch})
                statuses = (
                    [item["status"] for item in response.json()["results"]]
                    if response.status_code == 200
                    else [response.status_code]
                )
                with answers_lock:
                    answers.extend(statuses)
        finally:
            connection.close()

    def apply() -> int:
        applied = 0
        start.wait()
        try:
            while posting.is_set() or services.events_unapplied_ids():
                claimed = services.events_claim_unapplied(limit=40, lease=timedelta(minutes=10))
                if claimed:
                    applied += journey_services.events_apply(event_ids=claimed)
                else:
                    time.sleep(0.005)
                    if not posting.is_set():
                        break  # what is left was claimed by the other applier
        finally:
            connection.close()
        return applied

    with ThreadPoolExecutor(BATCH_THREADS + APPLY_THREADS) as pool:
        appliers = [pool.submit(apply) for _ in range(APPLY_THREADS)]
        posters = [pool.submit(post, thread) for thread in range(BATCH_THREADS)]
        for poster in posters:
            poster.result()
        posting.clear()
        applied_by_workers = sum(applier.result() for applier in appliers)

    events = [e for batches in plans for batch in batches for e in batch]
    expected = Counter(e["id"] for e in events)
    assert Counter(answers) == Counter({202: len(expected)}), "every event accepted, no 503"
    failed_together = [r for r in applier_log.records if "together failed" in r.getMessage()]
    assert failed_together == [], [r.exc_info[1] for r in failed_together if r.exc_info]
    # every event stored once and applied once (by the workers: nothing was left over)
    stored = Counter(Event.objects.filter(event_id__in=expected).values_list("event_id", flat=True))
    assert stored == Counter(dict.fromkeys(expected, 1))
    assert journey_services.events_apply_pending() == 0
    assert applied_by_workers == len(expected)
    assert not Event.objects.filter(applied_at__isnull=True).exists()
    assert set(Event.objects.values_list("apply_error", flat=True)) == {""}
    checkouts = Counter(e["id"] for e in events if e["type"] == "checkout_started")
    enrolled = Counter(Enrollment.objects.values_list("trigger_event__event_id", flat=True))
    assert enrolled == Counter(dict.fromkeys(checkouts, 1))
    deadlocks = _deadlocks() - deadlocks_before
    retried = [r.getMessage() for r in applier_log.records if "retried" in r.getMessage()]
    print(f"deadlocks detected by PostgreSQL: {deadlocks}; transactions retried: {len(retried)}")
    # the one order alone prevents them (no two batches here share a new customer, so no
    # row appears between a batch's insert and its lock); the retry is only the safety net
    assert retried == []
