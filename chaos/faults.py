"""The faults a chaos run injects, and how it finds the processes to hurt (Linux /proc).

A worker of the messaging cluster is one of the pids its sentinel saves in django-q2's Stat
(what `qinfo` shows), under the `qcluster` process the run started. The idle worker "blocked
on the task queue read" is the one whose main thread sits in a read of the queue: with
django-q2's own cluster, a read() on the task queue's pipe (it holds the queue's read lock
while it blocks); with a cluster whose workers read the broker themselves, a read or poll
on its socket to Redis. /proc/<pid>/syscall tells which call blocks and on which fd (for
poll, the first pollfd, read from /proc/<pid>/mem).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.run import descendants  # root and every process below it, from /proc

# x86_64 and aarch64 numbers of the calls a blocked reader sits in
_READS = {"x86_64": {0, 45}, "aarch64": {63, 207}}  # read, recvfrom
_POLLS = {"x86_64": {7, 271}, "aarch64": {73}}  # poll, ppoll
_MACHINE = os.uname().machine


def _fd_target(pid: int, fd: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return ""


def _socket_ports(inode: str) -> set[int]:
    """Remote ports of the TCP socket with this inode."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] == inode:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def blocked_on(pid: int, *, redis_port: int | None = None) -> str:
    """What the main thread of `pid` waits for: "pipe" (a read on a pipe), "redis" (a read or
    poll on a socket to redis_port), "socket", "other", or "" (running, or gone)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return ""
    if not fields or not fields[0].isdigit():
        return ""
    number = int(fields[0])
    fd: int | None = None
    if number in _READS.get(_MACHINE, set()):
        fd = int(fields[1], 16)
    elif number in _POLLS.get(_MACHINE, set()):
        try:
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(int(fields[1], 16))
                fd = int.from_bytes(mem.read(4), "little", signed=True)
        except (OSError, ValueError, OverflowError):
            return "other"
    if fd is None or fd < 0:
        return "other"
    target = _fd_target(pid, fd)
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("socket:["):
        inode = target[len("socket:[") : -1]
        if redis_port is not None and redis_port in _socket_ports(inode):
            return "redis"
        return "socket"
    return "other"


def cluster_workers(root: int) -> list[int]:
    """The worker pids of the cluster under the `qcluster` process `root`, from the Stat its
    sentinel saves in the broker (empty while there is none: a flushed broker, a restart)."""
    from django_q.status import Stat

    below = set(descendants(root))
    try:
        stats = Stat.get_all()
    except Exception:  # the broker does not answer: no target this time
        return []
    workers: list[int] = []
    for stat in stats:
        if stat.sentinel in below:
            workers += [pid for pid in stat.workers if pid in below]
    return workers


def idle_reader(workers: list[int], *, redis_port: int | None) -> int | None:
    """The worker blocked reading the task queue (see the module docstring), if any."""
    for pid in workers:
        if blocked_on(pid, redis_port=redis_port) in ("pipe", "redis"):
            return pid
    return None


def kill9(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def kill9_tree(root: int) -> int:
    """kill -9 root and everything below it (children first would be reparented)."""
    pids = descendants(root)
    for pid in pids:
        kill9(pid)
    return len(pids)


@dataclass
class PostgresControl:
    """pg_ctl of the run's PostgreSQL (scripts/services.sh exports where it is)."""

    data: str = field(default_factory=lambda: os.environ.get("NUDGE_PG_DATA", ""))
    log: str = field(default_factory=lambda: os.environ.get("NUDGE_PG_LOG", ""))
    bin: str = field(default_factory=lambda: os.environ.get("NUDGE_PG_BIN", ""))
    run_as: list[str] = field(default_factory=lambda: os.environ.get("NUDGE_PG_RUN_AS", "").split())

    @property
    def available(self) -> bool:
        return bool(self.data and self.bin)

    def restart(self) -> float:
        """`pg_ctl restart -m fast`; returns the seconds it took (down and up again)."""
        started = time.monotonic()
        command = [*self.run_as, f"{self.bin}/pg_ctl", "-D", self.data, "-w", "-t", "60"]
        if self.log:
            command += ["-l", self.log]
        subprocess.run(  # noqa: S603 (pg_ctl from scripts/services.sh)
            [*command, "restart", "-m", "fast"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.monotonic() - started


OUTAGE_KINDS = ("refused", "errors", "slow", "accepted_timeout")


def outage_changes(kind: str, seconds: float, *, timeout_s: float) -> tuple[dict, dict]:
    """The fake provider's /_control changes that start an outage of `kind`, and those that
    end it. `timeout_s` is the SMS backend's read timeout: accepted-then-timeout answers
    after it, so the provider has the message and the caller gives up."""
    if kind == "refused":
        return {"refuse_seconds": seconds}, {}
    if kind == "errors":
        return {"down": True}, {"down": False}
    if kind == "slow":
        return {"latency_ms": timeout_s * 1000 * 0.6}, {}
    if kind == "accepted_timeout":
        return {"latency_ms": timeout_s * 1000 * 1.5}, {}
    raise ValueError(kind)


def schedule(
    *, window: float, counts: dict[str, int], seed: int, start: float = 5.0
) -> list[tuple[float, str]]:
    """(seconds into the run, fault kind) for every fault, spread over the window: each kind
    evenly over it with a random phase and jitter, so that faults overlap now and then."""
    rng = random.Random(seed)
    plan: list[tuple[float, str]] = []
    span = max(1.0, window - start - 5.0)
    for kind, count in counts.items():
        if count <= 0:
            continue
        step = span / count
        phase = rng.uniform(0, step)
        for n in range(count):
            at = start + phase + n * step + rng.uniform(-0.2, 0.2) * step
            plan.append((min(max(start, at), start + span), kind))
    plan.sort()
    return plan


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds so far of each live pid (from /proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return found
