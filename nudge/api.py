"""What Nudge's API views share, so that they behave the same under a host project's
REST_FRAMEWORK settings (or DRF's defaults) as under the standalone site's.

The views name their permission, pagination, parsers, throttles and (for the event endpoints)
exception handler themselves. Authentication is the host's (`DEFAULT_AUTHENTICATION_CLASSES`):
the API is used by the shop's own staff and systems. So is the schema class: the OpenAPI schema
is served where it is drf-spectacular's (see nudge.urls).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponsePermanentRedirect, JsonResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers, status
from rest_framework.exceptions import AuthenticationFailed, ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView
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


# ASCII digits only: int() also takes "1_000", " 7", "+7" and "١٢٣" (Arabic-Indic digits).
_ASCII_INTEGER = re.compile(r"[0-9]{1,19}")
# PostgreSQL's OFFSET is a bigint; past it the query fails (it used to be a 503).
MAX_OFFSET = 2**63 - 1


def query_integer(request: Request, name: str, *, minimum: int, maximum: int, default: int) -> int:
    """A query parameter that must be a whole number in [minimum, maximum] written in ASCII
    digits, else a 400 that says so (`{name: [message]}`); `default` when it is absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if _ASCII_INTEGER.fullmatch(raw) is None or not minimum <= int(raw) <= maximum:
        raise ValidationError(
            {name: [f"must be a whole number from {minimum} to {maximum} (ASCII digits)."]}
        )
    return int(raw)


class Pagination(LimitOffsetPagination):
    """`?limit=&offset=`, 100 a page unless asked, at most `max_limit`: DRF's own default is no
    pagination, and DRF's LimitOffsetPagination takes any limit (a billion rows in one page, or
    a bigint overflow) and silently ignores a malformed one. Here a bad value is a 400."""

    default_limit = 100
    max_limit = 1000

    def get_limit(self, request: Request) -> int:
        return query_integer(
            request,
            self.limit_query_param,
            minimum=1,
            maximum=self.max_limit,
            default=self.default_limit,
        )

    def get_offset(self, request: Request) -> int:
        return query_integer(
            request, self.offset_query_param, minimum=0, maximum=MAX_OFFSET, default=0
        )

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit},
            self.offset_query_param: {"minimum": 0, "maximum": MAX_OFFSET},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters


# --- Errors, as the schema documents them ----------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    """`{"detail": "..."}`: what DRF answers for 401, 403, 404, 405, 415 and 429."""

    detail = serializers.CharField()


_ERRORS: dict[int, OpenApiResponse] = {
    400: OpenApiResponse(
        response=OpenApiTypes.OBJECT,
        description='Invalid input: `{field: [messages]}` (or `{"detail": ...}`).',
    ),
    401: OpenApiResponse(ErrorSerializer, description="No credentials, or bad ones."),
    403: OpenApiResponse(ErrorSerializer, description="The user lacks the model permission."),
    404: OpenApiResponse(ErrorSerializer, description="No such object."),
    409: OpenApiResponse(ErrorSerializer, description="The object's state forbids this."),
    413: OpenApiResponse(ErrorSerializer, description="Body over the size limit."),
    415: OpenApiResponse(ErrorSerializer, description="Body of a media type not taken here."),
    429: OpenApiResponse(
        ErrorSerializer,
        description="Too many requests for this user (NUDGE_API_TOKEN_RATE), or too many failed "
        "authentications from this address (NUDGE_API_AUTH_FAILURE_RATE); see Retry-After.",
    ),
    503: OpenApiResponse(ErrorSerializer, description="Database unavailable: retry later."),
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """The schema's error answers for `codes`, for an `@extend_schema(responses=...)`."""
    return {code: _ERRORS[code] for code in codes}


# The errors of every authenticated, throttled endpoint.
AUTHENTICATED_ERRORS = (401, 403, 429, 503)


# --- Throttling -------------------------------------------------------------------------------


def _rate(value: Any) -> str | None:
    """A rate setting: "600/min", or None (also "", "none", "off"): no limit."""
    if value is None or str(value).strip().lower() in ("", "none", "off"):
        return None
    return str(value)


class _CacheThrottle(SimpleRateThrottle):
    """DRF's sliding window in Django's default cache, open when the cache cannot be reached:
    a Redis outage must not turn every API request into a 500."""

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception as exc:  # redis.ConnectionError and friends, whatever the backend
            logger.warning("API throttle not applied, cache unavailable: %s", exc)
            return True


class UserRateThrottle(_CacheThrottle):
    """Requests per authenticated user (token or session), NUDGE_API_TOKEN_RATE ("600/min";
    None: no limit), counted in Django's default cache (shared by every process when it is
    Redis). Anonymous requests are not counted here: they are refused (401) before throttling.
    """

    scope = "nudge_user"

    def get_rate(self) -> str | None:
        return _rate(settings.NUDGE_API_TOKEN_RATE)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if not (request.user and request.user.is_authenticated):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class AuthFailureThrottle(_CacheThrottle):
    """Failed authentications (a wrong token or password) per client address,
    NUDGE_API_AUTH_FAILURE_RATE ("30/min"; None: no limit): past it, every request from that
    address is answered 429 before its credentials are even looked at, so tokens cannot be
    guessed at speed. `allow_request` only checks; `failure_record` counts a failure."""

    scope = "nudge_auth_failure"

    def get_rate(self) -> str | None:
        return _rate(settings.NUDGE_API_AUTH_FAILURE_RATE)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def throttle_success(self) -> bool:
        return True  # a request is counted only when its authentication fails

    def failure_record(self) -> None:
        if self.rate is None or not hasattr(self, "history"):
            return
        try:
            self.history.insert(0, self.now)
            self.cache.set(self.key, self.history, self.duration)  # type: ignore[attr-defined]
        except Exception as exc:
            logger.warning("API authentication failure not counted, cache unavailable: %s", exc)


class AuthenticatedAPIView(APIView):
    """The base of Nudge's token or session API views: JSON bodies only, requests per user
    throttled (429 with Retry-After), and failed authentications throttled per address."""

    parser_classes = [JSONParser]
    throttle_classes = [UserRateThrottle]

    def perform_authentication(self, request: Request) -> None:
        guard = AuthFailureThrottle()
        if not guard.allow_request(request, self):
            self.throttled(request, guard.wait() or 1)
        try:
            request.user  # noqa: B018 (authenticates)
        except AuthenticationFailed:
            guard.failure_record()
            raise


# --- Unknown paths ----------------------------------------------------------------------------


@csrf_exempt  # it changes nothing; a POST to a wrong path is a JSON 404, not a CSRF page
def not_found(
    request: HttpRequest, unknown: str = ""
) -> JsonResponse | HttpResponsePermanentRedirect:
    """Any path under Nudge's prefix that names no endpoint: a JSON 404, as the API's other
    answers are, not the site's HTML page. Like CommonMiddleware's APPEND_SLASH, a GET
    without its trailing slash is redirected to the endpoint that has it."""
    path = request.path_info
    if settings.APPEND_SLASH and not path.endswith("/") and request.method in ("GET", "HEAD"):
        try:
            match = resolve(path + "/", getattr(request, "urlconf", None))
        except Resolver404:
            match = None
        if match is not None and match.func is not not_found:
            return HttpResponsePermanentRedirect(request.get_full_path(force_append_slash=True))
    return JsonResponse({"detail": "Not found: no such API endpoint."}, status=404)


def endpoints_of_nudge(endpoints: list[tuple[Any, ...]], **kwargs: Any) -> list[tuple[Any, ...]]:
    """drf-spectacular preprocessing hook: Nudge's schema documents Nudge's views only, not
    the host project's (which may not use drf-spectacular at all)."""
    return [
        endpoint
        for endpoint in endpoints
        if getattr(endpoint[3], "cls", type(None)).__module__.split(".")[0] in API_APPS
    ]
