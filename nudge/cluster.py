"""A django-q2 cluster whose workers survive each other's death, and that stops when asked.

`manage.py qcluster` runs this cluster (nudge/management/commands/qcluster.py overrides
django-q2's command). It runs the same tasks from the same broker, with the same settings
(Q_CLUSTER, ALT_CLUSTERS, Q_CLUSTER_NAME), and records their results as django-q2's own
monitor does. What differs is how work reaches a worker, and how the cluster stops.

Why not django-q2's own cluster. Its workers share one `multiprocessing.Queue`, which a
pusher process fills from the broker, and read it with `task_queue.get()`. That call holds
the queue's read lock (a process-shared semaphore) for as long as it blocks, which is all the
time an idle worker waits. A worker killed while it holds it (the OOM killer, `kill -9`, a
container limit) never releases it: django-q2 starts a new worker, and no worker ever takes a
task again, while `/healthz` and the cluster's status say all is well (django-q2/django-q2#23,
open since 2022; Koed00/django-q#394 and #200 before it). The result queue, the workers' timer
values (`with timer.get_lock()`) and the stop event are process-shared locks of the same kind.
The only general fix is to share no lock at all between processes that may be killed:

- **Each worker takes its own tasks from the broker** (Redis `BLPOP`, or the ORM broker's
  compare-and-set lease), one at a time, executes it, saves its result and acknowledges it,
  all in its own process. A worker killed anywhere takes with it at most the task in its
  hands, which the broker or the row it is about comes back for (a ScheduledSend's lease, an
  Event's claim, an ORM task's `retry`): nothing it leaves behind can stop another worker.
- **What processes share is lock-free:** one raw double per worker (0 idle, -1 busy without
  a timeout, else the epoch second its task's timeout ends) and one raw stop flag. Writing a
  double is one store; a process killed mid-write leaves no lock held.
- **The sentinel** (one per cluster) replaces a dead worker, kills one whose task outlived
  its timeout, runs django-q2's scheduler every 30 s, and saves the cluster's Stat as
  django-q2's does (`qinfo`, `qmonitor` and the admin still see it). Its workers die with
  it (PR_SET_PDEATHSIG), and **the master** (the `qcluster` process itself) starts a new
  sentinel when one dies unasked.

With the ORM broker, each idle worker polls the broker every Q_CLUSTER `poll` seconds, from a
random phase: a cluster of N idle workers runs N small indexed queries per poll where
django-q2's single pusher ran one, and in exchange a task waits for no other worker's poll
(measured with `make bench`: polling every poll x N seconds instead put the steady stream's
lateness p99 at 0.59-0.60 s against 0.36-0.37 s). With Redis each idle worker waits in
`BLPOP` (one connection per worker).

Graceful stop. SIGTERM or SIGINT to any of the cluster's processes (honcho sends SIGTERM to
the whole process group, a terminal's Ctrl-C sends SIGINT to it) sets the stop flag. Idle
workers leave within a second (ORM: one poll interval); a busy worker finishes its task, and
a dispatch task hands the sends it has not started to a new task (`nudge.shutdown`). After
NUDGE_SHUTDOWN_GRACE_SECONDS the sentinel kills what is still running (its rows' leases bring
the work back) and the master exits 0: no SIGKILL from outside is needed.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import pydoc
import random
import signal
import time
import traceback
import uuid
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from django import db
from django.conf import settings
from django.utils import timezone
from django_q.brokers import Broker, get_broker
from django_q.conf import Conf, error_reporter
from django_q.exceptions import TimeoutException
from django_q.humanhash import humanize
from django_q.monitor import save_cached, save_task
from django_q.scheduler import scheduler
from django_q.signals import post_execute, post_execute_in_worker, post_spawn, pre_execute
from django_q.signing import BadSignature, SignedPackage
from django_q.status import Stat
from django_q.timeout import TimeoutHandler
from django_q.utils import close_old_django_connections, get_func_repr

from nudge import shutdown

logger = logging.getLogger("nudge.cluster")

_ctx = multiprocessing.get_context("fork")

IDLE = 0.0
BUSY_NO_TIMEOUT = -1.0
# how often the sentinel looks at its workers, and the master at its sentinel
_GUARD_SECONDS = 0.5
_SCHEDULER_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the process that forked it dies, so a
    sentinel killed with -9 takes its workers with it (the master starts a fresh set)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the workers watch their parent instead
        pass


def _on_stop_signals(handler: Any) -> None:
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# --- the worker ---------------------------------------------------------------------------


def _worker_main(state: Synchronized, stop: Synchronized, parent: int, name: str) -> None:
    """Take tasks from the broker one at a time until told to stop, recycled, or orphaned."""
    _die_with_parent()

    def asked_to_stop(signum: int, frame: Any) -> None:
        shutdown.request()

    _on_stop_signals(asked_to_stop)
    post_spawn.send(sender="django_q", proc_name=name)
    Conf.BULK = 1  # the ORM broker would lease `bulk` tasks to this one worker otherwise
    poll = Conf.POLL
    broker = get_broker()
    logger.info("%s ready for work at %s", name, os.getpid())
    if broker.__class__.__name__ == "ORM":
        time.sleep(random.uniform(0, poll))  # spread the workers' polls over the interval
    done = 0
    failing_since: float | None = None
    while not (stop.value or shutdown.requested() or os.getppid() != parent):
        try:
            task_set = broker.dequeue()
        except Exception as exc:
            # the broker or the database is down: wait for it, do not die (a dead worker's
            # replacement would find it down as well)
            if failing_since is None:
                failing_since = time.monotonic()
                logger.warning("%s: the broker does not answer, waiting: %s", name, exc)
            db.close_old_connections()
            time.sleep(min(5.0, 0.5 + time.monotonic() - failing_since))
            continue
        if failing_since is not None:
            logger.info("%s: the broker answers again", name)
            failing_since = None
        for ack_id, package in task_set or ():
            try:
                task = SignedPackage.loads(package)
            except (TypeError, BadSignature):
                logger.exception("%s: a task that does not unpack is failed", name)
                broker.fail(ack_id)
                continue
            task["cluster"] = Conf.CLUSTER_NAME
            task["ack_id"] = ack_id
            timed_out = _execute(task, state, name)
            _record(task, broker)
            done += 1
            if timed_out:
                return  # the task may have left the process in any state: start afresh
        if done >= Conf.RECYCLE or _rss_exceeded():
            logger.info("%s recycled after %d tasks", name, done)
            return
    logger.info("%s stopped doing work", name)


def _rss_exceeded() -> bool:
    if not Conf.MAX_RSS:
        return False
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >= Conf.MAX_RSS


def _execute(task: dict[str, Any], state: Synchronized, name: str) -> bool:
    """Run one task as django-q2's worker does (signals, timeout); True if it timed out."""
    func = task["func"]
    logger.info("%s processing %s '%s'", name, task["name"], get_func_repr(func))
    if not callable(func):
        func = pydoc.locate(func)
    close_old_django_connections()
    timeout = task.pop("timeout", Conf.TIMEOUT)
    if timeout is None:
        timeout = -1
    pre_execute.send(sender="django_q", func=func, task=task)
    state.value = time.time() + timeout + 3 if timeout > 0 else BUSY_NO_TIMEOUT
    timed_out = False
    try:
        if func is None:
            raise ValueError(f"Function {task['func']} is not defined")
        with TimeoutHandler(timeout):
            result = (func(*task["args"], **task["kwargs"]), True)
    except (Exception, TimeoutException) as exc:
        timed_out = isinstance(exc, TimeoutException)
        result = (f"{exc} : {traceback.format_exc()}", False)
        if error_reporter:
            error_reporter.report()
    finally:
        state.value = IDLE
    task["result"], task["success"], task["stopped"] = result[0], result[1], timezone.now()
    post_execute_in_worker.send(sender="django_q", func=func, task=task)
    return timed_out


def _record(task: dict[str, Any], broker: Broker) -> None:
    """What django-q2's monitor does with a finished task: save it, acknowledge it."""
    if task.get("cached", False):
        save_cached(task, broker)
    else:
        save_task(task, broker)
    ack_id = task.pop("ack_id", False)
    if ack_id and (task["success"] or task.get("ack_failure", False)):
        try:
            broker.acknowledge(ack_id)
        except Exception as exc:  # the broker hands it out again: tasks here are idempotent
            logger.warning("could not acknowledge task %s: %s", task["name"], exc)
    post_execute.send(sender="django_q", task=task)
    if not task["success"]:
        logger.error(
            "Failed '%s' (%s) - %s", get_func_repr(task["func"]), task["name"], task["result"]
        )


# --- the sentinel -------------------------------------------------------------------------


class _NoQueue:
    """django-q2's Stat reads the sizes of the queues this cluster does not have."""

    @staticmethod
    def qsize() -> int:
        return 0


@dataclass
class _Worker:
    process: BaseProcess
    state: Synchronized

    @property
    def pid(self) -> int:
        return self.process.pid or 0


class Sentinel:
    """Keeps Conf.WORKERS workers alive; the attributes are the ones django-q2's Stat reads."""

    task_queue = result_queue = _NoQueue()
    monitor = pusher = None

    def __init__(self, *, stop: Synchronized, cluster_id: uuid.UUID, master: int) -> None:
        self.stop_flag = stop
        self.cluster_id = cluster_id
        self.parent_pid = master
        self.pid = os.getpid()
        self.broker = get_broker()
        self.tob = timezone.now()
        self.reincarnations = 0
        self.workers: list[_Worker] = []
        self.stopping = False

    @property
    def pool(self) -> list[BaseProcess]:
        return [w.process for w in self.workers]

    def status(self) -> str:
        if self.stopping:
            return str(Conf.STOPPING if self.workers else Conf.STOPPED)
        if any(w.state.value != IDLE for w in self.workers):
            return str(Conf.WORKING)
        return str(Conf.IDLE)

    def _spawn(self) -> None:
        db.connections.close_all()  # a forked child must not share this process's connection
        state = _ctx.RawValue("d", IDLE)
        name = f"Worker-{uuid.uuid4().hex[:8]}"
        process = _ctx.Process(
            target=_worker_main, args=(state, self.stop_flag, self.pid, name), name=name
        )
        process.daemon = True
        process.start()
        self.workers.append(_Worker(process, state))

    def run(self) -> None:
        _die_with_parent()
        _on_stop_signals(lambda signum, frame: setattr(self.stop_flag, "value", 1))
        self.broker.ping()
        for _ in range(Conf.WORKERS):
            self._spawn()
        logger.info(
            "Q Cluster %s [%s] running with %d workers",
            humanize(self.cluster_id.hex),
            self.broker.list_key,
            Conf.WORKERS,
        )
        last_schedule = time.monotonic()
        while not self.stop_flag.value:
            self._guard()
            if Conf.SCHEDULER and time.monotonic() - last_schedule >= _SCHEDULER_SECONDS:
                last_schedule = time.monotonic()
                try:
                    scheduler(broker=self.broker)
                except Exception as exc:
                    logger.warning("scheduler: %s", exc)
                db.close_old_connections()
            Stat(self).save()
            time.sleep(_GUARD_SECONDS)
        self._stop()

    def _guard(self) -> None:
        now = time.time()
        for worker in list(self.workers):
            deadline = worker.state.value
            if worker.process.is_alive():
                if deadline > 0 and now > deadline:
                    logger.critical("worker %s ran out of time: killed", worker.process.name)
                    os.kill(worker.pid, signal.SIGKILL)
                    worker.process.join(5)
                else:
                    continue
            code = worker.process.exitcode
            self.workers.remove(worker)
            worker.process.join(0)
            if code not in (0, None):
                busy = " while busy" if deadline != IDLE else ""
                logger.critical(
                    "worker %s died (exit code %s)%s: replaced", worker.process.name, code, busy
                )
            self.reincarnations += 1
            self._spawn()

    def _stop(self) -> None:
        self.stopping = True
        grace = float(settings.NUDGE_SHUTDOWN_GRACE_SECONDS)
        busy = sum(1 for w in self.workers if w.state.value != IDLE)
        logger.info(
            "Q Cluster %s stopping: %d workers, %d busy (they have %.0f s to finish)",
            humanize(self.cluster_id.hex),
            len(self.workers),
            busy,
            grace,
        )
        for worker in self.workers:
            if worker.process.is_alive():
                os.kill(worker.pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end and any(w.process.is_alive() for w in self.workers):
            time.sleep(0.1)
        for worker in self.workers:
            if worker.process.is_alive():
                logger.warning(
                    "worker %s still busy after %.0f s: killed (the lease of its rows brings "
                    "its work back)",
                    worker.process.name,
                    grace,
                )
                os.kill(worker.pid, signal.SIGKILL)
            worker.process.join(5)
        self.workers = []
        Stat(self).save()


def _sentinel_main(stop: Synchronized, cluster_id: uuid.UUID, master: int) -> None:
    Sentinel(stop=stop, cluster_id=cluster_id, master=master).run()


# --- the master ---------------------------------------------------------------------------


def run(*, once: bool = False) -> int:
    """The `qcluster` process: keeps one sentinel running until SIGTERM/SIGINT; exit code."""
    stop = _ctx.RawValue("b", 0)
    cluster_id = uuid.uuid4()
    _on_stop_signals(lambda signum, frame: setattr(stop, "value", 1))
    grace = float(settings.NUDGE_SHUTDOWN_GRACE_SECONDS)
    logger.info("Q Cluster %s starting.", humanize(cluster_id.hex))
    restarts = 0
    while True:
        db.connections.close_all()
        started = time.monotonic()
        sentinel = _ctx.Process(
            target=_sentinel_main, args=(stop, cluster_id, os.getpid()), name="Sentinel"
        )
        sentinel.start()
        if once:
            stop.value = 1
        while sentinel.is_alive() and not stop.value:
            sentinel.join(_GUARD_SECONDS)
        if stop.value:
            break
        # a sentinel that dies at once (the broker is down) is restarted less and less often
        restarts = restarts + 1 if time.monotonic() - started < 60 else 1
        pause = min(30.0, 2.0 ** (restarts - 1))
        logger.critical(
            "the sentinel died (exit code %s): starting a new one in %.0f s",
            sentinel.exitcode,
            pause,
        )
        end = time.monotonic() + pause
        while time.monotonic() < end and not stop.value:
            time.sleep(0.1)
        if stop.value:
            return 0
    sentinel.join(grace + 10)
    if sentinel.is_alive():
        logger.error("the sentinel did not stop in time: killed")
        sentinel.kill()
        sentinel.join(5)
    logger.info("Q Cluster %s has stopped.", humanize(cluster_id.hex))
    return 0 if sentinel.exitcode == 0 else 1
