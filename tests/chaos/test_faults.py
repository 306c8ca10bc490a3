"""What the chaos run relies on to inject its faults: the fake provider's refusal and its log
of every message request (bench/fake_provider.py), the fault schedule, and finding a process
blocked reading a pipe (django-q2's idle worker holding the task queue's read lock)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from chaos import faults
from tests.servers import PROJECT


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    messages = tmp_path / "messages.jsonl"
    command = [sys.executable, "-m", "bench.fake_provider", "--port", "0", "--latency-ms", "0"]
    command += ["--calls-file", str(tmp_path / "calls"), "--messages-file", str(messages)]
    process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 10)
    assert ready, "the fake provider did not start within 10 s"
    url = "http://" + process.stdout.readline().strip().rpartition(" ")[2]
    yield url, messages
    process.terminate()
    process.wait(10)


def _post(url: str, send_id: int) -> int:
    response = requests.post(
        f"{url}/messages",
        json={"to": "+14155550101", "body": f"code ABCDEF{send_id:04d}", "send_id": send_id},
        headers={"Idempotency-Key": f"nudge-send-{send_id}"},
        timeout=5,
    )
    return response.status_code


def test_the_provider_logs_every_message_request_with_its_fate(
    provider: tuple[str, Path],
) -> None:
    url, messages = provider
    assert _post(url, 1) == 200
    assert _post(url, 1) == 200  # the same key: a replay
    requests.post(f"{url}/_control", json={"down": True}, timeout=5).raise_for_status()
    assert _post(url, 2) == 503
    before = time.time()
    requests.get(f"{url}/_stats", timeout=5).raise_for_status()  # flushes the files
    records = [json.loads(line) for line in messages.read_text().splitlines()]
    assert [(r["send_id"], r["fate"], r["status"]) for r in records] == [
        ("1", "delivered", 200),
        ("1", "replay", 200),
        ("2", "error", 503),
    ]
    assert records[0]["body"] == "code ABCDEF0001"
    assert all(before - 10 < r["t"] <= before for r in records)


def test_the_provider_refuses_connections_for_a_while_then_listens_again(
    provider: tuple[str, Path],
) -> None:
    url, _ = provider
    host, port = url.removeprefix("http://").split(":")
    answer = requests.post(f"{url}/_control", json={"refuse_seconds": 1.0}, timeout=5)
    assert answer.json()["refuse_seconds"] == 1.0
    time.sleep(0.3)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=1).close()
    deadline = time.monotonic() + 5
    while True:
        try:
            assert _post(url, 3) == 200
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "the provider did not listen again"
            time.sleep(0.1)
    stats = requests.get(f"{url}/_stats", timeout=5).json()
    assert stats["deliveries"] == 1


def test_a_process_blocked_reading_a_pipe_is_found_as_the_idle_reader() -> None:
    read_end, write_end = os.pipe()
    reader = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.read({read_end}, 1)"], pass_fds=[read_end]
    )
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while faults.blocked_on(reader.pid) != "pipe":
            assert time.monotonic() < deadline, faults.blocked_on(reader.pid)
            time.sleep(0.05)
        assert faults.idle_reader([sleeper.pid, reader.pid], redis_port=None) == reader.pid
        assert faults.blocked_on(sleeper.pid) in ("other", "")
        assert faults.kill9(reader.pid)
        assert reader.wait(5) == -9
    finally:
        os.close(write_end)
        os.close(read_end)
        sleeper.kill()
        reader.kill()
        sleeper.wait()


def test_the_schedule_spreads_each_kind_of_fault_over_the_window() -> None:
    counts = {"worker_kill": 20, "pg_restart": 5, "provider_outage": 10, "broker_purge": 1}
    plan = faults.schedule(window=250, counts=counts, seed=7)
    assert Counter(kind for _, kind in plan) == counts
    assert all(5 <= at <= 245 for at, _ in plan)
    kills = [at for at, kind in plan if kind == "worker_kill"]
    assert max(kills) - min(kills) > 150  # spread, not bunched
    assert plan == sorted(plan)
