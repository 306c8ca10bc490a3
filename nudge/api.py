"""What Nudge's API views share, so that they behave the same under a host project's
REST_FRAMEWORK settings (or DRF's defaults) as under the standalone site's.

The views name their permission, pagination and (for the event endpoints) exception handler
themselves. Authentication is the host's (`DEFAULT_AUTHENTICATION_CLASSES`): the API is
used by the shop's own staff and systems. So is the schema class: the OpenAPI schema is
served where it is drf-spectacular's (see nudge.urls).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError
from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)

# The apps whose DRF views the schema at nudge.urls documents (not the schema view itself).
API_APPS = ("marketing", "journeys", "media_tasks")

SCHEMA_SETTINGS: dict[str, Any] = {
    "TITLE": "Nudge API",
    "DESCRIPTION": "Signed event ingestion and scheduled marketing sends.",
    "VERSION": "0.1.0",
    "PREPROCESSING_HOOKS": ["nudge.api.endpoints_of_nudge"],
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus: a database that cannot be reached is a 503, so senders retry."""
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("database unavailable: %s", exc)
        return Response(
            {"detail": "Database unavailable, retry later."},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, DatabaseError):
        logger.exception("database error")
        return Response(
            {"detail": "Database error, retry later."},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    return drf_exception_handler(exc, context)


class Pagination(LimitOffsetPagination):
    """`?limit=&offset=`, 100 a page unless asked: DRF's own default is no pagination."""

    default_limit = 100


def endpoints_of_nudge(endpoints: list[tuple[Any, ...]], **kwargs: Any) -> list[tuple[Any, ...]]:
    """drf-spectacular preprocessing hook: Nudge's schema documents Nudge's views only, not
    the host project's (which may not use drf-spectacular at all)."""
    return [
        endpoint
        for endpoint in endpoints
        if getattr(endpoint[3], "cls", type(None)).__module__.split(".")[0] in API_APPS
    ]
