"""`manage.py qcluster` is Nudge's cluster (nudge/cluster.py): a worker killed anywhere, even
while it waits for a task, stops no other worker; SIGTERM stops it gracefully; a killed
sentinel is replaced. Real processes, a real broker (ORM on PostgreSQL, and Redis)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import connection
from django_q.models import Success
from django_q.tasks import async_task

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


class Cluster:
    """`manage.py qcluster` in its own session, as honcho starts each Procfile process."""

    def __init__(self, broker: str, tmp_path: Path, **env: str) -> None:
        self.log = tmp_path / "qcluster.log"
        environment = {
            **os.environ,
            "DATABASE_URL": _database_url(),
            "Q_MESSAGING_WORKERS": "3",
            "NUDGE_SHUTDOWN_GRACE_SECONDS": "5",
            **env,
        }
        environment.pop("REDIS_URL", None)
        if broker == "redis":
            environment["REDIS_URL"] = os.environ["NUDGE_TEST_REDIS_URL"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_for(lambda: len(self.workers()) == 3, 30, "three workers")

    def sentinel(self) -> int:
        children = _children(self.process.pid)
        return children[0] if children else 0

    def workers(self) -> list[int]:
        sentinel = self.sentinel()
        return [pid for pid in _children(sentinel) if _alive(pid)] if sentinel else []

    def every_pid(self) -> list[int]:
        sentinel = self.sentinel()
        return [self.process.pid, *([sentinel] if sentinel else []), *self.workers()]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture(params=["orm", "redis"])
def broker(request) -> str:
    if connection.vendor != "postgresql":
        pytest.skip("the cluster's processes share the test database: PostgreSQL only")
    return request.param


@pytest.fixture
def cluster_factory(tmp_path) -> Iterator[Callable[..., Cluster]]:
    started: list[Cluster] = []

    def start(broker: str, **env: str) -> Cluster:
        started.append(Cluster(broker, tmp_path, **env))
        return started[-1]

    yield start
    for cluster in started:
        cluster.stop()


def _enqueue_many(broker: str, func: str, args: list[tuple], monkeypatch) -> None:
    """Enqueue through the broker the cluster reads."""
    from django_q.brokers import get_broker
    from django_q.conf import Conf

    if broker == "redis":
        monkeypatch.setattr(Conf, "REDIS", os.environ["NUDGE_TEST_REDIS_URL"])
        monkeypatch.setattr(Conf, "ORM", None)
    else:
        monkeypatch.setattr(Conf, "ORM", "default")
        monkeypatch.setattr(Conf, "REDIS", None)
    target = get_broker(Conf.CLUSTER_NAME)
    for arguments in args:
        async_task(func, *arguments, broker=target, save=True)


def test_every_worker_killed_while_waiting_for_a_task_stops_nothing(
    broker, cluster_factory, monkeypatch
):
    """django-q2's own cluster wedges for good when the worker that holds its task queue's
    read lock dies: every idle worker waits in that lock. Here all three are killed -9 while
    idle; their replacements run every task enqueued afterwards."""
    cluster = cluster_factory(broker)
    victims = cluster.workers()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    _wait_for(
        lambda: len(cluster.workers()) == 3 and not set(cluster.workers()) & set(victims),
        15,
        "three new workers",
    )
    _enqueue_many(broker, "math.sqrt", [(n,) for n in range(30)], monkeypatch)
    _wait_for(lambda: Success.objects.count() == 30, 30, "30 tasks done")
    assert cluster.output().count("died (exit code -9): replaced") == 3
    assert sorted(Success.objects.values_list("result", flat=True)) == sorted(
        float(n) ** 0.5 for n in range(30)
    )


def test_sigterm_to_the_process_group_lets_a_busy_worker_finish_its_task(
    broker, cluster_factory, monkeypatch
):
    """What honcho does on Ctrl-C: SIGTERM to the whole group. The task in hand (2 s)
    finishes and is recorded; every process exits, the master with 0, and nothing is killed."""
    cluster = cluster_factory(broker)
    pids = cluster.every_pid()
    _enqueue_many(broker, "time.sleep", [(2,)], monkeypatch)
    _wait_for(lambda: "processing" in cluster.output(), 15, "the task to start")
    started = time.monotonic()
    os.killpg(cluster.process.pid, signal.SIGTERM)
    assert cluster.process.wait(15) == 0
    assert time.monotonic() - started < 5 + 3
    assert Success.objects.filter(func="time.sleep").count() == 1
    assert not [pid for pid in pids if _alive(pid)]
    assert "killed" not in cluster.output()


def test_a_task_that_outlives_the_grace_period_is_killed_and_the_cluster_still_exits_0(
    broker, cluster_factory, monkeypatch
):
    cluster = cluster_factory(broker, NUDGE_SHUTDOWN_GRACE_SECONDS="1")
    pids = cluster.every_pid()
    _enqueue_many(broker, "time.sleep", [(30,)], monkeypatch)
    _wait_for(lambda: "processing" in cluster.output(), 15, "the task to start")
    os.kill(cluster.process.pid, signal.SIGTERM)  # the master alone, as `kill PID` does
    assert cluster.process.wait(10) == 0
    assert "still busy after 1 s: killed" in cluster.output()
    assert not [pid for pid in pids if _alive(pid)]
    assert not Success.objects.filter(func="time.sleep").exists()


def test_a_killed_sentinel_takes_its_workers_along_and_the_master_starts_a_new_one(
    broker, cluster_factory, monkeypatch
):
    cluster = cluster_factory(broker)
    sentinel, workers = cluster.sentinel(), cluster.workers()
    os.kill(sentinel, signal.SIGKILL)
    _wait_for(lambda: not [pid for pid in workers if _alive(pid)], 10, "the old workers to go")
    _wait_for(
        lambda: cluster.sentinel() not in (0, sentinel) and len(cluster.workers()) == 3,
        20,
        "a new sentinel with three workers",
    )
    _enqueue_many(broker, "math.sqrt", [(n,) for n in range(5)], monkeypatch)
    _wait_for(lambda: Success.objects.count() == 5, 30, "5 tasks done")
    assert "the sentinel died (exit code -9): starting a new one" in cluster.output()
