"""`GET /healthz`: is this instance able to take events and carry work?"""

from __future__ import annotations

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django_q.brokers import get_broker

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


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"db": _check_db(), "broker": _check_broker()}
    down = sorted(name for name, state in checks.items() if state != "ok")
    body: dict[str, object] = {**checks, "status": "ok" if not down else "down"}
    if down:
        body["down"] = down
    return JsonResponse(body, status=503 if down else 200)
