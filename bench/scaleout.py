"""The scale-out scenario of `make bench` (issue 14), and the code its test shares
(tests/journeys/test_scale_out.py): several "hosts" on one machine, each a network namespace
running a messaging `qcluster` and a `nudge_ticker`, all sharing one PostgreSQL and one Redis.

The network, made with iproute2 (root, CAP_NET_ADMIN and CAP_SYS_ADMIN) and removed at the
end whatever happens:

    root namespace                            namespace nsc<tag>h<k> (k = 1..hosts)
    bridge nsc<tag>br 10.231.X.1/24  <-veth->  nsc<tag>n<k> 10.231.X.(k+1)/24
      forwarder 10.231.X.1:<pg port>    -> 127.0.0.1:<pg port>     (PostgreSQL)
      forwarder 10.231.X.1:<redis port> -> 127.0.0.1:<redis port>  (Redis)
      fake provider 10.231.X.1:<port>   (bench/fake_provider.py --record-peer)

scripts/services.sh binds PostgreSQL and Redis to the root namespace's 127.0.0.1, which a
namespace cannot reach; a small asyncio TCP forwarder (`python -m bench.scaleout forward
LISTEN=TARGET ...`, this module) relays the bridge address to them. The fake provider listens
on the bridge address itself, so it sees each request's source address: the namespace, hence
the host, that sent each message.

One round: start a cluster and a ticker in each of the first `hosts` namespaces, write N SMS
due at one moment, wait until each is decided, stop the processes (SIGTERM, then SIGKILL after
a timeout, then whatever is left in the namespaces). The rate is N over the time from the due
moment to the last send; each send must reach the provider exactly once (`duplicated`: sends
delivered more than once; `lost`: sends of the round never delivered; `replays`: provider
calls that repeated an idempotency key, i.e. a send called twice that the provider deduped).
The bench runs a 1-host round and a --scaleout-hosts round with the same load, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.run import (
    PY,
    BenchFailure,
    Processes,
    cpu_seconds,
    db_now,
    descendants,
    fmt,
    log,
    max_send_id,
    sql,
    wait_until_decided,
)

SUBNET_PREFIX = "10.231"
STOP_SECONDS = 30.0  # above NUDGE_SHUTDOWN_GRACE_SECONDS (20 s)


class NetnsUnavailable(BenchFailure):
    """Network namespaces cannot be made here (not root, no capability, no iproute2)."""


# --- the network -----------------------------------------------------------------------------


@dataclass
class Host:
    index: int
    netns: str
    veth: str  # the root namespace's end, on the bridge
    address: str  # in the namespace


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsUnavailable(
            f"`ip {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}. "
            "The scale-out run makes network namespaces: it needs root with CAP_SYS_ADMIN and "
            "CAP_NET_ADMIN (e.g. docker run --privileged, or --cap-add SYS_ADMIN --cap-add "
            "NET_ADMIN), iproute2, and the veth and bridge kernel drivers"
        )
    return result


def _free_subnet() -> str:
    """A 10.231.X.0/24 no address or route of this machine is in."""
    taken = _ip("-4", "-o", "addr").stdout + _ip("-4", "route").stdout
    for _ in range(100):
        candidate = f"{SUBNET_PREFIX}.{secrets.randbelow(256)}"
        if f"{candidate}." not in taken:
            return candidate
    raise NetnsUnavailable(f"no free {SUBNET_PREFIX}.X.0/24 subnet for the namespaces")


class Network:
    """A bridge in the root namespace and `count` namespaces on it, one veth pair each."""

    def __init__(self, count: int) -> None:
        if shutil.which("ip") is None:
            raise NetnsUnavailable("no `ip` command (iproute2): cannot make network namespaces")
        self.tag = secrets.token_hex(2)
        self.bridge = f"nsc{self.tag}br"
        self.subnet = _free_subnet()
        self.address = f"{self.subnet}.1"
        self.hosts = [
            Host(k, f"nsc{self.tag}h{k}", f"nsc{self.tag}v{k}", f"{self.subnet}.{k + 1}")
            for k in range(1, count + 1)
        ]

    def create(self) -> None:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for host in self.hosts:
                inside = f"nsc{self.tag}n{host.index}"
                _ip("netns", "add", host.netns)
                _ip("link", "add", host.veth, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", host.netns)
                _ip("link", "set", host.veth, "master", self.bridge, "up")
                _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", inside)
                _ip("-n", host.netns, "link", "set", inside, "up")
                _ip("-n", host.netns, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise

    def kill_leftovers(self) -> None:
        """SIGKILL every process still in one of the namespaces (they are this run's: a
        worker orphaned by a killed cluster, say)."""
        for host in self.hosts:
            pids = _ip("netns", "pids", host.netns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)

    def remove(self) -> None:
        """Everything create() made; idempotent, and quiet about what is already gone."""
        self.kill_leftovers()
        for host in self.hosts:
            _ip("netns", "del", host.netns, check=False)  # takes the veth pair with it
            _ip("link", "del", host.veth, check=False)
        _ip("link", "del", self.bridge, check=False)

    def exists(self) -> list[str]:
        """What of this network is still there (empty once removed)."""
        links = _ip("-o", "link", check=False).stdout
        namespaces = _ip("netns", "list", check=False).stdout.split()
        found = [host.netns for host in self.hosts if host.netns in namespaces]
        found += [name for name in (self.bridge, *(h.veth for h in self.hosts)) if name in links]
        return found


# --- the TCP forwarder -----------------------------------------------------------------------


class _Relay(asyncio.Protocol):
    """One side of a forwarded connection: what it reads, its peer writes, and back-pressure
    on one side pauses reading on the other."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Relay | None = None
        self.early: list[bytes] = []  # read before the peer was connected
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def _link(inbound: _Relay, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        _, outbound = await loop.create_connection(_Relay, host, port)
    except OSError:
        if inbound.transport is not None:
            inbound.transport.close()
        return
    assert outbound.transport is not None
    if inbound.closed:
        outbound.transport.close()
        return
    inbound.peer, outbound.peer = outbound, inbound
    for chunk in inbound.early:
        outbound.transport.write(chunk)
    inbound.early.clear()


async def forward(pairs: list[tuple[str, int, str, int]]) -> None:
    """Relay each (listen host, port) to its (target host, port) until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    links: set[asyncio.Task[None]] = set()

    def accept(host: str, port: int) -> _Relay:
        relay = _Relay()
        task = loop.create_task(_link(relay, host, port))
        links.add(task)
        task.add_done_callback(links.discard)
        return relay

    servers = []
    for listen_host, listen_port, target_host, target_port in pairs:

        def factory(h: str = target_host, p: int = target_port) -> _Relay:
            return accept(h, p)

        servers.append(await loop.create_server(factory, listen_host, listen_port, backlog=512))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("forward: ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout")
    parser.add_argument("command", choices=["forward"])
    parser.add_argument("pairs", nargs="+", metavar="LISTEN_HOST:PORT=TARGET_HOST:PORT")
    args = parser.parse_args(argv)
    pairs = []
    for pair in args.pairs:
        listen, _, target = pair.partition("=")
        pairs.append((*_address(listen), *_address(target)))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(forward(pairs))
    return 0


# --- rounds ----------------------------------------------------------------------------------


@dataclass
class Round:
    """One round's outcome."""

    hosts: int
    sends: int
    rate: float  # sends/s, from the due moment to the last send
    elapsed: float
    statuses: dict[str, int]
    by_host: dict[int, int]  # host index -> sends it delivered
    duplicated: int  # sends delivered more than once
    lost: int  # sends of the round never delivered
    stray: int  # deliveries of sends not marked sent
    replays: int  # provider calls repeating an idempotency key
    inflight_max: int
    app_cpu_ms: float  # per send, clusters + tickers
    forward_cpu_ms: float  # per send, the forwarder
    lateness_p99: float = float("nan")


def _rehost(url: str, host: str, path: str | None = None) -> tuple[str, int]:
    """`url` with its host replaced (the port kept), and that port."""
    parts = urlsplit(url)
    if parts.port is None:
        raise BenchFailure(f"{url!r} has no port")
    netloc = f"{parts.username}@" if parts.username else ""
    if parts.password:
        netloc = f"{parts.username}:{parts.password}@"
    netloc += f"{host}:{parts.port}"
    new_path = parts.path if path is None else path
    return urlunsplit((parts.scheme, netloc, new_path, parts.query, parts.fragment)), parts.port


class Scaleout:
    """The network, the forwarder and the fake provider of a scale-out run; rounds of
    dispatch on the first k hosts. A context manager: it removes everything on exit.

    database_url, redis_url: the services on 127.0.0.1 (scripts/services.sh). Redis database
    `redis_db` is flushed first: the clusters of a round share its queue, no one else's.
    """

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        hosts: int,
        logs: Path,
        latency_ms: float = 100.0,
        workers: int = 2,
        inflight: int = 8,
        redis_db: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.database_url, self.redis_url = database_url, redis_url
        self.logs, self.latency_ms = logs, latency_ms
        self.workers, self.inflight, self.redis_db = workers, inflight, redis_db
        self.extra_env = env or {}
        self.network = Network(hosts)
        self.infra = Processes(logs)
        self.env: dict[str, str] = {}
        self.fake: Any = None
        self.forwarder: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Scaleout:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        from bench.provider import fake_start

        self.network.create()
        bridge = self.network.address
        database, pg_port = _rehost(self.database_url, bridge)
        redis, redis_port = _rehost(self.redis_url, bridge, path=f"/{self.redis_db}")
        self.forwarder = self.infra.start(
            "scaleout-forward",
            [PY, "-m", "bench.scaleout", "forward"]
            + [f"{bridge}:{p}=127.0.0.1:{p}" for p in (pg_port, redis_port)],
        )
        _wait_for_line(self.logs / "scaleout-forward.log", "forward: ready", self.infra)
        _redis_flush(_rehost(self.redis_url, "127.0.0.1", path=f"/{self.redis_db}")[0])
        self.fake = fake_start(
            self.infra,
            self.logs,
            self.latency_ms,
            host=bridge,
            name="scaleout-fake",
            record_peer=True,
        )
        self.env = {
            "DATABASE_URL": database,
            "REDIS_URL": redis,
            "NUDGE_SMS_CHANNEL": "journeys.channels.sms.SmsChannel",
            "NUDGE_SMS_URL": f"{self.fake.url}/messages",
            "NUDGE_SMS_HTTP_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
            "Q_MESSAGING_WORKERS": str(self.workers),
            "NUDGE_DISPATCH_INFLIGHT": str(self.inflight),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "WARNING",
            **self.extra_env,
        }

    def close(self) -> None:
        try:
            self.infra.stop(timeout=10)
        finally:
            self.network.remove()

    def round(self, hosts: int, sends: int, journey: Any, step: Any, tag: str) -> Round:
        """`sends` SMS due at once, dispatched by the clusters and tickers of the first
        `hosts` hosts."""
        from bench import data

        procs = Processes(self.logs)
        roots: list[int] = []
        started = time.monotonic()
        try:
            clusters = []
            for host in self.network.hosts[:hosts]:
                netns = ["ip", "netns", "exec", host.netns, PY, "manage.py"]
                cluster = procs.start(
                    f"{tag}-h{host.index}-qcluster", [*netns, "qcluster"], **self.env
                )
                ticker = procs.start(
                    f"{tag}-h{host.index}-ticker", [*netns, "nudge_ticker"], **self.env
                )
                clusters.append(cluster)
                roots += [cluster.pid, ticker.pid]
            for host, cluster in zip(self.network.hosts, clusters, strict=False):
                _wait_for_workers(cluster.pid, self.workers, procs)
                _wait_for_line(
                    self.logs / f"{tag}-h{host.index}-ticker.log", "ticker: every", procs
                )
            procs.check_alive()
            log(f"  {hosts} clusters and tickers ready in {time.monotonic() - started:.1f} s")
            self.fake.reset()  # in flight at most, replays: this round's
            lead = 2.0 + 2 * sends / 5_000
            first = max_send_id() + 1
            data.sends_create(
                prefix=f"{tag}-",
                count=sends,
                journey_id=journey.pk,
                step_id=step.pk,
                due=db_now() + timedelta(seconds=lead),
                channel="sms",
            )
            last = max_send_id()
            app_cpu = cpu_seconds(roots)
            assert self.forwarder is not None
            forward_cpu = cpu_seconds([self.forwarder.pid])
            wait_until_decided(first, last, timeout=lead + 300, procs=procs)
            app_cpu = cpu_seconds(roots) - app_cpu
            forward_cpu = cpu_seconds([self.forwarder.pid]) - forward_cpu
        finally:
            stopping = time.monotonic()
            procs.stop(timeout=STOP_SECONDS)
            self.network.kill_leftovers()
            log(f"  stopped in {time.monotonic() - stopping:.1f} s")
        stats = self.fake.stats()  # flushes the calls file too
        return self._outcome(
            hosts,
            first,
            last,
            stats["replays"],
            stats["inflight_max"],
            app_cpu,
            forward_cpu,
        )

    def _outcome(
        self,
        hosts: int,
        first: int,
        last: int,
        replays: int,
        inflight_max: int,
        app_cpu: float,
        forward_cpu: float,
    ) -> Round:
        by_address = {host.address: host.index for host in self.network.hosts}
        deliveries: Counter[int] = Counter()
        by_host: Counter[int] = Counter()
        for line in self.fake.calls.read_text().splitlines():
            send_id, _, address = line.partition(" ")
            pk = int(send_id)
            if first <= pk <= last:
                deliveries[pk] += 1
                by_host[by_address.get(address, 0)] += 1
        status = dict(
            sql(
                "SELECT id, status FROM journeys_scheduledsend WHERE id BETWEEN %s AND %s",
                [first, last],
            )
        )
        sent = [pk for pk, st in status.items() if st == "sent"]
        n = len(status)
        (elapsed, p99) = sql(
            "SELECT extract(epoch FROM max(sent_at) - min(due_at)), percentile_cont(0.99) "
            "WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - due_at)) "
            "FROM journeys_scheduledsend WHERE id BETWEEN %s AND %s AND status = 'sent'",
            [first, last],
        )[0]
        elapsed = float(elapsed) if elapsed is not None else float("nan")
        return Round(
            hosts=hosts,
            sends=n,
            rate=len(sent) / elapsed if elapsed == elapsed and elapsed > 0 else float("nan"),
            elapsed=elapsed,
            statuses=dict(Counter(status.values())),
            by_host=dict(sorted(by_host.items())),
            duplicated=sum(1 for count in deliveries.values() if count > 1),
            # the round's rows, not every id in first..last: a sequence has gaps (ids taken by
            # rolled-back inserts, other writers)
            lost=sum(1 for pk in status if pk not in deliveries),
            stray=sum(1 for pk in deliveries if status.get(pk) != "sent"),
            replays=replays,
            inflight_max=inflight_max,
            app_cpu_ms=app_cpu / n * 1000,
            forward_cpu_ms=forward_cpu / n * 1000,
            lateness_p99=float(p99) if p99 is not None else float("nan"),
        )


def _wait_for_workers(root: int, workers: int, procs: Processes, timeout: float = 120) -> None:
    """Until a cluster has forked its workers and its other processes (a master and a
    sentinel at least: workers + 2 processes, none new for 0.6 s)."""
    deadline, seen, stable_since = time.monotonic() + timeout, 0, time.monotonic()
    while True:
        count = len(descendants(root))
        if count != seen:
            seen, stable_since = count, time.monotonic()
        elif count >= workers + 2 and time.monotonic() - stable_since >= 0.6:
            return
        procs.check_alive()
        if time.monotonic() > deadline:
            raise BenchFailure(f"the cluster forked only {count} processes in {timeout:.0f} s")
        time.sleep(0.1)


def _wait_for_line(path: Path, text: str, procs: Processes, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if text in path.read_text(errors="replace"):
                return
        procs.check_alive()
        if time.monotonic() > deadline:
            raise BenchFailure(f"no {text!r} in {path.name} after {timeout:.0f} s")
        time.sleep(0.1)


def _redis_flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


# --- the bench scenario ----------------------------------------------------------------------


def run(args: argparse.Namespace, tag: str, logs: Path) -> dict[str, Any]:
    """The 1-host round and the --scaleout-hosts round, same load, one run."""
    from bench.provider import sms_journey

    journey, step = sms_journey()
    hosts, n = args.scaleout_hosts, args.scaleout_sends
    try:
        with Scaleout(
            database_url=os.environ["DATABASE_URL"],
            redis_url=os.environ["NUDGE_TEST_REDIS_URL"],
            hosts=hosts,
            logs=logs,
            latency_ms=args.provider_latency_ms,
            workers=args.scaleout_workers,
            inflight=args.scaleout_inflight,
        ) as scale:
            log(
                f"scale-out: {n} SMS due at once, 1 host ({args.scaleout_workers} workers x "
                f"{args.scaleout_inflight} in flight, {args.provider_latency_ms:.0f} ms provider)"
            )
            one = scale.round(1, n, journey, step, f"{tag}-1")
            log(f"  {_summary(one)}")
            log(f"scale-out: the same on {hosts} hosts")
            many = scale.round(hosts, n, journey, step, f"{tag}-{hosts}")
            log(f"  {_summary(many)}")
    except NetnsUnavailable as exc:
        raise BenchFailure(f"{exc} (or leave the scenario out: --skip-scaleout)") from exc
    for outcome in (one, many):
        if outcome.lost or outcome.stray:
            raise BenchFailure(
                f"scale-out, {outcome.hosts} hosts: {outcome.lost} sends never delivered, "
                f"{outcome.stray} deliveries of sends not marked sent ({outcome.statuses})"
            )
    return {"one": one, "many": many, "vs_one_host": many.rate / one.rate}


def _summary(outcome: Round) -> str:
    return (
        f"{outcome.rate:.0f} sends/s, by host {outcome.by_host}, {outcome.statuses}, "
        f"{outcome.inflight_max} in flight at most, duplicated {outcome.duplicated}, "
        f"lost {outcome.lost}"
    )


def table_rows(f: dict[str, Any]) -> list[tuple[str, str, str]]:
    one, many = f["one"], f["many"]
    return [
        ("dispatch rate (sends/s)", fmt(one.rate), fmt(many.rate)),
        ("  / 1 host, same run", "1.00", fmt(f["vs_one_host"])),
        ("lateness p99 (s)", fmt(one.lateness_p99), fmt(many.lateness_p99)),
        (
            "sends delivered by host",
            ", ".join(map(str, one.by_host.values())),
            ", ".join(map(str, many.by_host.values())),
        ),
        ("provider calls in flight at most", str(one.inflight_max), str(many.inflight_max)),
        ("CPU per send: clusters + tickers (ms)", fmt(one.app_cpu_ms), fmt(many.app_cpu_ms)),
        ("CPU per send: the TCP forwarder (ms)", fmt(one.forward_cpu_ms), fmt(many.forward_cpu_ms)),
        (
            "duplicated / lost / idempotent replays",
            f"{one.duplicated} / {one.lost} / {one.replays}",
            f"{many.duplicated} / {many.lost} / {many.replays}",
        ),
    ]


def bench_line(f: dict[str, Any] | None, hosts: int) -> str:
    if f is None:
        return (
            f"BENCH scaleout hosts={hosts} sends=0 sends_per_s=nan vs_one_host=nan "
            "duplicated=nan lost=nan"
        )
    many = f["many"]
    return (
        f"BENCH scaleout hosts={many.hosts} sends={many.sends} sends_per_s={fmt(many.rate)} "
        f"vs_one_host={fmt(f['vs_one_host'])} duplicated={many.duplicated + f['one'].duplicated} "
        f"lost={many.lost + f['one'].lost}"
    )


if __name__ == "__main__":
    sys.exit(main())
