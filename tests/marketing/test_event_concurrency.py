"""Concurrent deliveries on real PostgreSQL commits: one event and one effect each."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from marketing.models import Cart, Customer, Event, Payment
from marketing.signals import events_stored
from tests.webhook_client import event, post_signed

THREADS = 16


def events_to_deliver() -> list[dict]:
    """Twelve events for four customers, each with a cart or a payment."""
    events = []
    extra: dict[str, Any]
    for n in range(12):
        user = f"u_{n % 4}"
        if n % 3 == 1:
            extra = {"cart": {"id": f"c_{n}", "total": "10.00", "currency": "EUR"}}
            kind = "checkout_started"
        elif n % 3 == 2:
            extra = {"payment": {"id": f"p_{n}", "amount": "10.00", "currency": "EUR"}}
            kind = "payment_finished"
        else:
            extra, kind = {}, "user_registered"
        events.append(event(f"evt_{n}", kind, user_id=user, **extra))
    return events


@pytest.fixture
def recorded() -> Iterator[Counter]:
    """Counts events_stored per event id, across threads."""
    counts: Counter = Counter()
    lock = threading.Lock()

    def count(sender, events, **kwargs):
        with lock:
            counts.update(event.event_id for event in events)

    events_stored.connect(count, dispatch_uid="test-count-recorded", weak=False)
    yield counts
    events_stored.disconnect(dispatch_uid="test-count-recorded")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["single", "batch of one", "one batch per thread"])
def test_sixteen_threads_delivering_events_one_to_five_times_store_each_once(recorded, mode):
    chooser = random.Random(20261128)
    events = events_to_deliver()
    deliveries = [e for e in events for _ in range(chooser.randint(1, 5))]
    chooser.shuffle(deliveries)
    start = threading.Barrier(THREADS)

    def deliver(worker: int) -> list[tuple[str, int]]:
        mine = deliveries[worker::THREADS]
        client = Client()
        answers: list[tuple[str, int]] = []
        start.wait()
        try:
            if mode == "one batch per thread":
                response = post_signed(client, "/api/events/batch/", {"events": mine})
                statuses = [item["status"] for item in response.json()["results"]]
                answers.extend(zip([p["id"] for p in mine], statuses, strict=True))
            for payload in mine if mode != "one batch per thread" else []:
                if mode == "batch of one":
                    response = post_signed(client, "/api/events/batch/", {"events": [payload]})
                    status = response.json()["results"][0]["status"]
                else:
                    response = post_signed(client, "/api/events/", payload)
                    status = response.status_code
                answers.append((payload["id"], status))
        finally:
            connection.close()
        return answers

    with ThreadPoolExecutor(THREADS) as pool:
        answers = [a for batch in pool.map(deliver, range(THREADS)) for a in batch]

    assert len(answers) == len(deliveries)
    by_event = Counter(event_id for event_id, status in answers if status == 202)
    assert by_event == Counter({e["id"]: 1 for e in events}), "exactly one 202 per event"
    assert {status for _, status in answers} <= {200, 202}
    assert Event.objects.count() == len(events)
    assert recorded == Counter({e["id"]: 1 for e in events}), "one effect per event"
    assert Customer.objects.count() == 4
    assert Cart.objects.count() == 4
    assert Payment.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_sixteen_threads_racing_one_id_with_different_bodies_keep_exactly_one(recorded):
    """One delivery wins (202); the same body again is 200, any other body 409 and undone."""
    start = threading.Barrier(THREADS)

    def deliver(worker: int) -> tuple[int, str]:
        payload = event("evt_race", user_id="u_race")
        payload["user"]["first_name"] = f"Name {worker % 4}"
        client = Client()
        start.wait()
        try:
            return post_signed(client, "/api/events/", payload).status_code, f"Name {worker % 4}"
        finally:
            connection.close()

    with ThreadPoolExecutor(THREADS) as pool:
        answers = list(pool.map(deliver, range(THREADS)))

    winners = [name for status, name in answers if status == 202]
    assert len(winners) == 1
    losers = sorted({(status, name == winners[0]) for status, name in answers if status != 202})
    assert set(losers) <= {(200, True), (409, False)}, losers
    assert Event.objects.get().payload["user"]["first_name"] == winners[0]
    assert Customer.objects.get().first_name == winners[0]
    assert recorded == Counter({"evt_race": 1})
