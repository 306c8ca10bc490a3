"""A graceful stop of `manage.py nudge_ticker`, as a real process on the test PostgreSQL: SIGTERM
or SIGINT in the middle of a long tick ends it after the batch in hand, exit status 0, with
every row it claimed enqueued; and `make run`'s Ctrl-C (honcho, scripts/start.py) stops it
the same way, without a SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django_q.models import OrmQ

from journeys import ticker
from journeys.models import ScheduledSend
from tests.journeys.test_reconcile import make_sends

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
Status = ScheduledSend.Status
STOPPED = "ticker: {} received, stopped after the tick in hand"


def _env() -> dict[str, str]:
    if connection.vendor != "postgresql":
        pytest.skip("the ticker process shares the test database through PostgreSQL")
    s = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}",
        "PYTHONUNBUFFERED": "1",
        # a long tick: a backlog of due sends in batches of 5, one task each (ORM broker)
        "NUDGE_CLAIM_BATCH": "5",
        "NUDGE_DISPATCH_TASK_SIZE": "5",
    }
    env.pop("REDIS_URL", None)
    return env


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.05)


def _claimed_and_enqueued() -> tuple[list[int], list[int]]:
    claimed = sorted(
        ScheduledSend.objects.filter(status=Status.SENDING).values_list("pk", flat=True)
    )
    # the ORM broker's queue, read without taking it off (faster than dequeueing each)
    tasks = [queued.task for queued in OrmQ.objects.all()]
    enqueued = [
        pk for task in tasks if task["func"] == ticker.DISPATCH_TASK for pk in task["args"][0]
    ]
    return claimed, enqueued


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_tick_stops_the_ticker_after_the_batch_in_hand(tmp_path, signum):
    env = _env()
    make_sends(1500, due=-timedelta(minutes=1))
    log = tmp_path / "ticker.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "nudge_ticker"],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_for(lambda: ScheduledSend.objects.filter(status=Status.SENDING).exists(), 30, "claim")
        process.send_signal(signum)
        sent = time.monotonic()
        returncode = process.wait(timeout=5)
        stopped_in = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output_lines = log.read_text().splitlines()

    assert returncode == 0, output_lines[-20:]
    assert stopped_in < 5
    assert any(line.endswith(STOPPED.format(signum.name)) for line in output_lines)
    assert output_lines[-1] == "ticker: stopped"
    claimed, enqueued = _claimed_and_enqueued()
    assert claimed == sorted(enqueued)  # each claimed row enqueued, once
    # it stopped mid-tick rather than claim the whole backlog first
    assert ScheduledSend.objects.filter(status=Status.PENDING).exists()


def test_make_run_s_ctrl_c_stops_the_ticker_without_a_kill(tmp_path):
    """scripts/start.py runs the Procfile under honcho, which answers Ctrl-C (SIGINT) with a
    SIGTERM to each process group, and SIGKILLs whatever is left after its wait."""
    env = {**_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    make_sends(1000, due=-timedelta(minutes=1))
    (ticker_line,) = [
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("ticker:")
    ]
    procfile = tmp_path / "Procfile"
    procfile.write_text(ticker_line + "\n")
    log = tmp_path / "honcho.log"
    with log.open("w") as output:
        honcho = subprocess.Popen(
            [sys.executable, "scripts/start.py", "--procfile", str(procfile), "--app-root",
             str(ROOT), "--no-prefix"],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for(lambda: ScheduledSend.objects.filter(status=Status.SENDING).exists(), 30, "claim")
        honcho.send_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
        sent = time.monotonic()
        honcho.wait(timeout=10)
        stopped_in = time.monotonic() - sent
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
    text = log.read_text()

    assert stopped_in < 5, text[-2000:]
    assert STOPPED.format("SIGTERM") in text
    assert "SIGKILL" not in text
    assert "ticker.1 stopped (rc=0)" in text
    claimed, enqueued = _claimed_and_enqueued()
    assert claimed == sorted(enqueued)


def test_a_broker_that_refuses_tasks_does_not_end_the_ticker(tmp_path):
    """Redis down: the claimed batch cannot be enqueued. The ticker logs it and goes on (the
    send comes back after its lease), and still stops cleanly; it used to exit with the
    error, and under honcho take every other process down with it."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**_env(), "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    (send,) = make_sends(1, due=-timedelta(minutes=1))
    log = tmp_path / "ticker.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "nudge_ticker"],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_for(lambda: "ticker: the tick failed, retrying" in log.read_text(), 30, "error")
        time.sleep(0.5)
        assert process.poll() is None, log.read_text()[-2000:]
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert returncode == 0, log.read_text()[-2000:]
    claimed = ScheduledSend.objects.get(pk=send)
    assert (claimed.status, claimed.attempts) == (Status.SENDING, 0)  # back after its lease
