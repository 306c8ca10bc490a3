"""The sweeper (journeys.reconcile): what a dead ticker left behind is handed out once, a
live ticker's work is left alone, and its django-q2 schedule exists exactly once."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.sql import emit_post_migrate_signal
from django.db import connection, connections, transaction
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.models import OrmQ, Schedule
from django_q.scheduler import scheduler

from journeys import reconcile, tasks, ticker
from journeys.models import Enrollment, Journey, ScheduledSend
from marketing.models import Customer, Event
from marketing.services import event_ingest
from marketing.validation import event_validate
from tests.factories import CustomerFactory
from tests.journeys.conftest import make_event, make_journey, minutes_ago, queued_tasks

Status = ScheduledSend.Status
ROOT = Path(__file__).resolve().parents[2]


def make_sends(
    count: int,
    *,
    due: timedelta,
    status: str = Status.PENDING,
    claimed: timedelta | None = None,
    calling: bool = False,
) -> list[int]:
    """`count` sends of one customer, due `due` from now (negative: in the past), claimed
    `claimed` ago when given, with a provider call under way when `calling`."""
    journey = Journey.objects.filter(slug="j").first() or make_journey()
    customer = Customer.objects.first() or CustomerFactory.create()
    now = timezone.now()
    enrollment = Enrollment.objects.create(
        journey=journey, customer=customer, trigger_occurred_at=now, chain_started_at=now
    )
    start = ScheduledSend.objects.count()
    rows = ScheduledSend.objects.bulk_create(
        ScheduledSend(
            enrollment=enrollment,
            journey=journey,
            step_position=0,
            customer=customer,
            channel="email",
            trigger_occurred_at=now,
            due_at=now + due,
            dedupe_key=f"k{start + n}",
            status=status,
            claimed_at=None if claimed is None else now - claimed,
            call_started_at=now - claimed if calling and claimed is not None else None,
        )
        for n in range(count)
    )
    return [row.pk for row in rows]


def store_events(
    count: int, *, received: timedelta, claimed: timedelta | None = None, **fields
) -> list[int]:
    """`count` stored events, not applied, received `received` ago (and claimed `claimed`
    ago when given)."""
    ids = []
    for _ in range(count):
        n = Event.objects.count()
        payload = make_event(f"e{n}", "user_registered", user=f"u_{n}", at=minutes_ago(10))
        data, errors = event_validate(payload)
        assert data is not None, errors
        ids.append(event_ingest(source=Event.Source.WEBHOOK, data=data, payload=payload).event.pk)
    now = timezone.now()
    Event.objects.filter(pk__in=ids).update(
        received_at=now - received,
        apply_claimed_at=None if claimed is None else now - claimed,
        **fields,
    )
    return ids


def _handed_out(queued: list[tuple[str, list]]) -> dict[str, list[int]]:
    """Ids per task, in the order they were enqueued."""
    ids: dict[str, list[int]] = {ticker.DISPATCH_TASK: [], ticker.APPLY_TASK: []}
    for func, args in queued:
        ids[func].extend(args[0])
    return ids


@pytest.mark.django_db
def test_what_a_dead_ticker_left_is_handed_out_once():
    overdue = make_sends(3, due=-timedelta(minutes=5))
    due_now = make_sends(1, due=-timedelta(seconds=5))  # a live ticker's, claimed along with them
    later = make_sends(1, due=timedelta(hours=1))
    stuck = make_sends(
        2, due=-timedelta(minutes=20), status=Status.SENDING, claimed=timedelta(minutes=10)
    )
    calling = make_sends(
        1,
        due=-timedelta(minutes=1),
        status=Status.SENDING,
        claimed=timedelta(seconds=30),
        calling=True,
    )
    never_claimed = store_events(1, received=timedelta(minutes=5))
    lease_over = store_events(1, received=timedelta(minutes=9), claimed=timedelta(minutes=8))
    given_up = store_events(1, received=timedelta(minutes=9), apply_attempts=5)

    counts = tasks.queues_reconcile()

    assert counts == {
        "sends_overdue_found": 3,
        "sends_overdue_handed_out": 4,
        "sends_stuck_found": 2,
        "sends_stuck_handed_out": 2,
        "events_unapplied_found": 2,
        "events_unapplied_handed_out": 2,
        "events_given_up": 1,
    }
    handed_out = _handed_out(queued_tasks())
    assert sorted(handed_out[ticker.DISPATCH_TASK]) == sorted(stuck + overdue + due_now)
    assert sorted(handed_out[ticker.APPLY_TASK]) == sorted(never_claimed + lease_over)
    assert ScheduledSend.objects.get(pk=later[0]).status == Status.PENDING
    in_flight = ScheduledSend.objects.get(pk=calling[0])
    assert (in_flight.ambiguous_retries, in_flight.call_started_at is not None) == (0, True)
    assert Event.objects.get(pk=given_up[0]).apply_claimed_at is None

    # handed out: the next run finds nothing (their leases run from now)
    assert reconcile.queues_reconcile().counts() == dict.fromkeys(counts, 0) | {
        "events_given_up": 1
    }
    assert queued_tasks() == []


@pytest.mark.django_db
def test_a_live_ticker_s_work_is_left_alone():
    """Due seconds ago, claimed within the lease, received just now: the ticker's, not yet
    the sweeper's."""
    make_sends(2, due=-timedelta(seconds=10))
    make_sends(
        1,
        due=-timedelta(minutes=3),
        status=Status.SENDING,
        claimed=timedelta(minutes=2, seconds=30),
    )
    store_events(1, received=timedelta(seconds=10))

    result = reconcile.queues_reconcile()

    assert not result.neglected
    assert sum(result.counts().values()) == 0
    assert queued_tasks() == []
    assert ScheduledSend.objects.filter(status=Status.PENDING).count() == 2


@pytest.mark.django_db
def test_nudge_reconcile_dry_run_reports_and_changes_nothing():
    make_sends(3, due=-timedelta(minutes=5))
    make_sends(1, due=-timedelta(minutes=20), status=Status.SENDING, claimed=timedelta(minutes=10))
    store_events(2, received=timedelta(minutes=7))
    before = list(ScheduledSend.objects.order_by("pk").values_list("status", "claimed_at"))

    out = io.StringIO()
    call_command("nudge_reconcile", "--dry-run", stdout=out)

    assert out.getvalue().splitlines() == [
        "sends overdue: 3, oldest 300s past due; would hand out 3",
        "sends stuck: 1, oldest 480s past lease; would hand out 1",
        "events unapplied: 2, oldest 420s past due; would hand out 2",
        "events given up: 0 (failed 5 times; not retried)",
        "dry run: nothing changed",
    ]
    assert list(ScheduledSend.objects.order_by("pk").values_list("status", "claimed_at")) == before
    assert not Event.objects.filter(apply_claimed_at__isnull=False).exists()
    assert queued_tasks() == []


@pytest.mark.django_db
def test_nudge_reconcile_hands_out_and_reports():
    overdue = make_sends(2, due=-timedelta(minutes=5))
    events = store_events(1, received=timedelta(minutes=2))

    out = io.StringIO()
    call_command("nudge_reconcile", "--after", "30", stdout=out)

    assert out.getvalue().splitlines() == [
        "sends overdue: 2, oldest 300s past due; handed out 2",
        "sends stuck: 0; handed out 0",
        "events unapplied: 1, oldest 120s past due; handed out 1",
        "events given up: 0 (failed 5 times; not retried)",
    ]
    assert _handed_out(queued_tasks()) == {ticker.DISPATCH_TASK: overdue, ticker.APPLY_TASK: events}
    assert set(ScheduledSend.objects.values_list("status", flat=True)) == {Status.SENDING}


@pytest.mark.django_db
def test_events_wait_in_their_table_while_the_messaging_queue_is_full(settings):
    settings.NUDGE_APPLY_QUEUE_LIMIT = 1
    store_events(1, received=timedelta(minutes=5))
    ticker.enqueue_dispatch([10**9])  # a task no worker took yet

    assert reconcile.queues_reconcile(dry_run=True).events_held_back
    result = reconcile.queues_reconcile()

    assert (result.events_unapplied.found, result.events_unapplied.handed_out) == (1, 0)
    assert (
        "events held back: the messaging queue is full (the workers are behind)" in result.lines()
    )
    assert queued_tasks() == [(ticker.DISPATCH_TASK, [[10**9]])]


def _threads(*targets) -> None:
    """Run the targets at once, each on its own database connection."""
    start = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def run(target) -> None:
        try:
            start.wait()
            target()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


@pytest.mark.django_db(transaction=True)
def test_sweepers_and_tickers_at_once_never_hand_out_a_row_twice(settings):
    if connection.vendor != "postgresql":
        pytest.skip("SKIP LOCKED claims by concurrent sessions: PostgreSQL")
    settings.NUDGE_CLAIM_BATCH = 20  # many small claims, interleaved
    settings.NUDGE_APPLY_QUEUE_LIMIT = 10**6
    overdue = make_sends(400, due=-timedelta(minutes=5))
    stuck = make_sends(
        200, due=-timedelta(minutes=20), status=Status.SENDING, claimed=timedelta(minutes=10)
    )
    store_events(60, received=timedelta(minutes=5))
    # with the customer's own (the site's users are an event source): every one unapplied
    events = sorted(Event.objects.filter(applied_at__isnull=True).values_list("pk", flat=True))

    def sweep() -> None:
        reconcile.queues_reconcile(budget_seconds=60)

    def tick() -> None:
        ticker.tick()

    _threads(sweep, tick, sweep, tick)

    handed_out = _handed_out(queued_tasks())
    dispatched = handed_out[ticker.DISPATCH_TASK]
    assert len(dispatched) == len(set(dispatched)) == len(overdue) + len(stuck)
    assert set(dispatched) == set(overdue + stuck)
    assert sorted(handed_out[ticker.APPLY_TASK]) == events
    assert set(ScheduledSend.objects.values_list("status", flat=True)) == {Status.SENDING}


@pytest.mark.django_db(transaction=True)
def test_rows_a_ticker_is_claiming_are_skipped_not_waited_for():
    """SKIP LOCKED: the sweeper neither waits for a claim in progress nor takes its rows."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks of concurrent sessions: PostgreSQL")
    held = make_sends(5, due=-timedelta(minutes=5))
    free = make_sends(5, due=-timedelta(minutes=4))
    locked, release = threading.Event(), threading.Event()

    def claim_in_progress() -> None:
        with transaction.atomic():
            list(ScheduledSend.objects.select_for_update().filter(pk__in=held))
            locked.set()
            release.wait(30)
        connections.close_all()

    holder = threading.Thread(target=claim_in_progress)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        result = reconcile.queues_reconcile(budget_seconds=5)
        assert time.monotonic() - started < 2
    finally:
        release.set()
        holder.join(10)
    assert (result.sends_overdue.found, result.sends_overdue.handed_out) == (10, 5)
    assert _handed_out(queued_tasks())[ticker.DISPATCH_TASK] == free

    assert reconcile.queues_reconcile().sends_overdue.handed_out == 5  # released: now its turn
    assert _handed_out(queued_tasks())[ticker.DISPATCH_TASK] == held


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_sweeper_whose_clock_is_ahead_leaves_calls_in_flight_alone():
    """The sweeper runs on any worker; one whose clock is 2 minutes ahead (libfaketime) must
    still judge leases by the database's clock: the send whose provider call started 30 s
    ago is not handed out again (nor counted ambiguous), the one stuck for 10 minutes is."""
    if connection.vendor != "postgresql" or not shutil.which("faketime"):
        pytest.skip("a second process on the test database (PostgreSQL), with faketime")
    stuck = make_sends(
        1, due=-timedelta(minutes=20), status=Status.SENDING, claimed=timedelta(minutes=10)
    )
    calling = make_sends(
        1,
        due=-timedelta(minutes=1),
        status=Status.SENDING,
        claimed=timedelta(seconds=30),
        calling=True,
    )
    env = {**os.environ, "DATABASE_URL": _database_url(), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    env.pop("REDIS_URL", None)

    done = subprocess.run(
        ["faketime", "-f", "+120s", sys.executable, "manage.py", "nudge_reconcile"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith("sends stuck: 1, oldest 4")  # 480 s and up
    assert done.stdout.splitlines()[1].endswith("past lease; handed out 1")
    in_flight = ScheduledSend.objects.get(pk=calling[0])
    assert (in_flight.ambiguous_retries, in_flight.call_started_at is not None) == (0, True)
    # (read off the ORM broker's table: its dequeue goes by the clock, and that process's
    # enqueue was dated 2 minutes ahead)
    assert [(q.task["func"], q.task["args"]) for q in OrmQ.objects.all()] == [
        (ticker.DISPATCH_TASK, (stuck,))
    ]


# --- the schedule


def _schedules() -> list[Schedule]:
    return list(Schedule.objects.filter(name=reconcile.SCHEDULE_NAME))


@pytest.mark.django_db
def test_migrate_leaves_one_sweeper_schedule_on_the_messaging_cluster(settings):
    Schedule.objects.filter(name=reconcile.SCHEDULE_NAME).delete()

    for _ in range(3):  # every deploy's migrate
        emit_post_migrate_signal(verbosity=0, interactive=False, db="default")

    (schedule,) = _schedules()
    assert (schedule.func, schedule.schedule_type, schedule.minutes, schedule.repeats) == (
        reconcile.RECONCILE_TASK,
        Schedule.MINUTES,
        1,
        -1,
    )
    assert schedule.cluster == "messaging"

    original = schedule.pk
    Schedule.objects.create(name=reconcile.SCHEDULE_NAME, func=reconcile.RECONCILE_TASK)
    settings.NUDGE_RECONCILE_MINUTES = 5
    reconcile.queues_reconcile_schedule_ensure()
    assert [(s.pk, s.minutes) for s in _schedules()] == [(original, 5)]

    settings.NUDGE_RECONCILE_MINUTES = 0
    assert reconcile.queues_reconcile_schedule_ensure() is None
    assert _schedules() == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_migrations_create_one_schedule():
    if connection.vendor != "postgresql":
        pytest.skip("concurrent sessions: PostgreSQL")
    for _ in range(3):
        Schedule.objects.filter(name=reconcile.SCHEDULE_NAME).delete()
        _threads(*[reconcile.queues_reconcile_schedule_ensure] * 6)
        assert len(_schedules()) == 1


@pytest.mark.django_db(transaction=True)  # the scheduler closes the connection first
def test_the_messaging_cluster_s_scheduler_starts_the_sweeper():
    reconcile.queues_reconcile_schedule_ensure()
    Schedule.objects.filter(name=reconcile.SCHEDULE_NAME).update(
        next_run=timezone.now() - timedelta(seconds=1)
    )

    scheduler(broker=get_broker("messaging"))  # what each messaging cluster does every 30 s

    assert (reconcile.RECONCILE_TASK, []) in queued_tasks()
    (schedule,) = _schedules()
    assert schedule.next_run > timezone.now()  # the other clusters' schedulers skip it now
