"""The scale-out scenario's pieces that need no namespaces: its flags and BENCH line, the TCP
forwarder (bench/scaleout.py) and the fake provider's record of who sent each message. The
namespaces themselves: tests/journeys/test_scale_out.py."""

from __future__ import annotations

import re
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import requests

from bench.run import parse_args
from bench.scaleout import Round, bench_line
from tests.servers import PROJECT, free_port

LINE = re.compile(
    r"^BENCH scaleout hosts=\d+ sends=\d+ sends_per_s=\S+ vs_one_host=\S+ "
    r"duplicated=\S+ lost=\S+$"
)


def _round(hosts: int, rate: float, duplicated: int = 0) -> Round:
    return Round(
        hosts=hosts,
        sends=3000,
        rate=rate,
        elapsed=3000 / rate,
        statuses={"sent": 3000},
        by_host={k: 3000 // hosts for k in range(1, hosts + 1)},
        duplicated=duplicated,
        lost=0,
        stray=0,
        replays=0,
        inflight_max=16 * hosts,
        app_cpu_ms=1.0,
        forward_cpu_ms=0.1,
    )


def test_scaleout_is_on_by_default_with_four_hosts():
    default = parse_args([])
    assert (default.skip_scaleout, default.scaleout_hosts, default.scaleout_sends) == (
        False,
        4,
        3_000,
    )
    assert parse_args(["--thorough"]).scaleout_sends == 10_000
    assert parse_args(["--skip-scaleout"]).skip_scaleout


def test_line_reports_four_hosts_against_one_of_the_same_run():
    figures = {"one": _round(1, 100.0), "many": _round(4, 250.0, duplicated=1), "vs_one_host": 2.5}

    line = bench_line(figures, 4)

    assert LINE.match(line), line
    assert "hosts=4 sends=3000 sends_per_s=250 vs_one_host=2.50 duplicated=1 lost=0" in line


def test_skipped_scaleout_still_prints_its_line():
    line = bench_line(None, 4)
    assert LINE.match(line), line
    assert line.endswith("sends_per_s=nan vs_one_host=nan duplicated=nan lost=nan")


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_forwarder_relays_both_ways_and_stops_on_sigterm():
    server, target = _echo_server()
    listen = free_port()
    forwarder = subprocess.Popen(
        [sys.executable, "-m", "bench.scaleout", "forward",
         f"127.0.0.1:{listen}=127.0.0.1:{target}"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert forwarder.stdout is not None
        assert select.select([forwarder.stdout], [], [], 10)[0], "no ready line in 10 s"
        assert forwarder.stdout.readline().strip() == "forward: ready"
        payload = bytes(range(256)) * 8192  # 2 MiB: more than any socket buffer
        with socket.create_connection(("127.0.0.1", listen), timeout=10) as client:
            sender = threading.Thread(target=client.sendall, args=(payload,))
            sender.start()
            received = bytearray()
            while len(received) < len(payload):
                chunk = client.recv(65536)
                assert chunk, "the forwarder closed the connection early"
                received += chunk
            sender.join()
        assert bytes(received) == payload
        forwarder.send_signal(signal.SIGTERM)
        assert forwarder.wait(timeout=10) == 0
    finally:
        if forwarder.poll() is None:
            forwarder.kill()
            forwarder.wait()
        server.close()


def test_fake_provider_records_the_sender_address_with_record_peer(tmp_path: Path):
    calls, port = tmp_path / "calls", free_port()
    provider = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_provider", "--port", str(port), "--latency-ms", "0",
         "--calls-file", str(calls), "--record-peer"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert provider.stdout is not None
        assert select.select([provider.stdout], [], [], 10)[0], "the provider did not start"
        provider.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        message = {"to": "+14155550101", "body": "hi", "send_id": 5}
        assert requests.post(f"{url}/messages", json=message, timeout=10).status_code == 200
        requests.get(f"{url}/_stats", timeout=10).raise_for_status()  # flushes the calls file
        assert calls.read_text().splitlines() == ["5 127.0.0.1"]
    finally:
        provider.terminate()
        provider.wait(timeout=10)
