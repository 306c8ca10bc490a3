"""`GET /healthz`: is this instance able to take events and carry work?

- 503 when the database or the broker does not answer (`"status": "down"`, listed in
  `"down"`): this instance cannot take events, a load balancer should pull it.
- 200 with `"status": "degraded"` (listed in `"degraded"`) when the cluster is stalled: sends
  due for more than NUDGE_STALL_SECONDS, sends in flight that long past their lease, or events
  not applied that long past their lease (journeys.metrics.cluster_stall_read). The web still
  takes events, so a load balancer must keep it; the alert is for a person.
- `"clusters"`: how many django-q2 clusters are alive, when the broker can tell (Redis, or a
  shared cache with the ORM broker).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django_q.brokers import get_broker

from journeys.metrics import cluster_stall_read
from nudge.metrics import clusters_alive

logger = logging.getLogger(__name__)


def _check_db() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        logger.warning("healthz: database check failed: %s", exc)
        return f"down: {type(exc).__name__}"
    return "ok"


def _check_broker() -> str:
    try:
        broker = get_broker()
        if not broker.ping():
            return "down: no answer"
    except Exception as exc:
        logger.warning("healthz: broker check failed: %s", exc)
        return f"down: {type(exc).__name__}"
    return "ok"


def _check_cluster() -> str:
    try:
        stall = cluster_stall_read(stall_seconds=settings.NUDGE_STALL_SECONDS)
    except Exception as exc:
        logger.warning("healthz: cluster check failed: %s", exc)
        return f"unknown: {type(exc).__name__}"
    described = stall.describe()
    if described:
        logger.warning("healthz: cluster stalled: %s", described)
        return f"stalled: {described}"
    return "ok"


def _clusters() -> int | None:
    try:
        return clusters_alive()
    except Exception as exc:
        logger.warning("healthz: cluster status unavailable: %s", exc)
        return None


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"db": _check_db(), "broker": _check_broker()}
    down = sorted(name for name, state in checks.items() if state != "ok")
    checks["cluster"] = _check_cluster() if checks["db"] == "ok" else "unknown: db down"
    degraded = [] if down or checks["cluster"] == "ok" else ["cluster"]
    status = "down" if down else "degraded" if degraded else "ok"
    body: dict[str, object] = {**checks, "status": status}
    if down:
        body["down"] = down
    if degraded:
        body["degraded"] = degraded
    if checks["broker"] == "ok" and (alive := _clusters()) is not None:
        body["clusters"] = alive
    return JsonResponse(body, status=503 if down else 200)
