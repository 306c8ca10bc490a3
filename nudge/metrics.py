"""`GET /metrics`: Prometheus's text exposition of django-prometheus's request and database
metrics, the task queues, and Nudge's own gauges read from the database at scrape time
(journeys.metrics).

**Who may read it.** A request passes with `Authorization: Bearer <token>` for one of
NUDGE_METRICS_TOKENS (several during a rotation), or when it comes straight from an address
of NUDGE_METRICS_ALLOWED_IPS (default: loopback only). A request that a proxy forwarded
(X-Forwarded-For, Forwarded or X-Real-IP present) never passes by its address: behind a
proxy on the same host every request comes from loopback.

**Several processes.** The database-derived gauges are the same from any process. The
per-process counters of django-prometheus (requests, latencies, database statements) are
summed over gunicorn's workers by prometheus_client's multiprocess mode: config/gunicorn.py
gives the workers one PROMETHEUS_MULTIPROC_DIR (a directory of memory-mapped files, emptied
when gunicorn starts; a dead worker's gauges are removed by `child_exit`) and this view reads
them all, whichever worker answers. Without it (runserver, tests) the view reads its own
process's registry.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Iterable, Iterator

from django.apps import apps
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from nudge import conf

logger = logging.getLogger(__name__)

_FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def metrics_request_allowed(request: HttpRequest) -> bool:
    """A valid bearer token, or a direct request from an allowed address."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() == "bearer" and presented.strip():
        given = presented.strip().encode()
        return any(
            hmac.compare_digest(given, token.encode()) for token in settings.NUDGE_METRICS_TOKENS
        )
    if any(name in request.META for name in _FORWARDED):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(network, strict=False)
        for network in settings.NUDGE_METRICS_ALLOWED_IPS
    )


class _Chain(Collector):
    """Several collectors (and registries) read as one, for one scrape."""

    def __init__(self, sources: Iterable[Collector]) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()


def process_metrics_source() -> Collector:
    """django-prometheus's metrics: summed over the processes sharing
    PROMETHEUS_MULTIPROC_DIR when it is set, else this process's registry."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


class DatabaseCollector(Collector):
    """Nudge's gauges from the database, in one read-only transaction with a statement
    timeout; a database that does not answer gives `nudge_metrics_database_up 0`, and the
    process metrics are still served."""

    def collect(self) -> Iterator[Metric]:
        from journeys.metrics import JourneysCollector, collect_in_one_snapshot

        started = time.monotonic()
        metrics: list[Metric] = []
        up = 1.0
        if connection.vendor == "postgresql":
            try:
                metrics = collect_in_one_snapshot(JourneysCollector())
            except DatabaseError as exc:
                logger.warning("metrics: the database did not answer: %s", exc)
                up = 0.0
        yield from metrics
        yield GaugeMetricFamily(
            "nudge_metrics_database_up",
            "1 when Nudge's database gauges were read at this scrape",
            value=up,
        )
        yield GaugeMetricFamily(
            "nudge_metrics_collect_seconds",
            "How long reading Nudge's database gauges took at this scrape",
            value=time.monotonic() - started,
        )


def task_queue_clusters() -> list[str]:
    names = [conf.messaging_cluster()]
    if apps.is_installed("media_tasks"):
        names.append(str(settings.NUDGE_MEDIA_CLUSTER))
    return names


def clusters_alive() -> int | None:
    """How many django-q2 clusters (any queue, any machine) reported themselves in the last
    few seconds (django_q.status.Stat, which each cluster's monitor refreshes with a 3 s
    expiry), or None when this process cannot know: the ORM broker keeps them in Django's
    cache, which per process (local memory, the default) sees no other process's."""
    from django.core.cache.backends.locmem import LocMemCache
    from django_q.brokers import get_broker
    from django_q.brokers.redis_broker import Redis
    from django_q.status import Stat

    broker = get_broker()
    if not isinstance(broker, Redis) and (
        broker.cache is None or isinstance(broker.cache, LocMemCache)
    ):
        return None
    return len(Stat.get_all(broker=broker))


class TaskQueueCollector(Collector):
    """Tasks waiting in each queue (the broker's own count) and the live clusters."""

    def collect(self) -> Iterator[Metric]:
        from django_q.brokers import get_broker

        queued = GaugeMetricFamily(
            "nudge_task_queue_waiting",
            "Tasks waiting in the django-q2 queue, not yet taken by a worker",
            labels=["cluster"],
        )
        for name in task_queue_clusters():
            try:
                queued.add_metric([name], float(get_broker(name).queue_size() or 0))
            except Exception as exc:  # a broker that does not answer: no sample
                logger.warning("metrics: the %s queue did not answer: %s", name, exc)
        yield queued
        try:
            alive = clusters_alive()
        except Exception as exc:
            logger.warning("metrics: cluster status unavailable: %s", exc)
            alive = None
        if alive is not None:
            yield GaugeMetricFamily(
                "nudge_clusters_alive",
                "django-q2 clusters (every queue, every machine) alive in the last seconds",
                value=float(alive),
            )


def scrape() -> bytes:
    """The exposition text of one scrape."""
    return generate_latest(
        _Chain([process_metrics_source(), TaskQueueCollector(), DatabaseCollector()])
    )


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not metrics_request_allowed(request):
        if settings.NUDGE_METRICS_TOKENS:
            response = HttpResponse("A valid bearer token is required.\n", status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        return HttpResponse("Not from an allowed address.\n", status=403)
    return HttpResponse(scrape(), content_type=CONTENT_TYPE_LATEST)
