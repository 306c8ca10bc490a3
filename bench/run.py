"""The benchmark of issues 4 and 5: dispatch, naive baseline, raw claim limit, ingest, cancel,
flatness and worker memory, in one run against the PostgreSQL that scripts/services.sh
started, and the scenarios of other modules (bench.media, bench.provider, bench.scaleout,
bench.conditions: issue 15's events applied/s with entry conditions). Run it with
`make bench` (README, "Performance and tuning").

Every compared figure is a ratio of two measurements taken in this same run, and each
repeated measurement is reported as the median of --repeat runs. The run ends by proving
that every due send was sent exactly once, and exits non-zero otherwise.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import runpy
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Customer ids of this run start with it: a second run on the same database does not collide.
RUN = secrets.token_hex(3)
# How long writing one send took last time: a burst is written well before it is due.
write_seconds_per_row = 1 / 5_000
PY = sys.executable


class BenchFailure(Exception):
    """A correctness check failed: the figures of this run mean nothing."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Phase sizes: by default a run of every scenario takes a few minutes; --thorough runs longer
# phases (less noise) for the figures committed in bench/RESULTS.md.
QUICK: dict[str, float] = {
    "sends": 2_000,
    "provider_sends": 5_000,
    "scaleout_sends": 3_000,
    "steady_seconds": 3.0,
    "ingest_seconds": 3.0,
    "apply_seconds": 3.0,
    "media_images": 40,
}
THOROUGH: dict[str, float] = {
    "sends": 10_000,
    "provider_sends": 20_000,
    "scaleout_sends": 10_000,
    "steady_seconds": 10.0,
    "ingest_seconds": 6.0,
    "apply_seconds": 8.0,
    "media_images": 100,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make bench ARGS=...", description=__doc__)
    parser.add_argument(
        "--pending",
        type=int,
        default=100_000,
        help="pending (future) sends in the table for the large runs",
    )
    parser.add_argument(
        "--thorough",
        action="store_true",
        help="longer phases, for the figures of bench/RESULTS.md: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in THOROUGH.items())
        + " (flags given explicitly still win)",
    )
    parser.add_argument(
        "--sends",
        type=int,
        help=f"N: sends due at the same moment in each dispatch run ({QUICK['sends']})",
    )
    parser.add_argument(
        "--naive-sends",
        type=int,
        help="sends through the naive one-Schedule-per-send baseline (default: the same N as "
        "--sends; its rate depends on N, as its scheduler looks every 30 s)",
    )
    parser.add_argument(
        "--steady-rate",
        type=float,
        default=1_000.0,
        help="sends/s becoming due one after another in the lateness run",
    )
    parser.add_argument("--steady-seconds", type=float, help=f"({QUICK['steady_seconds']})")
    parser.add_argument(
        "--ingest-seconds", type=float, help=f"each ingest phase ({QUICK['ingest_seconds']})"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="events per batch request")
    parser.add_argument(
        "--apply-seconds",
        type=float,
        help="at most this long the workers apply the ingested events (enrolments/s) "
        f"({QUICK['apply_seconds']})",
    )
    parser.add_argument("--cancel-samples", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; median reported")
    parser.add_argument("--broker", choices=["orm", "redis"], default="orm")
    parser.add_argument(
        "--skip-naive", action="store_true", help="no naive baseline (vs_naive=nan)"
    )
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument(
        "--skip-small",
        action="store_true",
        help="only the --pending level (flat ratios are then nan)",
    )
    parser.add_argument(
        "--media-images",
        type=int,
        help="large images saturating the media cluster in the media scenario "
        f"({QUICK['media_images']}; issue 5: 500)",
    )
    parser.add_argument("--skip-media", action="store_true", help="no media scenario (nan)")
    parser.add_argument(
        "--provider-sends",
        type=int,
        help=f"SMS due at once through the fake provider ({QUICK['provider_sends']})",
    )
    parser.add_argument(
        "--provider-latency-ms", type=float, default=100.0, help="the fake provider's answer time"
    )
    parser.add_argument(
        "--provider-outage-seconds",
        type=float,
        default=30.0,
        help="the fake provider answers 503 to everything this long, mid-stream",
    )
    parser.add_argument(
        "--outage-rate", type=float, default=200.0, help="sends/s of the outage stream"
    )
    parser.add_argument("--skip-provider", action="store_true", help="no provider scenario (nan)")
    parser.add_argument(
        "--scaleout-hosts", type=int, default=4, help="network namespaces of the scale-out run"
    )
    parser.add_argument(
        "--scaleout-sends",
        type=int,
        help=f"SMS due at once, on 1 host then on --scaleout-hosts ({QUICK['scaleout_sends']})",
    )
    parser.add_argument(
        "--scaleout-workers", type=int, default=2, help="messaging workers per scale-out host"
    )
    parser.add_argument(
        "--scaleout-inflight",
        type=int,
        default=8,
        help="provider calls in flight per worker of a scale-out host (NUDGE_DISPATCH_INFLIGHT)",
    )
    parser.add_argument(
        "--skip-scaleout", action="store_true", help="no scale-out scenario (needs root; nan)"
    )
    parser.add_argument(
        "--paths-sends",
        type=int,
        default=2_000,
        help="messages due at once through each of the Twilio and SMTP paths (provider_paths)",
    )
    parser.add_argument(
        "--skip-paths", action="store_true", help="no Twilio/SMTP bursts (provider_paths nan)"
    )
    parser.add_argument(
        "--skip-apply-conditions",
        action="store_true",
        help="no apply_conditions scenario (nan)",
    )
    parser.add_argument(
        "--apply-conditions-only",
        action="store_true",
        help="run the apply_conditions scenario alone (a minute, not the whole bench)",
    )
    parser.add_argument(
        "--apply-conditions-events",
        type=int,
        default=600,
        help="events applied by each side of the apply_conditions scenario, per round",
    )
    parser.add_argument(
        "--stats-sends",
        type=int,
        default=1_000_000,
        help="sends of the stats scenario's journey (GET /api/journeys/{slug}/stats/)",
    )
    parser.add_argument("--stats-requests", type=int, default=300, help="timed stats API requests")
    parser.add_argument("--skip-stats", action="store_true", help="no stats scenario (nan)")
    parser.add_argument(
        "--only-stats", action="store_true", help="the stats scenario alone (its BENCH line)"
    )
    parser.add_argument("--keep", metavar="DIR", help="keep process logs in DIR")
    args = parser.parse_args(argv)
    for name, quick in QUICK.items():
        if getattr(args, name) is None:
            setattr(args, name, THOROUGH[name] if args.thorough else quick)
    if args.naive_sends is None:
        args.naive_sends = args.sends
    return args


# --- environment, before Django is set up ------------------------------------------------------


def prepare_environment(args: argparse.Namespace, work: Path) -> None:
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("bench: run through `make bench` (it starts PostgreSQL)")
    calls = work / "calls"
    calls.mkdir()
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "NUDGE_WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
            "NUDGE_EMAIL_CHANNEL": "bench.channels.CountingChannel",
            "NUDGE_SMS_CHANNEL": "bench.channels.CountingChannel",
            "NUDGE_BENCH_CALLS_DIR": str(calls),
            "MEDIA_ROOT": str(work / "media"),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if args.broker == "redis":
        os.environ["REDIS_URL"] = os.environ["NUDGE_TEST_REDIS_URL"]
    else:
        os.environ.pop("REDIS_URL", None)


# --- processes -------------------------------------------------------------------------------


class Processes:
    """Child processes of one scenario, stopped (and their logs kept) on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str], **env: str) -> subprocess.Popen[bytes]:
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        self.children.append((name, process))
        return process

    def stop(self, timeout: float = 30) -> None:
        for _, process in self.children:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.children:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop in {timeout:.0f} s: killing it")
                process.kill()
                process.wait()
        self.children.clear()

    def check_alive(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise BenchFailure(f"{name} exited with {process.returncode}:\n{tail}")


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return found


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU time so far of every process under `roots` (from /proc)."""
    ticks = 0
    for root in roots:
        for pid in descendants(root):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def postmaster_pid() -> int:
    """The PostgreSQL server of this run (by its port), for CPU accounting."""
    port = sql("SHOW port")[0][0]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"postgres") and f"-p {port}".encode() in b" ".join(argv):
                return int(entry)
    raise BenchFailure(f"no PostgreSQL server on port {port} among the processes")


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Peak RSS of every process under the given roots, sampled every 0.2 s from /proc."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.peak: dict[int, int] = {}
        self.first: dict[int, int] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for root in self.roots:
                for pid in descendants(root):
                    kb = rss_kb(pid)
                    if kb:
                        self.first.setdefault(pid, kb)
                        self.peak[pid] = max(self.peak.get(pid, 0), kb)
            self.stopped.wait(0.2)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- database helpers ------------------------------------------------------------------------


def sql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return list(cursor.fetchall()) if cursor.description else []


def db_now() -> datetime:
    return sql("SELECT now()")[0][0]


def max_send_id() -> int:
    return int(sql("SELECT coalesce(max(id), 0) FROM journeys_scheduledsend")[0][0])


def wait_until_decided(first_id: int, last_id: int, timeout: float, procs: Processes) -> None:
    deadline = time.monotonic() + timeout
    while True:
        (left,) = sql(
            "SELECT count(*) FROM journeys_scheduledsend WHERE id BETWEEN %s AND %s "
            "AND status IN ('pending', 'sending')",
            [first_id, last_id],
        )[0]
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise BenchFailure(f"{left} sends of ids {first_id}..{last_id} still undecided")
        procs.check_alive()
        time.sleep(0.25)


def lateness(first_id: int, last_id: int) -> dict[str, float]:
    row = sql(
        """
        SELECT count(*) FILTER (WHERE status = 'sent'), count(*), min(due_at), max(sent_at),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - due_at)),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - due_at)),
               max(extract(epoch FROM sent_at - due_at))
          FROM journeys_scheduledsend WHERE id BETWEEN %s AND %s
        """,
        [first_id, last_id],
    )[0]
    sent, total, first_due, last_sent, p50, p99, worst = row
    if sent != total:
        raise BenchFailure(f"only {sent} of {total} sends in {first_id}..{last_id} were sent")
    return {
        "n": total,
        "elapsed": (last_sent - first_due).total_seconds(),
        "p50": float(p50),
        "p99": float(p99),
        "max": float(worst),
    }


# --- scenario: the raw claim limit -----------------------------------------------------------


def raw_claim_limit(n: int, journey: Any, step: Any, tag: str) -> float:
    """PostgreSQL's own claim rate: the claim statement alone, batches of 500, one connection."""
    from django.db import connection

    from bench import data

    first = max_send_id() + 1
    global write_seconds_per_row
    elapsed = data.sends_create(
        prefix=f"{tag}-",
        count=n,
        journey_id=journey.pk,
        step_id=step.pk,
        due=db_now() - timedelta(seconds=1),
    )
    write_seconds_per_row = elapsed / n
    last = max_send_id()
    claim = """
        UPDATE journeys_scheduledsend SET status = 'sending', claimed_at = now(),
               updated_at = now(), attempts = attempts + 1
         WHERE id IN (SELECT id FROM journeys_scheduledsend
                       WHERE status = 'pending' AND due_at <= now()
                       ORDER BY due_at LIMIT 500 FOR UPDATE SKIP LOCKED)
        RETURNING id
    """
    claimed = 0
    started = time.perf_counter()
    with connection.cursor() as cursor:
        while True:
            cursor.execute(claim)
            got = len(cursor.fetchall())
            claimed += got
            if got < 500:
                break
    elapsed = time.perf_counter() - started
    if claimed != n:
        raise BenchFailure(f"raw claim took {claimed} rows, expected {n}")
    sql("DELETE FROM journeys_scheduledsend WHERE id BETWEEN %s AND %s", [first, last])
    return n / elapsed


# --- scenario: dispatch through the real cluster ---------------------------------------------


def start_engine(
    procs: Processes, settings_module: str = "bench.settings", **env: str
) -> list[int]:
    cluster = procs.start(
        "qcluster", [PY, "manage.py", "qcluster"], DJANGO_SETTINGS_MODULE=settings_module, **env
    )
    roots = [cluster.pid]
    if settings_module == "bench.settings":
        roots.append(procs.start("ticker", [PY, "manage.py", "nudge_ticker"], **env).pid)
    wait_for_forks(cluster.pid)
    procs.check_alive()
    return roots


def wait_for_forks(root: int, timeout: float = 60) -> None:
    """Until a cluster (nudge.cluster: the qcluster process, its sentinel and the workers, at
    least 3 processes) has forked and no new process came for 0.6 s: it is ready for work.
    Faster than a fixed sleep, and the processes log only warnings, so there is no line to
    wait for."""
    deadline, seen, stable_since = time.monotonic() + timeout, 0, time.monotonic()
    while True:
        count = len(descendants(root))
        if count != seen:
            seen, stable_since = count, time.monotonic()
        elif count >= 3 and time.monotonic() - stable_since >= 0.6:
            return
        if time.monotonic() > deadline:
            raise BenchFailure(f"the cluster forked only {count} processes in {timeout:.0f} s")
        time.sleep(0.1)


def dispatch_burst(
    n: int, journey: Any, step: Any, tag: str, procs: Processes, app_roots: list[int]
) -> dict[str, float]:
    from bench import data

    lead = 2.0 + 2 * n * write_seconds_per_row  # rows are all written before they are due
    first = max_send_id() + 1
    due = db_now() + timedelta(seconds=lead)
    written = time.monotonic()
    data.sends_create(prefix=f"{tag}-", count=n, journey_id=journey.pk, step_id=step.pk, due=due)
    if time.monotonic() - written > lead:
        log(f"warning: writing {n} sends took longer than the {lead:.1f} s lead")
    last = max_send_id()
    app_cpu, db_cpu = cpu_seconds(app_roots), cpu_seconds([postmaster_pid()])
    wait_until_decided(first, last, timeout=lead + 600, procs=procs)
    result = lateness(first, last)
    result["rate"] = n / result["elapsed"]
    # CPU per send is what contention on a shared machine does not change much
    result["app_cpu_ms"] = (cpu_seconds(app_roots) - app_cpu) / n * 1000
    result["db_cpu_ms"] = (cpu_seconds([postmaster_pid()]) - db_cpu) / n * 1000
    return result


def dispatch_steady(
    rate: float,
    seconds: float,
    journey: Any,
    step: Any,
    tag: str,
    procs: Processes,
    channel: str = "email",
) -> dict[str, float]:
    """Sends becoming due one after another (no burst): the lateness a customer sees."""
    from bench import data

    n = int(rate * seconds)
    first = max_send_id() + 1
    due = db_now() + timedelta(seconds=2)
    data.sends_create(
        prefix=f"{tag}-",
        count=n,
        journey_id=journey.pk,
        step_id=step.pk,
        due=due,
        spacing_s=1 / rate,
        channel=channel,
    )
    last = max_send_id()
    wait_until_decided(first, last, timeout=seconds + 600, procs=procs)
    return lateness(first, last)


def naive_baseline(n: int, journey: Any, step: Any, logs: Path) -> dict[str, float]:
    """One django-q2 ONCE Schedule per send, default cluster settings, ORM broker."""
    from django_q.models import Schedule

    from bench import data

    first = max_send_id() + 1
    due = db_now() + timedelta(seconds=3)
    data.sends_create(
        prefix=f"{RUN}naive-", count=n, journey_id=journey.pk, step_id=step.pk, due=due
    )
    last = max_send_id()
    Schedule.objects.bulk_create(
        Schedule(
            func="bench.naive.send_one",
            args=str(pk),
            schedule_type=Schedule.ONCE,
            next_run=due,
            repeats=-1,
        )
        for pk in range(first, last + 1)
    )
    procs = Processes(logs)
    try:
        start_engine(procs, "bench.settings_naive")
        wait_until_decided(first, last, timeout=1800, procs=procs)
    finally:
        procs.stop()
    result = lateness(first, last)
    # the same definition as ours: N over the time from the due moment to the last send
    result["rate"] = n / result["elapsed"]
    return result


# --- scenario: ingest over HTTP --------------------------------------------------------------


def signed_headers(body: bytes) -> dict[str, str]:
    """The webhook-* headers of a fresh delivery of `body`, signed with this run's secret."""
    from marketing.webhooks import sign

    msg_id, stamp = f"msg_{uuid.uuid4().hex}", int(time.time())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(os.environ["NUDGE_WEBHOOK_SECRET"], msg_id, stamp, body),
    }


def _event(event_id: str, user: str, kind: int, now: datetime) -> dict[str, Any]:
    occurred = (now - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    payload: dict[str, Any] = {
        "id": event_id,
        "type": ("user_registered", "checkout_started", "payment_finished")[kind % 3],
        "occurred_at": occurred,
        "user": {
            "id": user,
            "email": f"{user}@example.com",
            "phone": "+14155550101",
            "first_name": "Ana",
            "timezone": "Europe/Berlin",
            # recorded consent: under NUDGE_CONSENT_DEFAULT=deny an unknown one sends nothing
            "consent": {"email": True, "sms": True},
        },
    }
    cart = f"cart-{user}"
    if kind % 3 == 1:
        payload["cart"] = {
            "id": cart,
            "total": "120.00",
            "currency": "EUR",
            "checkout_url": f"https://shop.example/checkout/{cart}",
            "items": [],
        }
    if kind % 3 == 2:
        payload["payment"] = {
            "id": f"pay-{user}",
            "cart_id": cart,
            "amount": "120.00",
            "currency": "EUR",
        }
    return payload


def write_requests(path: Path, url_path: str, bodies: Iterator[bytes], count: int) -> None:
    with open(path, "w") as out:
        for _ in range(count):
            body = next(bodies)
            headers = {
                "Content-Type": "application/json",
                "Host": "127.0.0.1",
                "X-Forwarded-Proto": "https",
                **signed_headers(body),
            }
            head = "|".join(f"{k}={v}" for k, v in headers.items())
            out.write(f"POST\t{url_path}\t{head}\t{body.decode()}\n")


def wrk(port: int, prefix: Path, seconds: float, connections: int, delay_ms: float = 0) -> dict:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(ROOT / "bench" / "wrk_signed.lua"),
        f"http://127.0.0.1:{port}/",
        "--",
        str(prefix),
        str(int(delay_ms)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("WRKJSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    errors = sum(
        result[k]
        for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    if errors:
        raise BenchFailure(f"wrk saw errors: {result}\n{done.stdout}")
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def events_count() -> int:
    return int(sql("SELECT count(*) FROM marketing_event")[0][0])


def settled_events_count() -> int:
    """The event count once the server is quiet: requests still in flight when wrk stopped
    counting (one per connection at most) are stored before it is read."""
    count = events_count()
    while True:
        time.sleep(0.3)
        again = events_count()
        if again == count:
            return count
        count = again


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    log("installing wrk (Debian package)")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*prefix, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
        check=True,
        env=env,
    )


def ingest_round(
    port: int, web_pid: int, args: argparse.Namespace, tag: str, work: Path
) -> dict[str, float]:
    """No-op view, single events, batches, and single events at half the measured rate.
    The first three also give the CPU time the web server and PostgreSQL spent per request
    (`<name>_web_cpu_ms`, `<name>_db_cpu_ms`; per event for batches): where a rate goes."""
    seconds = args.ingest_seconds
    counter = iter(range(10**9))

    def single_bodies() -> Iterator[bytes]:
        # blocks of 300 events: 100 customers register, then start a checkout, then pay
        while True:
            i = next(counter)
            block, offset = divmod(i, 300)
            kind, customer = divmod(offset, 100)
            user = f"{tag}-u{block * 100 + customer}"
            now = datetime.now().astimezone()
            yield json.dumps(_event(f"{tag}-e{i}", user, kind, now)).encode()

    def batch_bodies() -> Iterator[bytes]:
        while True:
            now = datetime.now().astimezone()
            events = []
            for _ in range(args.batch_size):
                i = next(counter)
                events.append(_event(f"{tag}-b{i}", f"{tag}-bu{i // 3}", i, now))
            yield json.dumps({"events": events}).encode()

    budget = int(seconds * 4_000)  # more than any rate this server reaches: never a replay
    out: dict[str, float] = {}
    db_pid = postmaster_pid()

    def measured(name: str, prefix: Path, connections: int, per_request: int = 1) -> dict:
        web, db = cpu_seconds([web_pid]), cpu_seconds([db_pid])
        result = wrk(port, prefix, seconds, connections)
        done = result["requests"] * per_request
        out[f"{name}_web_cpu_ms"] = (cpu_seconds([web_pid]) - web) / done * 1000
        out[f"{name}_db_cpu_ms"] = (cpu_seconds([db_pid]) - db) / done * 1000
        return result

    prefix = work / f"{tag}-noop"
    write_requests(prefix.with_suffix(".0"), "/bench/noop/", single_bodies(), budget)
    out["noop"] = measured("noop", prefix, 4)["rate"]

    before = settled_events_count()
    prefix = work / f"{tag}-single"
    write_requests(prefix.with_suffix(".0"), "/api/events/", single_bodies(), budget)
    single = measured("single", prefix, 4)
    out["single"] = single["rate"]
    out["single_p99_full_ms"] = single["p99_us"] / 1000
    stored = settled_events_count() - before
    if not single["requests"] <= stored <= single["requests"] + 4:
        raise BenchFailure(f"{single['requests']} single events answered, {stored} stored")

    before = settled_events_count()
    prefix = work / f"{tag}-batch"
    write_requests(
        prefix.with_suffix(".0"),
        "/api/events/batch/",
        batch_bodies(),
        # more than any rate this server reaches (30,000 events/s): never a replay
        max(20, int(seconds * 30_000 / args.batch_size)),
    )
    batch = measured("batch", prefix, 2, per_request=args.batch_size)
    events = batch["requests"] * args.batch_size
    stored = settled_events_count() - before
    if not events <= stored <= events + 2 * args.batch_size:
        raise BenchFailure(f"{events} batch events answered, {stored} stored")
    out["batch"] = events / (batch["duration_us"] / 1e6)

    half = out["single"] / 2
    prefix = work / f"{tag}-half"
    write_requests(prefix.with_suffix(".0"), "/api/events/", single_bodies(), budget)
    paced = wrk(port, prefix, seconds, 4, delay_ms=4 * 1000 / half)
    out["half_rate"] = paced["rate"]
    out["half_p50_ms"] = paced["p50_us"] / 1000
    out["half_p99_ms"] = paced["p99_us"] / 1000
    return out


def unapplied_count() -> int:
    return int(sql("SELECT count(*) FROM marketing_event WHERE applied_at IS NULL")[0][0])


def apply_round(seconds: float, logs: Path) -> float:
    """Events applied to journeys per second by the ticker and the messaging cluster, out of
    the backlog the ingest round left (a webhook stores; the workers enrol afterwards), until
    the backlog is gone or `seconds` have passed.
    Whatever is still unapplied after `seconds` is marked so by SQL, so it does not load the
    next dispatch run."""
    backlog = unapplied_count()
    procs = Processes(logs)
    try:
        start_engine(procs)
        before, started = unapplied_count(), time.monotonic()
        after = before
        while after and time.monotonic() - started < seconds:  # until done, or time is up
            time.sleep(0.25)
            after = unapplied_count()
        elapsed = time.monotonic() - started
        procs.check_alive()
    finally:
        procs.stop()
    failed = int(sql("SELECT count(*) FROM marketing_event WHERE apply_attempts > 0")[0][0])
    if failed:
        raise BenchFailure(f"{failed} events failed to apply (see marketing_event.apply_error)")
    if backlog and before == after:
        raise BenchFailure(f"no event of the {backlog} stored was applied in {seconds} s")
    sql(
        "UPDATE marketing_event SET applied_at = now(), apply_error = 'bench: not applied' "
        "WHERE applied_at IS NULL"
    )
    return (before - after) / elapsed


@contextmanager
def web_server(logs: Path) -> Iterator[tuple[int, int]]:
    """gunicorn as in production: (its port, its master's pid)."""
    port = free_port()
    procs = Processes(logs)
    master = procs.start(
        "gunicorn",
        [
            PY,
            "-m",
            "gunicorn",
            "config.wsgi",
            "-c",
            str(ROOT / "config" / "gunicorn.py"),  # the production web settings
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                procs.check_alive()
                time.sleep(0.2)
        yield port, master.pid
    finally:
        procs.stop()


# --- scenario: cancel on payment -------------------------------------------------------------


def cancel_round(samples: int, prefix: str, population: int, tag: str) -> list[float]:
    """payment_finished for customers with a pending send: server time of each request,
    through Django's full request handling (middleware, signature, view, commit), in this
    process prepared as a web worker is (config/gunicorn.py: warmed up, then the start-up
    objects frozen out of the garbage collector's walk)."""
    from django.test import Client

    server_hooks = runpy.run_path(str(ROOT / "config" / "gunicorn.py"))
    client = Client()
    chosen = secrets.SystemRandom().sample(range(1, population + 1), samples + 5)
    times = []
    for i, number in enumerate(chosen):
        warm_up = i < 5  # a server process has loaded its URLs, views and journeys already
        user = f"{prefix}{number}"
        now = datetime.now().astimezone()
        payload = _event(f"{tag}-pay{i}", user, 2, now)
        body = json.dumps(payload).encode()
        headers = signed_headers(body)  # the sender's work, before the server's time starts
        started = time.perf_counter()
        response = client.post(
            "/api/events/",
            data=body,
            content_type="application/json",
            secure=True,
            HTTP_HOST="127.0.0.1",
            headers=headers,
        )
        if not warm_up:
            times.append((time.perf_counter() - started) * 1000)
        elif i == 4:
            server_hooks["post_worker_init"](worker=None)
        if response.status_code != 202:
            raise BenchFailure(f"payment refused: {response.status_code} {response.content!r}")
        (status,) = sql(
            "SELECT s.status FROM journeys_scheduledsend s JOIN marketing_customer c "
            "ON c.id = s.customer_id WHERE c.external_id = %s",
            [user],
        )[0]
        if status != "cancelled":
            raise BenchFailure(f"payment of {user} left its send {status}")
    gc.unfreeze()
    return times


# --- verification ----------------------------------------------------------------------------


def verify_exactly_once(calls_dir: Path, first_id: int) -> tuple[int, int]:
    """Every due send of this run (ids from `first_id`) is sent, and reached the provider
    exactly once; nothing else did."""
    calls: Counter[int] = Counter()
    for path in calls_dir.glob("*.calls"):
        calls.update(int(line) for line in path.read_text().split())
    twice = {pk: count for pk, count in calls.items() if count > 1}
    if twice:
        sample = dict(list(twice.items())[:10])
        raise BenchFailure(f"{len(twice)} sends reached the provider more than once: {sample}")
    undecided = sql(
        "SELECT status, count(*) FROM journeys_scheduledsend WHERE due_at <= now() "
        "AND status <> 'sent' AND status <> 'cancelled' AND id >= %s GROUP BY status",
        [first_id],
    )
    if undecided:
        raise BenchFailure(f"due sends not sent: {undecided}")
    sent = {
        pk
        for (pk,) in sql(
            "SELECT id FROM journeys_scheduledsend WHERE status = 'sent' AND id >= %s", [first_id]
        )
    }
    if sent != set(calls):
        raise BenchFailure(
            f"{len(sent - set(calls))} sent without a provider call, "
            f"{len(set(calls) - sent)} provider calls for sends not marked sent"
        )
    cancelled_called = sql(
        "SELECT count(*) FROM journeys_scheduledsend WHERE status = 'cancelled' AND id = ANY(%s)",
        [list(calls)],
    )[0][0]
    if cancelled_called:
        raise BenchFailure(f"{cancelled_called} cancelled sends reached the provider")
    return len(sent), sum(calls.values())


# --- the run ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float) -> str:
    if value != value:  # nan
        return "nan"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def grow_pending(target: int, journey: Any, step: Any, created: int) -> int:
    """Top the background up to `target` pending sends due in 30 days; returns the new count."""
    from bench import data

    if target > created:
        log(f"writing {target - created} pending sends (due in 30 days)")
        started = time.monotonic()
        data.sends_create(
            prefix=f"{RUN}bg",
            count=target - created,
            journey_id=journey.pk,
            step_id=step.pk,
            due=db_now() + timedelta(days=30),
            start=created + 1,
        )
        log(f"  written in {time.monotonic() - started:.1f} s")
        data.vacuum_analyze()
    return max(target, created)


def level(
    pending: int, args: argparse.Namespace, journey: Any, step: Any, work: Path, logs: Path
) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    from bench import data

    for run in range(args.repeat):
        tag = f"{RUN}p{pending}r{run}"
        log(f"pending={pending} run {run + 1}/{args.repeat}: raw claim limit, N={args.sends}")
        add("limit", raw_claim_limit(args.sends, journey, step, f"{tag}-lim"))
        data.vacuum_analyze()
        procs = Processes(logs)
        try:
            roots = start_engine(procs)
            sampler = RssSampler(roots)
            sampler.start()
            try:
                log(f"  dispatch burst of {args.sends}")
                burst = dispatch_burst(args.sends, journey, step, f"{tag}-d", procs, roots)
                log(f"  steady stream: {args.steady_rate:.0f}/s for {args.steady_seconds} s")
                steady = dispatch_steady(
                    args.steady_rate, args.steady_seconds, journey, step, f"{tag}-s", procs
                )
            finally:
                sampler.stop()
        finally:
            procs.stop()
        data.vacuum_analyze()
        add("rate", burst["rate"])
        add("vs_limit", burst["rate"] / figures["limit"][-1])
        add("cpu_ms", burst["app_cpu_ms"] + burst["db_cpu_ms"])
        add("app_cpu_ms", burst["app_cpu_ms"])
        add("db_cpu_ms", burst["db_cpu_ms"])
        for key in ("p50", "p99", "max"):
            add(f"burst_{key}", burst[key])
            add(f"steady_{key}", steady[key])
        add("rss_mb", max(sampler.peak.values()) / 1024)
        add("rss_growth_mb", max(sampler.peak[p] - sampler.first[p] for p in sampler.peak) / 1024)
        log(
            f"  {burst['rate']:.0f} sends/s (limit {figures['limit'][-1]:.0f} rows/s), "
            f"steady p99 {steady['p99']:.3f} s, peak RSS {figures['rss_mb'][-1]:.0f} MB"
        )
        if not args.skip_ingest:
            with web_server(logs) as (port, web_pid):
                log("  ingest: no-op, single, batch, single at half rate")
                result = ingest_round(port, web_pid, args, f"{tag}-i", work)
            log(f"  applying the stored events to journeys for {args.apply_seconds:.0f} s")
            result["apply"] = apply_round(args.apply_seconds, logs)
            for key, value in result.items():
                add(f"ingest_{key}", value)
            add("ingest_vs_noop", result["single"] / result["noop"])
            log(
                f"  ingest single {result['single']:.0f}/s vs no-op {result['noop']:.0f}/s, "
                f"batch {result['batch']:.0f} events/s, p99 at half rate "
                f"{result['half_p99_ms']:.1f} ms"
            )
    return figures


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nudge-bench-"))
    logs = Path(args.keep) if args.keep else work
    logs.mkdir(parents=True, exist_ok=True)
    prepare_environment(args, work)
    if not args.skip_ingest and not args.apply_conditions_only and not args.only_stats:
        ensure_wrk()

    import django

    django.setup()
    from django.core.management import call_command

    from bench import conditions, media, provider, scaleout
    from bench import stats as stats_scenario
    from journeys import services
    from journeys.models import Journey

    started = time.monotonic()
    if args.only_stats:
        try:
            call_command("migrate", verbosity=0)
            figures = stats_scenario.run(args, f"{RUN}stat", logs)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        print(stats_scenario.bench_line(figures, args.stats_sends))
        return
    try:
        call_command("migrate", verbosity=0)
        services.demo_journeys_ensure()
        journey = Journey.objects.get(slug="welcome-email")
        step = journey.steps.get(position=0)
        pg = sql("SHOW server_version")[0][0]
        settings_shown = {
            name: sql(f"SHOW {name}")[0][0]
            for name in (
                "shared_buffers",
                "fsync",
                "synchronous_commit",
                "work_mem",
                "max_wal_size",
                "autovacuum_vacuum_scale_factor",
            )
        }
        log(f"PostgreSQL {pg}: {settings_shown}")
        conditions_figures = None
        if args.apply_conditions_only:
            log(f"apply_conditions: {args.apply_conditions_events} events, alone")
            conditions_figures = conditions.run(args, f"{RUN}cond")
            print(conditions.bench_line(conditions_figures, args.apply_conditions_events))
            return

        first_id = max_send_id() + 1
        load_before = os.getloadavg()
        naive: dict[str, float] = {"rate": float("nan"), "p99": float("nan")}
        if not args.skip_naive:
            log(f"naive baseline: {args.naive_sends} ONCE schedules, default django-q2 settings")
            naive = naive_baseline(args.naive_sends, journey, step, logs)
            log(f"  naive: {naive['rate']:.1f} sends/s, p99 lateness {naive['p99']:.1f} s")

        created = 0
        small: dict[str, list[float]] = {}
        if not args.skip_small:
            created = grow_pending(1_000, journey, step, created)
            small = level(1_000, args, journey, step, work, logs)
        created = grow_pending(args.pending, journey, step, created)
        large = level(args.pending, args, journey, step, work, logs)
        log(f"cancel: {args.cancel_samples} payments among {args.pending} pending sends")
        cancel_ms = cancel_round(args.cancel_samples, f"{RUN}bg", created, f"{RUN}cancel")
        media_figures = None
        if not args.skip_media:
            media_figures = media.run(args, journey, step, f"{RUN}media", Processes(logs))
        sent, calls = verify_exactly_once(work / "calls", first_id)
        log(f"verified: {sent} sends sent, {calls} provider calls, each exactly once")
        provider_figures = None
        if not args.skip_provider:
            # after the null-provider checks: its SMS reach the fake provider's calls file
            provider_figures = provider.run(args, median(large["rate"]), f"{RUN}prov", work, logs)
        scaleout_figures = None
        if not args.skip_scaleout:
            scaleout_figures = scaleout.run(args, f"{RUN}scale", logs)
        paths_figures = None
        if not args.skip_paths:
            paths_figures = provider.paths_run(
                args.paths_sends, args.provider_latency_ms, f"{RUN}path", work, logs
            )
            paths_figures["latency_ms"] = args.provider_latency_ms
        if not args.skip_apply_conditions:
            log(f"apply_conditions: {args.apply_conditions_events} events per side")
            conditions_figures = conditions.run(args, f"{RUN}cond")
        stats_figures = None
        if not args.skip_stats:
            stats_figures = stats_scenario.run(args, f"{RUN}stat", logs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    m = {key: median(values) for key, values in large.items()}
    s = {key: median(values) for key, values in small.items()}
    nan = float("nan")
    cancel_p50 = statistics.median(cancel_ms)
    cancel_p99 = statistics.quantiles(cancel_ms, n=100)[98]
    rows: list[tuple[str, float | str, float | str]] = [
        ("dispatch rate, N due at once (sends/s)", s.get("rate", nan), m["rate"]),
        ("naive baseline, one ONCE schedule per send (sends/s)", naive["rate"], naive["rate"]),
        ("raw claim limit, PostgreSQL alone (rows/s)", s.get("limit", nan), m["limit"]),
        ("CPU per send: cluster + ticker / PostgreSQL (ms)", _pair(s), _pair(m)),
        ("dispatch rate / raw claim limit, same run", s.get("vs_limit", nan), m["vs_limit"]),
        (
            "flat, raw rates: large / 1k (dispatch, ingest single)",
            "",
            f"{fmt(m['rate'] / s.get('rate', nan))}, "
            f"{fmt(m.get('ingest_single', nan) / s.get('ingest_single', nan))}",
        ),
        ("lateness of the burst p50 / p99 / max (s)", _triple(s, "burst"), _triple(m, "burst")),
        (
            f"lateness, {args.steady_rate:.0f}/s due one by one: p50 / p99 / max (s)",
            _triple(s, "steady"),
            _triple(m, "steady"),
        ),
        ("naive lateness p99 (s)", naive["p99"], naive["p99"]),
        ("ingest no-op view (requests/s)", s.get("ingest_noop", nan), m.get("ingest_noop", nan)),
        (
            "ingest single event (events/s)",
            s.get("ingest_single", nan),
            m.get("ingest_single", nan),
        ),
        (
            "ingest single / no-op, same run",
            s.get("ingest_vs_noop", nan),
            m.get("ingest_vs_noop", nan),
        ),
        (
            "ingest CPU per request, web server / PostgreSQL (ms): no-op view",
            _ingest_cpu(s, "noop"),
            _ingest_cpu(m, "noop"),
        ),
        (
            "ingest CPU per request, web server / PostgreSQL (ms): single event",
            _ingest_cpu(s, "single"),
            _ingest_cpu(m, "single"),
        ),
        (
            "ingest single p99 at full load (ms)",
            s.get("ingest_single_p99_full_ms", nan),
            m.get("ingest_single_p99_full_ms", nan),
        ),
        ("ingest single at half rate: rate / p50 / p99 (ms)", _ingest_half(s), _ingest_half(m)),
        (
            f"ingest batch of {args.batch_size} (events/s)",
            s.get("ingest_batch", nan),
            m.get("ingest_batch", nan),
        ),
        (
            "ingest batch CPU per event, web server / PostgreSQL (ms)",
            _ingest_cpu(s, "batch"),
            _ingest_cpu(m, "batch"),
        ),
        (
            "events applied to journeys by the workers afterwards (events/s)",
            s.get("ingest_apply", nan),
            m.get("ingest_apply", nan),
        ),
        ("cancel on payment p50 / p99 (ms)", "", f"{fmt(cancel_p50)} / {fmt(cancel_p99)}"),
        ("peak RSS of any cluster/ticker process (MB)", s.get("rss_mb", nan), m["rss_mb"]),
        (
            "largest RSS growth of one process over the run (MB)",
            s.get("rss_growth_mb", nan),
            m["rss_growth_mb"],
        ),
    ]
    print()
    print(
        f"Nudge benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, "
        f"PostgreSQL {pg}, broker {args.broker}, medians of {args.repeat} runs, "
        f"{time.monotonic() - started:.0f} s; load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (other work on the machine skews absolute figures)"
    )
    print()
    print(f"| figure | 1k pending | {args.pending:,} pending |")
    print("| --- | ---: | ---: |")
    for name, small_value, large_value in rows:
        cells = [v if isinstance(v, str) else fmt(v) for v in (small_value, large_value)]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    if provider_figures:
        print()
        print(f"| provider scenario ({args.pending:,} pending, one run) | |")
        print("| --- | ---: |")
        for name, value in provider.table_rows(provider_figures):
            print(f"| {name} | {value} |")
    if media_figures:
        print()
        print(f"| media scenario ({args.pending:,} pending, one run) | |")
        print("| --- | ---: |")
        for name, value in media.table_rows(media_figures, args.steady_rate):
            print(f"| {name} | {value} |")
    if scaleout_figures:
        print()
        print(f"| scale-out scenario ({args.scaleout_sends:,} SMS due at once) | 1 host | "
              f"{args.scaleout_hosts} hosts |")  # fmt: skip
        print("| --- | ---: | ---: |")
        for name, one, many in scaleout.table_rows(scaleout_figures):
            print(f"| {name} | {one} | {many} |")
    print()
    # Same-run ratios, each the median over runs of a ratio measured within one run. Flatness
    # compares two levels measured minutes apart, so it is normalised too: dispatch by CPU time
    # per send (what the machine must spend, whatever else runs on it), ingest by the no-op
    # view measured right before it. The raw rate ratios are in the table.
    dispatch_flat = s.get("cpu_ms", nan) / m["cpu_ms"]
    ingest_flat = m.get("ingest_vs_noop", nan) / s.get("ingest_vs_noop", nan)
    print(
        f"BENCH dispatch n={args.sends} sends_per_s={fmt(m['rate'])} "
        f"vs_naive={fmt(m['rate'] / naive['rate'])} vs_limit={fmt(m['vs_limit'])} "
        f"p50_s={fmt(m['steady_p50'])} p99_s={fmt(m['steady_p99'])} "
        f"max_s={fmt(m['steady_max'])}"
    )
    print(
        f"BENCH ingest single_per_s={fmt(m.get('ingest_single', nan))} "
        f"vs_noop={fmt(m.get('ingest_vs_noop', nan))} "
        f"p99_ms={fmt(m.get('ingest_half_p99_ms', nan))} "
        f"batch_per_s={fmt(m.get('ingest_batch', nan))}"
    )
    print(f"BENCH cancel pending={args.pending} p50_ms={fmt(cancel_p50)} p99_ms={fmt(cancel_p99)}")
    print(f"BENCH flat dispatch_ratio={fmt(dispatch_flat)} ingest_ratio={fmt(ingest_flat)}")
    print(f"BENCH memory worker_peak_rss_mb={fmt(max(m['rss_mb'], s.get('rss_mb', 0)))}")
    print(media.bench_line(media_figures, 0 if args.skip_media else args.media_images))
    print(provider.bench_line(provider_figures))
    print(scaleout.bench_line(scaleout_figures, args.scaleout_hosts))
    print(provider.paths_line(paths_figures))
    print(conditions.bench_line(conditions_figures, args.apply_conditions_events))
    print(stats_scenario.bench_line(stats_figures, 0 if args.skip_stats else args.stats_sends))


def _triple(figures: dict[str, float], kind: str) -> str:
    if f"{kind}_p50" not in figures:
        return "nan"
    return " / ".join(fmt(figures[f"{kind}_{q}"]) for q in ("p50", "p99", "max"))


def _pair(figures: dict[str, float]) -> str:
    if "app_cpu_ms" not in figures:
        return "nan"
    return f"{fmt(figures['app_cpu_ms'])} / {fmt(figures['db_cpu_ms'])}"


def _ingest_cpu(figures: dict[str, float], name: str) -> str:
    if f"ingest_{name}_web_cpu_ms" not in figures:
        return "nan"
    web, db = figures[f"ingest_{name}_web_cpu_ms"], figures[f"ingest_{name}_db_cpu_ms"]
    return f"{fmt(web)} / {fmt(db)}"


def _ingest_half(figures: dict[str, float]) -> str:
    if "ingest_half_rate" not in figures:
        return "nan"
    return " / ".join(fmt(figures[f"ingest_half_{q}"]) for q in ("rate", "p50_ms", "p99_ms"))


def cli() -> None:
    try:
        main()
    except BenchFailure as exc:
        log(f"FAILED: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    cli()
