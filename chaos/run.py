"""The fault-injection run (`make chaos`, issue 14): the real processes of a deployment, a
planned workload of signed events, faults injected while it runs, and a checker at the end.

Processes, each restarted by this harness when it dies, as a supervisor would (1 s later):

- gunicorn (config/gunicorn.py), which receives every event, signed, over HTTP;
- `manage.py nudge_ticker`;
- `manage.py qcluster`: the messaging cluster, Redis as its broker (REDIS_URL);
- a second `qcluster` of one worker under `faketime` (its clock --clock-offset off), on the
  same queue;
- the fake SMS provider (bench/fake_provider.py), which the generic HTTP SMS backend calls
  (NUDGE_SMS_URL) and which logs every message request by send id (--messages-file).

The workload (chaos.plan): customers registering over the window, checkouts, payments
early, late or racing their due sends, payments posted before the registration they
follow, opt-outs; 20% of the events delivered twice or more, shuffled.

The faults (chaos.faults), spread over the window: kill -9 of random messaging workers,
among them the idle one blocked reading the task queue; kill -9 of the ticker and of the
whole cluster; `pg_ctl restart -m fast`; provider outages (connection refused, 503s, slow
answers, accepted then timed out); a FLUSHALL of the broker.

Then it waits for the work to drain, stops everything, and the checker (chaos.checker)
prints its CHAOS line; the exit status is 1 on any violation.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import queue
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos import faults
from chaos.checker import Expectation, Report, check, records_read, rows_load
from chaos.plan import CHECKOUT, CHECKOUT_DELAY, WELCOME, WELCOME_DELAY, Delivery, Plan, plan_make

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
RUN = secrets.token_hex(3)

JOURNEYS: list[dict[str, Any]] = [
    {
        "slug": WELCOME,
        "name": "Chaos: welcome SMS with a discount code",
        "trigger": "user_registered",
        "exit_on": ["payment_finished"],
        "exit_scope": "customer",
        "dedupe": "first",
        "reentry": "once",
        "max_lateness": "PT10M",
        "steps": [
            {
                "delay": f"PT{WELCOME_DELAY:.0f}S",
                "channel": "sms",
                "template": {
                    "body": "Hi {{ customer.first_name }}, code {{ discount.code }} gives "
                    "{{ discount.percent_off }}% off."
                },
                "discount": {"percent_off": 10, "valid_for": "P7D"},
            }
        ],
    },
    {
        "slug": CHECKOUT,
        "name": "Chaos: abandoned checkout SMS",
        "trigger": "checkout_started",
        "exit_on": ["payment_finished"],
        "exit_scope": "customer",
        "dedupe": "latest",
        "max_wait": "PT2H",
        "reentry": "every",
        "max_lateness": "PT10M",
        "steps": [
            {
                "delay": f"PT{CHECKOUT_DELAY:.0f}S",
                "channel": "sms",
                "template": {"body": "Hi {{ customer.first_name }}, your cart is waiting."},
            }
        ],
    },
]


# libfaketime 0.9.10 and Python 3.11 disagree on one call: with the monotonic clock faked
# too, every timed wait (threading.Event.wait) lasts the offset longer; with it left real
# (DONT_FAKE_MONOTONIC=1), time.sleep's clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) fails
# with EINVAL. So the skewed cluster runs with the wall clock faked (time.time, datetime.now,
# Django's timezone.now: what its code reads) and this sitecustomize makes time.sleep a
# select() with a relative timeout, which libfaketime leaves alone.
FAKETIME_SHIM = """\
import select
import time


def _sleep(seconds):
    select.select([], [], [], max(0.0, seconds))


time.sleep = _sleep
"""


STOCK_QCLUSTER = [
    PY,
    "-c",
    "import django; django.setup(); "
    "from django_q.management.commands.qcluster import Command; "
    "Command().run_from_argv(['manage.py', 'qcluster'])",
]


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make chaos ARGS=...", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="distinct events")
    parser.add_argument(
        "--window",
        type=float,
        help="seconds over which events are posted and faults injected "
        "(default: events / 400, at least 90)",
    )
    parser.add_argument("--seed", type=int, default=None, help="plan and fault schedule")
    parser.add_argument("--worker-kills", type=int, default=20)
    parser.add_argument(
        "--idle-kills",
        type=int,
        default=None,
        help="of the worker kills, those aimed at the idle worker blocked on the task queue "
        "read (default: a third, at least 1)",
    )
    parser.add_argument("--ticker-kills", type=int, default=2)
    parser.add_argument("--cluster-kills", type=int, default=2)
    parser.add_argument("--pg-restarts", type=int, default=5)
    parser.add_argument("--outages", type=int, default=10, help="provider outages")
    parser.add_argument("--outage-seconds", type=float, default=6.0)
    parser.add_argument("--purges", type=int, default=1, help="FLUSHALL of the broker")
    parser.add_argument(
        "--clock-offset",
        default="+2m",
        help="faketime offset of the extra one-worker cluster ('' for none)",
    )
    parser.add_argument("--provider-latency-ms", type=float, default=50.0)
    parser.add_argument(
        "--sms-timeout", type=float, default=2.0, help="the SMS backend's read timeout (s)"
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=2.0,
        help="NUDGE_SETTLE_SECONDS of the processes: short, so that the plan's payments still "
        "race the sends' due moments (the default 60 s would move every due time past them)",
    )
    parser.add_argument("--senders", type=int, default=4, help="concurrent HTTP posters")
    parser.add_argument("--batch", type=int, default=250, help="events per batch request")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=330.0,
        help="at most this long after the window for the work to finish",
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=200.0,
        help="give up draining after this long without progress (the send lease is 120 s)",
    )
    parser.add_argument(
        "--stock-django-q2",
        action="store_true",
        help="run django-q2's own qcluster command for the messaging cluster instead of "
        "`manage.py qcluster` (Nudge's): shows what Nudge's cluster fixes (django-q2#23)",
    )
    parser.add_argument("--keep", metavar="DIR", help="keep the process logs and files in DIR")
    args = parser.parse_args(argv)
    if args.window is None:
        args.window = max(90.0, args.events / 400)
    if args.idle_kills is None:
        args.idle_kills = max(1, args.worker_kills // 3) if args.worker_kills else 0
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(10**6)
    return args


# --- processes ---------------------------------------------------------------------------


@dataclass
class Service:
    """One supervised process, in a session of its own (its whole tree is one group)."""

    name: str
    command: list[str]
    env: dict[str, str]
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    unexpected_exits: int = 0

    def start(self) -> None:
        out = open(self.logs / f"{self.name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen(  # noqa: S603 (our own commands)
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 20.0) -> tuple[float, bool]:
        """SIGTERM to its group, SIGKILL after `grace`: (seconds it took, SIGKILL needed)."""
        if self.process is None:
            return 0.0, False
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
            killed = False
        except subprocess.TimeoutExpired:
            killed = True
        with contextlib.suppress(ProcessLookupError):  # what is left of the group goes too
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        return time.monotonic() - started, killed


class Supervisor(threading.Thread):
    """Restarts any service that exits, one second later, until stopped."""

    def __init__(self, services: list[Service]) -> None:
        super().__init__(daemon=True)
        self.services = services
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        died: dict[str, float] = {}
        while not self.stopping.wait(0.2):
            with self.lock:
                for service in self.services:
                    if service.alive():
                        continue
                    now = time.monotonic()
                    if service.name not in died:
                        died[service.name] = now
                        service.unexpected_exits += 1
                    elif now - died[service.name] >= 1.0:
                        del died[service.name]
                        service.start()


# --- the fake provider -------------------------------------------------------------------


@dataclass
class Provider:
    url: str

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        host, port = self.url.removeprefix("http://").split(":")
        for _ in range(100):
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                data = json.dumps(body).encode() if body is not None else None
                connection.request(method, path, body=data)
                response = connection.getresponse()
                payload = response.read()
                return json.loads(payload) if payload else None
            except OSError:
                time.sleep(0.1)  # refusing connections (an outage): try again
            finally:
                connection.close()
        raise RuntimeError(f"the fake provider does not answer {method} {path}")

    def control(self, **changes: Any) -> None:
        self._request("POST", "/_control", changes)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._request("GET", "/_stats")
        return stats


# --- posting the events --------------------------------------------------------------------


@dataclass
class Ingest:
    """What the posters did: the first 2xx answer's time of each event, and the trouble."""

    first_ok: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    refused: dict[str, str] = field(default_factory=dict)  # event id -> a 4xx answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, event_id: str, at: float) -> None:
        with self.lock:
            if event_id not in self.first_ok:
                self.first_ok[event_id] = at


class Poster(threading.Thread):
    def __init__(
        self, port: int, work: queue.Queue[list[Delivery] | None], ingest: Ingest, bodies: Any
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.work = work
        self.ingest = ingest
        self.bodies = bodies
        self.connection: http.client.HTTPConnection | None = None

    def run(self) -> None:
        while True:
            batch = self.work.get()
            if batch is None:
                return
            self._post(batch)

    def _send(self, path: str, body: bytes) -> tuple[int, bytes]:
        from marketing.webhooks import sign

        msg_id, stamp = f"msg_{uuid.uuid4().hex}", int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Host": "127.0.0.1",
            "X-Forwarded-Proto": "https",
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(os.environ["NUDGE_WEBHOOK_SECRET"], msg_id, stamp, body),
        }
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            self.connection.request("POST", path, body=body, headers=headers)
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = None
            raise

    def _post(self, deliveries: list[Delivery]) -> None:
        single = len(deliveries) == 1 and deliveries[0].single
        if single:
            path, body = "/api/events/", self.bodies(deliveries[0].event_id)
        else:
            events = b",".join(self.bodies(d.event_id) for d in deliveries)
            path, body = "/api/events/batch/", b'{"events": [' + events + b"]}"
        pause = 0.2
        while True:
            self.ingest.requests += 1
            try:
                status, answer = self._send(path, body)
            except (OSError, http.client.HTTPException) as exc:
                self.ingest.failures[type(exc).__name__] += 1
                status, answer = 0, b""
            now = time.time()
            if single and status in (200, 202):
                self.ingest.ok(deliveries[0].event_id, now)
                return
            if not single and status == 200:
                retry: list[Delivery] = []
                for delivery, result in zip(deliveries, json.loads(answer)["results"], strict=True):
                    if result["status"] in (200, 202):
                        self.ingest.ok(delivery.event_id, now)
                    elif result["status"] >= 500:
                        retry.append(delivery)
                    else:
                        self.ingest.refused[delivery.event_id] = json.dumps(result)[:300]
                if not retry:
                    return
                deliveries = retry
                events = b",".join(self.bodies(d.event_id) for d in deliveries)
                body = b'{"events": [' + events + b"]}"
            elif 400 <= status < 500 and status not in (408, 429):
                for delivery in deliveries:
                    self.ingest.refused[delivery.event_id] = f"{status} {answer[:200]!r}"
                return
            elif status:
                self.ingest.failures[f"http {status}"] += 1
            self.ingest.retries += 1
            time.sleep(pause)
            pause = min(2.0, pause * 2)


def post_all(
    plan: Plan, t0: float, port: int, args: argparse.Namespace, ingest: Ingest
) -> threading.Thread:
    """A thread that posts every delivery of the plan at its moment (batches of what falls
    due together, in its shuffled order), through --senders concurrent posters."""
    cache: dict[str, bytes] = {}

    def body(event_id: str) -> bytes:
        found = cache.get(event_id)
        if found is None:
            occurred = datetime.fromtimestamp(t0 + plan.occurred[event_id], tz=UTC)
            payload = {
                **plan.events[event_id],
                "occurred_at": occurred.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }
            found = cache[event_id] = json.dumps(payload).encode()
        return found

    work: queue.Queue[list[Delivery] | None] = queue.Queue()
    posters = [Poster(port, work, ingest, body) for _ in range(args.senders)]
    for poster in posters:
        poster.start()

    def feed() -> None:
        pending = list(plan.deliveries)
        i = 0
        while i < len(pending):
            now = time.time() - t0
            due: list[Delivery] = []
            while i < len(pending) and pending[i].at <= now:
                due.append(pending[i])
                i += 1
            batch: list[Delivery] = []
            for delivery in due:
                if delivery.single:
                    work.put([delivery])
                else:
                    batch.append(delivery)
                    if len(batch) >= args.batch:
                        work.put(batch)
                        batch = []
            if batch:
                work.put(batch)
            time.sleep(0.25)
        for _ in posters:
            work.put(None)
        for poster in posters:
            poster.join()

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


# --- faults --------------------------------------------------------------------------------


@dataclass
class FaultLog:
    entries: list[tuple[float, str, str]] = field(default_factory=list)  # (t, kind, detail)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, t: float, kind: str, detail: str) -> None:
        with self.lock:
            self.entries.append((t, kind, detail))
        log(f"fault at {t:6.1f} s: {kind} {detail}")

    def counts(self) -> Counter[str]:
        return Counter(kind for _, kind, detail in self.entries if not detail.startswith("no "))


class Injector(threading.Thread):
    def __init__(
        self,
        plan: list[tuple[float, str]],
        t0: float,
        services: dict[str, Service],
        provider: Provider,
        args: argparse.Namespace,
        faults_log: FaultLog,
    ) -> None:
        super().__init__(daemon=True)
        self.plan = plan
        self.t0 = t0
        self.services = services
        self.provider = provider
        self.args = args
        self.log = faults_log
        self.rng = random.Random(args.seed + 1)
        self.redis_url = os.environ["REDIS_URL"]
        self.redis_port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        self.pg = faults.PostgresControl()
        self.worker_kills = 0
        self.outages = 0
        self.restart_seconds: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for at, kind in self.plan:
                time.sleep(max(0.0, self.t0 + at - time.time()))
                getattr(self, f"_{kind}")(time.time() - self.t0)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            log(f"fault injector failed: {exc!r}")

    def _worker_kill(self, t: float) -> None:
        self.worker_kills += 1
        # every idle kill aimed at the worker blocked reading the queue, spread over the run
        idle_turn = self.args.idle_kills and (
            (self.worker_kills * self.args.idle_kills) // max(1, self.args.worker_kills)
            != ((self.worker_kills - 1) * self.args.idle_kills) // max(1, self.args.worker_kills)
        )
        # the idle reader is looked for 5 s (a loaded cluster has none most of the time),
        # then any worker is killed instead; with no worker at all for 20 s, none is
        started = time.monotonic()
        workers: list[int] = []
        listed = 0.0
        while True:
            waited = time.monotonic() - started
            if not workers or time.monotonic() - listed > 0.5:  # the Stat and /proc: costly
                workers = faults.cluster_workers(self.services["messaging"].pid)
                listed = time.monotonic()
            target, what = None, "worker"
            if workers and idle_turn:
                target = faults.idle_reader(workers, redis_port=self.redis_port)
                what = "idle worker blocked on the queue read"
            if workers and target is None and (not idle_turn or waited > 5):
                target = self.rng.choice(workers)
                what = "worker (no idle reader in 5 s)" if idle_turn else "worker"
            if target is not None:
                blocked = faults.blocked_on(target, redis_port=self.redis_port) or "running"
                faults.kill9(target)
                self.log.add(t, "worker_kill", f"{what} {target} (in: {blocked})")
                return
            if waited > 20:
                self.log.add(t, "worker_kill", "no worker found in 20 s")
                return
            time.sleep(0.02)

    def _ticker_kill(self, t: float) -> None:
        count = faults.kill9_tree(self.services["ticker"].pid)
        self.log.add(t, "ticker_kill", f"{count} processes")

    def _cluster_kill(self, t: float) -> None:
        count = faults.kill9_tree(self.services["messaging"].pid)
        self.log.add(t, "cluster_kill", f"the whole messaging cluster, {count} processes")

    def _pg_restart(self, t: float) -> None:
        if not self.pg.available:
            self.log.add(t, "pg_restart", "no NUDGE_PG_DATA: run through scripts/services.sh")
            return
        took = self.pg.restart()
        self.restart_seconds.append(took)
        self.log.add(t, "pg_restart", f"pg_ctl restart -m fast, {took:.1f} s")

    def _provider_outage(self, t: float) -> None:
        kind = faults.OUTAGE_KINDS[self.outages % len(faults.OUTAGE_KINDS)]
        self.outages += 1
        seconds = self.args.outage_seconds
        start, end = faults.outage_changes(kind, seconds, timeout_s=self.args.sms_timeout)
        normal = {"latency_ms": self.args.provider_latency_ms}

        def outage() -> None:
            self.provider.control(**start)
            time.sleep(seconds)
            if kind != "refused":
                self.provider.control(**end, **normal)

        threading.Thread(target=outage, daemon=True).start()
        self.log.add(t, "provider_outage", f"{kind} for {seconds:.0f} s")

    def _broker_purge(self, t: float) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        queued = sum(int(client.llen(key) or 0) for key in client.keys("*:q"))
        client.flushall()
        self.log.add(t, "broker_purge", f"FLUSHALL ({queued} queued tasks dropped)")


class Liveness(threading.Thread):
    """Watches the messaging cluster's workers for a stall: a span of at least
    STALL_SECONDS in which they used no CPU while tasks waited in its Redis queue. A cluster
    whose workers survive each other's death never stalls; django-q2's own wedges on
    django-q2#23 (its pusher then still fills the wedged local queue, so the Redis queue
    grows once that is full, unless another cluster on the queue takes the tasks: the
    clock-skewed one does, so the summary also gives each cluster's CPU)."""

    STALL_SECONDS = 15.0
    EVERY = 2.5

    def __init__(self, services: dict[str, Service]) -> None:
        super().__init__(daemon=True)
        self.services = services
        self.stopping = threading.Event()
        self.stalls: list[tuple[float, float]] = []  # (start, seconds), epoch
        # per stall: the most tasks seen queued, and the skewed cluster's CPU meanwhile
        self.stall_detail: list[tuple[int, float]] = []
        self.busy_s = {"messaging": 0.0, "skewed": 0.0}

    def _cpu(self, name: str, last: dict[int, float]) -> tuple[float, dict[int, float], bool]:
        """CPU seconds used since `last` by the workers of the cluster `name`, the new
        sample, and whether it has workers at all."""
        service = self.services.get(name)
        if service is None or not service.alive():
            return 0.0, {}, False
        workers = faults.cluster_workers(service.pid)
        now = faults.cpu_seconds(workers)
        used = sum(max(0.0, cpu - last.get(pid, cpu)) for pid, cpu in now.items())
        return used, now, bool(workers)

    def run(self) -> None:
        import redis

        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        main: dict[int, float] = {}
        most_queued, skewed_cpu = 0, 0.0
        skewed: dict[int, float] = {}
        since: float | None = None
        waited_at: float | None = None
        counted = False
        while not self.stopping.wait(self.EVERY):
            used, main, has_workers = self._cpu("messaging", main)
            other, skewed, _ = self._cpu("skewed", skewed)
            self.busy_s["messaging"] += used
            self.busy_s["skewed"] += other
            try:
                queued = int(client.llen("django_q:messaging:q") or 0)
            except redis.RedisError:
                queued = 0
            now = time.time()
            if not has_workers or used >= 0.05:  # working (or restarting): no stall
                since, waited_at, counted = None, None, False
                continue
            if since is None:
                since, most_queued, skewed_cpu = now, 0, 0.0
            most_queued, skewed_cpu = max(most_queued, queued), skewed_cpu + other
            if queued > 0:
                waited_at = now  # the last moment tasks waited while the workers idled
            if waited_at is not None and waited_at - since >= self.STALL_SECONDS:
                if not counted:
                    self.stalls.append((since, 0.0))
                    self.stall_detail.append((0, 0.0))
                    counted = True
                self.stalls[-1] = (since, waited_at - since)
                self.stall_detail[-1] = (most_queued, skewed_cpu)


# --- the database, read by this process ----------------------------------------------------


def db_read(query: str, params: Any = None) -> list[tuple[Any, ...]] | None:
    """A query that a PostgreSQL restart may fail: None then (the next one reconnects)."""
    from django.db import Error, connection

    try:
        with connection.cursor() as cursor:
            cursor.execute(query, params)
            return list(cursor.fetchall())
    except Error:
        connection.close()
        return None


def progress(run_prefix: str) -> dict[str, int] | None:
    like = f"{run_prefix}-%"
    events = db_read(
        "SELECT count(*), count(*) FILTER (WHERE e.applied_at IS NULL) FROM marketing_event e "
        "WHERE e.event_id LIKE %s",
        [like],
    )
    sends = db_read(
        "SELECT s.status, count(*) FROM journeys_scheduledsend s JOIN journeys_journey j "
        "ON j.id = s.journey_id WHERE j.slug IN %s GROUP BY s.status",
        [(WELCOME, CHECKOUT)],
    )
    if events is None or sends is None:
        return None
    out = {"events": events[0][0], "unapplied": events[0][1]}
    out.update({status: count for status, count in sends})
    return out


# --- the run -------------------------------------------------------------------------------


def environment(work: Path, provider_port: int, args: argparse.Namespace) -> dict[str, str]:
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("chaos: run through `make chaos` (scripts/services.sh starts PostgreSQL)")
    if not os.environ.get("NUDGE_TEST_REDIS_URL"):
        raise SystemExit("chaos: no NUDGE_TEST_REDIS_URL (scripts/services.sh starts Redis)")
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    sms = f"http://127.0.0.1:{provider_port}/messages?timeout={args.sms_timeout}&connect_timeout=1"
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "REDIS_URL": os.environ["NUDGE_TEST_REDIS_URL"],
        "NUDGE_WEBHOOK_SECRET": secret,
        "NUDGE_SMS_CHANNEL": "journeys.channels.sms.SmsChannel",
        "NUDGE_SMS_URL": sms,
        "NUDGE_SMS_HTTP_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        "NUDGE_EMAIL_CHANNEL": "journeys.channels.OutboxChannel",
        "NUDGE_SETTLE_SECONDS": str(args.settle_seconds),
        # the plan's invariants hold at any hour: no quiet hours
        "NUDGE_SEND_WINDOW": "",
        "MEDIA_ROOT": str(work / "media"),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        "WEB_CONCURRENCY": "2",
    }
    os.environ.update(env)
    return {**os.environ}


def journeys_create() -> None:
    from journeys import services
    from journeys.selectors import known_event_types
    from journeys.specs import journey_spec_parse

    for spec in JOURNEYS:
        parsed, errors = journey_spec_parse(spec, known_types=known_event_types())
        if errors or parsed is None:
            raise SystemExit(f"chaos: journey {spec['slug']} refused: {errors}")
        services.journey_save_spec(spec=parsed)


def wait_for_port(port: int, service: Service, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or not service.alive():
                tail = (service.logs / f"{service.name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"chaos: {service.name} did not start:\n{tail}") from None
            time.sleep(0.2)


def expectations(plan: Plan, ingest: Ingest) -> dict[str, Expectation]:
    out = {}
    for external_id, customer in plan.customers.items():
        paid = ingest.first_ok.get(customer.payment_event or "")
        opted = ingest.first_ok.get(customer.optout_event or "")
        out[external_id] = Expectation(
            must=set(customer.must), may=set(customer.may), paid_at=paid, opted_out_at=opted
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nudge-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    provider_port, web_port = faults_free_port(), faults_free_port()
    env = environment(work, provider_port, args)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    journeys_create()
    plan = plan_make(events=args.events, window=args.window, run_id=f"c{RUN}", seed=args.seed)
    log(f"plan: {plan.counts()}, window {args.window:.0f} s, seed {args.seed}, work dir {work}")
    messages = work / "provider.messages"
    python = [PY, "manage.py"]
    services = {
        "provider": Service(
            "provider",
            [
                PY,
                "-m",
                "bench.fake_provider",
                "--port",
                str(provider_port),
                "--calls-file",
                str(work / "provider.calls"),
                "--messages-file",
                str(messages),
                "--latency-ms",
                str(args.provider_latency_ms),
            ],
            env,
            work,
        ),
        "web": Service(
            "web",
            [
                PY,
                "-m",
                "gunicorn",
                "config.wsgi",
                "-c",
                str(ROOT / "config" / "gunicorn.py"),
                "--bind",
                f"127.0.0.1:{web_port}",
                "--log-level",
                "warning",
            ],
            env,
            work,
        ),
        "ticker": Service("ticker", [*python, "nudge_ticker"], env, work),
        "messaging": Service(
            "messaging",
            STOCK_QCLUSTER if args.stock_django_q2 else [*python, "qcluster"],
            env,
            work,
        ),
    }
    if args.clock_offset:
        shim = work / "faketime-shim"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(FAKETIME_SHIM)
        skewed = {
            **env,
            "Q_MESSAGING_WORKERS": "1",
            "DONT_FAKE_MONOTONIC": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")])),
        }
        services["skewed"] = Service(
            "skewed", ["faketime", "-f", args.clock_offset, *python, "qcluster"], skewed, work
        )
    for service in services.values():
        service.start()
    wait_for_port(provider_port, services["provider"])
    wait_for_port(web_port, services["web"])
    provider = Provider(f"http://127.0.0.1:{provider_port}")
    deadline = time.monotonic() + 60
    while not faults.cluster_workers(services["messaging"].pid):
        if time.monotonic() > deadline:
            raise SystemExit("chaos: the messaging cluster has no workers after 60 s")
        time.sleep(0.2)
    supervisor = Supervisor(list(services.values()))
    supervisor.start()
    setup_s = time.monotonic() - started

    counts = {
        "worker_kill": args.worker_kills,
        "ticker_kill": args.ticker_kills,
        "cluster_kill": args.cluster_kills,
        "pg_restart": args.pg_restarts,
        "provider_outage": args.outages,
        "broker_purge": args.purges,
    }
    fault_plan = faults.schedule(window=args.window, counts=counts, seed=args.seed)
    t0 = time.time() + 1.0
    ingest = Ingest()
    faults_log = FaultLog()
    poster = post_all(plan, t0, web_port, args, ingest)
    injector = Injector(fault_plan, t0, services, provider, args, faults_log)
    injector.start()
    liveness = Liveness(services)
    liveness.start()
    log(f"running: {len(plan.deliveries)} deliveries and {len(fault_plan)} faults")
    last: dict[str, int] | None = None
    while poster.is_alive() or injector.is_alive():
        time.sleep(10)
        last = progress(f"c{RUN}") or last
        log(f"  {time.time() - t0:5.0f} s: {last}, {len(ingest.first_ok)} events answered")
    window_s = time.time() - t0
    log(f"posted and injected in {window_s:.0f} s; draining")

    # drain: until every event is applied and every send decided, or no progress
    drain_started = time.monotonic()
    stalled_since = time.monotonic()
    provider_seen = -1
    outcome = "drained"
    now_progress = last
    logged = time.monotonic()
    while True:
        if time.monotonic() - logged >= 10:
            logged = time.monotonic()
            log(f"  draining {logged - drain_started:4.0f} s: {now_progress}")
        now_progress = progress(f"c{RUN}") or now_progress
        delivered = provider.stats()["deliveries"]
        if now_progress is not None:
            undecided = now_progress.get("pending", 0) + now_progress.get("sending", 0)
            if now_progress["unapplied"] == 0 and undecided == 0:
                break
            if now_progress != last or delivered != provider_seen:
                stalled_since = time.monotonic()
            last, provider_seen = now_progress, delivered
        if time.monotonic() - stalled_since > args.stall_seconds:
            outcome = f"stalled: no progress for {args.stall_seconds:.0f} s"
            break
        if time.monotonic() - drain_started > args.drain_timeout:
            outcome = f"drain timeout after {args.drain_timeout:.0f} s"
            break
        time.sleep(2)
    drain_s = time.monotonic() - drain_started
    log(f"{outcome} in {drain_s:.0f} s: {now_progress}")

    provider.stats()  # flushes its files
    liveness.stopping.set()
    liveness.join()
    supervisor.stopping.set()
    supervisor.join()
    stops = {}
    for name in ("web", "ticker", "skewed", "messaging", "provider"):
        if name in services:
            stops[name] = services[name].stop()

    report, extra = verdict(plan, ingest, messages, stalls=len(liveness.stalls))
    print_summary(
        args,
        plan,
        ingest,
        faults_log,
        injector,
        liveness,
        services,
        stops,
        report,
        extra,
        timings={
            "setup": setup_s,
            "window": window_s,
            "drain": drain_s,
            "total": time.monotonic() - started,
        },
        outcome=outcome,
        t0=t0,
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report.ok else 1


def faults_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def verdict(
    plan: Plan, ingest: Ingest, messages: Path, *, stalls: int
) -> tuple[Report, dict[str, Any]]:
    from django.db import connection

    from journeys.models import ScheduledSend
    from marketing.models import Event

    connection.close()  # it may predate the last PostgreSQL restart
    prefix = f"c{RUN}-"
    records = records_read(messages)
    rows = rows_load(journey_slugs=[WELCOME, CHECKOUT])
    unapplied = Event.objects.filter(event_id__startswith=prefix, applied_at__isnull=True).count()
    not_ingested = sum(1 for event_id in plan.events if event_id not in ingest.first_ok)
    report = check(
        records=records,
        rows=rows,
        customers=expectations(plan, ingest),
        unapplied_events=unapplied,
        not_ingested=not_ingested,
        cluster_stalls=stalls,
    )
    pay_first = 0
    for customer in plan.customers.values():
        if customer.scenario == "pay_first":
            paid = ingest.first_ok.get(customer.payment_event or "", float("inf"))
            registered = ingest.first_ok.get(f"{customer.external_id}-reg", float("inf"))
            pay_first += paid < registered
    statuses = Counter(row.status for row in rows)
    reasons = Counter(
        (row.status, _reason_kind(row.reason)) for row in rows if row.status != "sent"
    )
    extra = {
        "requests": Counter(r.fate for r in records),
        "statuses": dict(statuses),
        "reasons": reasons.most_common(12),
        "pay_first_committed_first": pay_first,
        "ambiguous_retries_rows": ScheduledSend.objects.filter(ambiguous_retries__gt=0).count(),
    }
    return report, extra


def _reason_kind(reason: str) -> str:
    """A reason without its specifics (times, ids), for counting."""
    reason = re.sub(r"c[0-9a-f]{6}-\S+", "<id>", reason)
    reason = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z?", "<time>", reason)
    return re.sub(r"\d+(\.\d+)? (s|ms|min)\b", "<n> \\2", reason)[:100]


def print_summary(
    args: argparse.Namespace,
    plan: Plan,
    ingest: Ingest,
    faults_log: FaultLog,
    injector: Injector,
    liveness: Liveness,
    services: dict[str, Service],
    stops: dict[str, tuple[float, bool]],
    report: Report,
    extra: dict[str, Any],
    *,
    timings: dict[str, float],
    outcome: str,
    t0: float,
) -> None:
    counts = plan.counts()
    print()
    print(
        f"Nudge chaos run {RUN}, {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, "
        f"seed {args.seed}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"workload: {counts['events']} events from {counts['customers']} customers, "
        f"{counts['deliveries']} deliveries ({counts['repeated_events']} events delivered twice "
        f"or more), {counts['payments']} payments; scenarios "
        + ", ".join(f"{k[9:]} {v}" for k, v in counts.items() if k.startswith("scenario_"))
    )
    print(
        f"  pay_first customers whose payment was committed before their registration: "
        f"{extra['pay_first_committed_first']} of {counts.get('scenario_pay_first', 0)}"
    )
    print(
        f"ingest: {ingest.requests} requests, {ingest.retries} retried, failures "
        f"{dict(ingest.failures)}, {len(ingest.refused)} events refused"
        + (f" (e.g. {next(iter(ingest.refused.values()))})" if ingest.refused else "")
    )
    done = faults_log.counts()
    print(
        "faults: "
        + ", ".join(f"{kind} {done.get(kind, 0)}" for kind in _FAULT_KINDS)
        + f"; clock-skewed worker: {args.clock_offset or 'none'}"
    )
    idle = sum(1 for _, kind, d in faults_log.entries if kind == "worker_kill" and "idle w" in d)
    fallback = sum(1 for _, kind, d in faults_log.entries if "no idle reader" in d)
    print(
        f"  of the worker kills, {idle} of the idle worker blocked on the queue read, "
        f"{fallback} of another worker when none was idle for 5 s"
    )
    missed = [f"{t:.0f}s {kind}: {d}" for t, kind, d in faults_log.entries if d.startswith("no ")]
    if missed:
        print(f"  not injected: {missed}")
    if injector.restart_seconds:
        took = ", ".join(f"{s:.1f}" for s in injector.restart_seconds)
        print(f"  PostgreSQL restarts took {took} s")
    busy = liveness.busy_s
    print(
        f"messaging workers' CPU: {busy['messaging']:.0f} s, the clock-skewed cluster's "
        f"{busy['skewed']:.0f} s; stalls (no worker CPU for {Liveness.STALL_SECONDS:.0f} s "
        f"or more while tasks waited in the queue): {len(liveness.stalls)}"
        + "".join(
            f", at {start - t0:.0f} s for {s:.0f} s (up to {queued} tasks queued, the skewed "
            f"cluster used {cpu:.1f} s of CPU meanwhile)"
            for (start, s), (queued, cpu) in zip(
                liveness.stalls, liveness.stall_detail, strict=True
            )
        )
    )
    print(
        "restarts by the supervisor: "
        + ", ".join(f"{s.name} {s.starts - 1}" for s in services.values())
    )
    print(
        "stop (SIGTERM, SIGKILL after 20 s): "
        + ", ".join(
            f"{name} {took:.1f} s{' SIGKILLED' if killed else ''}"
            for name, (took, killed) in stops.items()
        )
    )
    print(f"provider requests: {dict(extra['requests'])}")
    print(f"sends: {report.sends} rows {extra['statuses']}, {report.delivered} delivered")
    for (status, reason), count in extra["reasons"]:
        print(f"  {count:6d} {status}: {reason}")
    print(
        "timings: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
        + f" ({outcome})"
    )
    for line in report.explain():
        print(line)
    print(report.line())
    if not report.ok:
        print(f"CHAOS FAILED: {report.violations}")


_FAULT_KINDS = (
    "worker_kill",
    "ticker_kill",
    "cluster_kill",
    "pg_restart",
    "provider_outage",
    "broker_purge",
)


def cli() -> None:
    sys.exit(main())
