"""Frequency caps under concurrency, on real PostgreSQL with real commits: many workers
dispatch overlapping sends of the same customers at once, and no customer ever gets more
than a cap allows, nor does the provider see one call too many; the highest priority wins."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection, connections
from django.utils import timezone

from journeys import services
from journeys.channels import OutgoingMessage, get_channel
from journeys.models import FrequencyCap, ScheduledSend
from tests.journeys.conftest import ingest, make_event, make_journey, minutes_ago

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="advisory locks: PostgreSQL"),
]

CUSTOMERS = 24
WORKERS = 8
ROOT = Path(__file__).resolve().parents[2]


class SlowChannel:
    """A provider that takes a few milliseconds per call (so that calls overlap) and records
    every call it gets."""

    provider = "slow"
    calls: list[int] = []
    lock = threading.Lock()
    seconds = (0.005, 0.03)

    def send(self, message: OutgoingMessage) -> str:
        time.sleep(random.uniform(*SlowChannel.seconds))
        with SlowChannel.lock:
            SlowChannel.calls.append(message.send_id)
            shared = os.environ.get("NUDGE_TEST_CALLS_FILE")  # worker processes
            if shared:
                with open(shared, "a") as calls:
                    calls.write(f"{message.send_id}\n")
        return f"slow-{message.send_id}"


@pytest.fixture
def slow_channels(settings):
    path = "tests.journeys.test_pacing_race.SlowChannel"
    settings.NUDGE_CHANNELS = {"email": path, "sms": path}
    settings.NUDGE_DISPATCH_CHUNK = 1  # a take per send: later takes meet calls in flight
    settings.NUDGE_DISPATCH_INFLIGHT = 8
    get_channel.cache_clear()
    SlowChannel.calls = []
    SlowChannel.seconds = (0.005, 0.03)
    yield SlowChannel
    get_channel.cache_clear()


def _journey(slug: str, channel: str, **overrides: object) -> None:
    template = {"subject": "Hi", "body": "x"} if channel == "email" else {"body": "x"}
    make_journey(slug=slug, name=slug, reentry="once", max_lateness="P2D",
                 steps=[{"delay": "PT10M", "channel": channel, "template": template}],
                 **overrides)  # fmt: skip


def _scenario() -> tuple[dict[int, list[int]], dict[int, int]]:
    """Caps, seven journeys (three SMS and three email priorities, one transactional SMS),
    CUSTOMERS customers with a due send in each, a third of them with an email sent
    yesterday; everything claimed. Returns the claimed ids by customer, and the customers
    with their email of yesterday."""
    FrequencyCap.objects.create(channel="sms", max_sends=1, period=timedelta(days=1))
    FrequencyCap.objects.create(channel="email", max_sends=2, period=timedelta(days=1))
    FrequencyCap.objects.create(channel="email", max_sends=5, period=timedelta(days=7))
    for slug, priority in (("sms-a", 0), ("sms-b", 5), ("sms-c", 10)):
        _journey(slug, "sms", priority=priority)
    _journey("sms-receipt", "sms", transactional=True)
    for slug, priority in (("mail-a", 0), ("mail-b", 1), ("mail-c", 2)):
        _journey(slug, "email", priority=priority)
    for n in range(CUSTOMERS):
        ingest(make_event(f"co_{n}", "checkout_started", user=f"u_{n}", at=minutes_ago(11),
                          cart=f"c_{n}"))  # fmt: skip
    # a third of the customers had an email yesterday: one slot of the two is left
    history = {}
    for send in ScheduledSend.objects.filter(journey__slug="mail-a").order_by("pk")[::3]:
        history[send.customer_id] = send.pk
    ScheduledSend.objects.filter(pk__in=history.values()).update(
        status="sent", sent_at=timezone.now() - timedelta(hours=23)
    )
    claimed = services.scheduled_sends_claim_due(limit=10_000)
    assert len(claimed) == CUSTOMERS * 7 - len(history)
    by_customer_ids: dict[int, list[int]] = defaultdict(list)
    for send_id, customer_id in ScheduledSend.objects.filter(pk__in=claimed).values_list(
        "pk", "customer_id"
    ):
        by_customer_ids[customer_id].append(send_id)
    return by_customer_ids, history


def _worker_batches(by_customer_ids: dict[int, list[int]], seed: int) -> list[list[int]]:
    """A worker's calls: half the customers, at random, two at a time, all their sends in
    one call in a random order, so that its later takes meet its own calls in flight and the
    other workers meet its customer locks."""
    rng = random.Random(seed)
    customers = rng.sample(sorted(by_customer_ids), k=CUSTOMERS // 2)
    batches = []
    for start in range(0, len(customers), 2):
        ids = [i for c in customers[start : start + 2] for i in by_customer_ids[c]]
        rng.shuffle(ids)
        batches.append(ids)
    return batches


def _finish_and_check(history: dict[int, int], calls: Callable[[], list[int]]) -> None:
    """Dispatch what a worker gave up on (its customer locked elsewhere too long: still
    claimed), then check every customer's sends against the caps, on the rows and at the
    provider, and that the highest priorities won."""
    left = list(ScheduledSend.objects.filter(status="sending").values_list("pk", flat=True))
    services.scheduled_sends_dispatch(send_ids=left)
    rows = list(ScheduledSend.objects.select_related("journey").order_by("pk"))
    assert not [s for s in rows if s.status == "sending"]
    called = Counter(calls())
    assert all(count == 1 for count in called.values()), "a send was called twice"
    by_customer: dict[int, list[ScheduledSend]] = defaultdict(list)
    for send in rows:
        by_customer[send.customer_id].append(send)
    assert len(by_customer) == CUSTOMERS
    window = timezone.now() - timedelta(days=1)
    for customer_id, customer_sends in by_customer.items():
        sent = [
            s
            for s in customer_sends
            if s.status == "sent" and s.sent_at > window and not s.journey.transactional
        ]
        sms = sorted(s.journey.slug for s in sent if s.channel == "sms")
        emails = sorted(s.journey.slug for s in sent if s.channel == "email")
        # the caps, counted on the rows and at the provider
        assert len(sms) <= 1, (customer_id, sms)
        assert len(emails) <= 2, (customer_id, emails)
        provider_calls = [s for s in customer_sends if s.pk in called]
        marketing_sms_calls = [
            s for s in provider_calls if s.channel == "sms" and not s.journey.transactional
        ]
        assert len(marketing_sms_calls) <= 1, customer_id
        assert (
            len([s for s in provider_calls if s.channel == "email"]) + (customer_id in history) <= 2
        )
        # and the highest priorities won the slots
        assert sms == ["sms-c"], (customer_id, sms)
        expected = ["mail-a", "mail-c"] if customer_id in history else ["mail-b", "mail-c"]
        assert emails == expected, (customer_id, emails)
        receipt = next(s for s in customer_sends if s.journey.slug == "sms-receipt")
        assert receipt.status == "sent"  # transactional: not capped
        for send in customer_sends:
            if send.status == "pending":
                assert send.reason.startswith("deferred: capped, "), send.reason
                assert send.due_at > timezone.now()
                assert send.attempts == 0
            else:
                assert send.status == "sent", (send.status, send.reason)


def test_parallel_dispatch_never_exceeds_a_cap_and_the_highest_priority_wins(slow_channels):
    """Threads, each on its own database session."""
    by_customer_ids, history = _scenario()
    errors: list[BaseException] = []
    barrier = threading.Barrier(WORKERS)

    def worker(seed: int) -> None:
        try:
            batches = _worker_batches(by_customer_ids, seed)
            barrier.wait()
            for ids in batches:
                services.scheduled_sends_dispatch(send_ids=ids)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors

    _finish_and_check(history, lambda: slow_channels.calls)


_PROCESS_SCRIPT = """
import json, sys, time
import django
django.setup()
from journeys import services
start, batches = json.loads(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
for ids in batches:
    services.scheduled_sends_dispatch(send_ids=ids)
"""


@pytest.mark.slow
def test_parallel_dispatch_in_processes_never_exceeds_a_cap(slow_channels, tmp_path):
    """The same with worker processes (the way django-q2 runs them), each calling the
    dispatch service; the provider records its calls in a shared file."""
    by_customer_ids, history = _scenario()
    calls_file = tmp_path / "calls"
    calls_file.touch()
    s = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}",
        "NUDGE_EMAIL_CHANNEL": "tests.journeys.test_pacing_race.SlowChannel",
        "NUDGE_SMS_CHANNEL": "tests.journeys.test_pacing_race.SlowChannel",
        "NUDGE_DISPATCH_CHUNK": "1",
        "NUDGE_DISPATCH_INFLIGHT": "8",
        "NUDGE_TEST_CALLS_FILE": str(calls_file),
    }
    start = time.time() + 3  # all at once, once every process has started Django
    processes = []
    for seed in range(4):
        argument = json.dumps([start, _worker_batches(by_customer_ids, seed)])
        command = [sys.executable, "-c", _PROCESS_SCRIPT, argument]
        processes.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        )
    for process in processes:
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr[-3000:]

    # the processes did the work (a receipt and at least one message per customer each)
    assert len(calls_file.read_text().split()) >= 2 * CUSTOMERS
    _finish_and_check(
        history,
        lambda: [int(line) for line in calls_file.read_text().split()] + slow_channels.calls,
    )


def test_a_later_take_counts_the_call_still_in_flight(slow_channels):
    """Two SMS of one customer, one take each in the same worker: while the first one's call
    is under way (its customer lock is this worker's own), the second is decided, and the
    call in flight holds the slot."""
    slow_channels.seconds = (0.3, 0.3)
    FrequencyCap.objects.create(channel="sms", max_sends=1, period=timedelta(days=1))
    _journey("sms-a", "sms")
    _journey("sms-b", "sms")
    ingest(make_event("co", "checkout_started", at=minutes_ago(11), cart="c_1"))
    first, second = services.scheduled_sends_claim_due(limit=10)

    statuses = services.scheduled_sends_dispatch(send_ids=[first, second])

    assert statuses == {first: "sent", second: "pending"}
    assert slow_channels.calls == [first]
    deferred = ScheduledSend.objects.get(pk=second)
    started = ScheduledSend.objects.get(pk=first).attempt_log[0]["at"]
    assert deferred.reason.startswith("deferred: capped, 1 SMS per 24 h (in flight since ")
    assert started[11:16] in deferred.reason  # the call's start, HH:MM
