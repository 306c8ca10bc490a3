"""Event ingestion endpoints: verify the signature on the raw bytes, validate, call one service."""

from __future__ import annotations

import codecs
import json
import logging
import math
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketing import services, webhooks
from marketing.api.serializers import EventBatchSerializer, EventSerializer
from marketing.models import Event
from marketing.validation import event_validate
from nudge.api import error_responses, exception_handler

logger = logging.getLogger(__name__)


# The three headers webhooks.verify reads, as WSGI names them (not all of request.headers).
_SIGNATURE_HEADERS = [
    (name, "HTTP_" + name.upper().replace("-", "_"))
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
]


class JSONAnswers(BaseContentNegotiation):
    """Webhook answers are JSON whatever the Accept header says: a sender's HTTP client
    chooses that header, and DRF's negotiation would answer 406 to `Accept: application/xml`
    (the event not stored) or an HTML page to `text/html`. It also skips parsing the header."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)  # unused: the views read the raw body

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))  # the view's only one: JSONRenderer
        return renderer, str(renderer.media_type)


class SignedEventView(APIView):
    """Common steps of both endpoints; DRF parsing is bypassed so the signature covers the
    exact bytes received."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    # Not throttled: this is the ingest path, where high volume is normal (the signature is
    # the authentication). JSONParser only documents the body: the views read the raw bytes.
    throttle_classes: list[Any] = []
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JSONAnswers
    max_bytes = 0

    def get_exception_handler(self) -> Any:
        # A database outage is a 503 with Retry-After for senders, under any host's handler.
        return exception_handler

    def _verified_json(self, request: Request) -> tuple[Any, Response | None]:
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isascii() and length.isdigit() and int(length) > self.max_bytes:
            return None, self._too_large()
        if _chunked(request):
            if not request.META.get("wsgi.input_terminated"):
                return None, Response(
                    {
                        "detail": "A chunked body needs a server that de-chunks it "
                        "(gunicorn does); send a Content-Length."
                    },
                    status=status.HTTP_411_LENGTH_REQUIRED,
                )
            body = _read_at_most(request.META["wsgi.input"], self.max_bytes + 1)
        else:
            body = request._request.body  # raw bytes, before any parsing
        if len(body) > self.max_bytes:
            return None, self._too_large()
        try:
            webhooks.verify(
                secrets=settings.NUDGE_WEBHOOK_SECRETS,
                headers={name: request.META.get(meta, "") for name, meta in _SIGNATURE_HEADERS},
                body=body,
                tolerance_seconds=settings.NUDGE_WEBHOOK_TOLERANCE_SECONDS,
            )
        except webhooks.WebhookConfigurationError as exc:
            logger.error("event refused: %s", exc)
            return None, Response(
                {"detail": "Webhook verification is not configured on this server."},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        except webhooks.WebhookVerificationError as exc:
            return None, Response(
                {"detail": f"Invalid signature: {exc}."}, status=status.HTTP_401_UNAUTHORIZED
            )
        try:
            return _strict_json_loads(body), None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError too
            return None, Response(
                {"detail": f"Body is not valid UTF-8 JSON: {exc}"},
                status=status.HTTP_400_BAD_REQUEST,
            )

    def _too_large(self) -> Response:
        return Response(
            {"detail": f"Body larger than {self.max_bytes} bytes."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )


def _chunked(request: Request) -> bool:
    """A body sent with `Transfer-Encoding: chunked` and no Content-Length: Django reads such a
    body as empty (it trusts CONTENT_LENGTH only), so the view reads the WSGI stream itself."""
    encoding = request.META.get("HTTP_TRANSFER_ENCODING", "")
    return "chunked" in encoding.lower() and not request.META.get("CONTENT_LENGTH")


def _read_at_most(stream: Any, limit: int) -> bytes:
    """Up to `limit` bytes of a de-chunked WSGI input (gunicorn's ends at the last chunk)."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        part = stream.read(min(64 * 1024, limit - size))
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _refuse_non_finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return number


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Deep enough for any real event (a batch adds two levels); far from Python's recursion limit,
# which hashing and storing the payload would otherwise hit (a 500) at a few hundred levels.
MAX_JSON_DEPTH = 64


def _strict_json_loads(body: bytes) -> Any:
    """RFC 8259 JSON only: UTF-8 (json.loads would also take UTF-16 and UTF-32 bytes, and a
    UTF-8 byte order mark, which RFC 8259 says senders must not add), no NaN or Infinity and
    no numbers beyond a double (jsonb refuses them), integers over Python's 4,300 digits raise
    ValueError, and nesting is limited to MAX_JSON_DEPTH; all are 400s."""
    if body.startswith(codecs.BOM_UTF8):
        raise ValueError("it starts with a UTF-8 byte order mark (send UTF-8 without one)")
    text = body.decode("utf-8")  # strict: UnicodeDecodeError is a ValueError
    document = json.loads(text, parse_float=_refuse_non_finite, parse_constant=_refuse_constant)
    containers = [document] if isinstance(document, dict | list) else []
    for _ in range(MAX_JSON_DEPTH):  # level by level, not recursively
        containers = [
            child
            for container in containers
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, dict | list)
        ]
        if not containers:
            return document
    raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")


def _answer(outcome: services.BatchOutcome) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for one event's outcome."""
    if isinstance(outcome, services.EventConflict):
        return status.HTTP_409_CONFLICT, {"detail": str(outcome)}
    if isinstance(outcome, services.CartOwnedByAnotherCustomer):
        return status.HTTP_400_BAD_REQUEST, {"errors": {"cart": {"id": [str(outcome)]}}}
    return (status.HTTP_202_ACCEPTED if outcome.created else status.HTTP_200_OK), outcome.body


def _ingest_one(payload: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for one event; DatabaseError propagates (503 for the request)."""
    try:
        result = services.event_record(source=Event.Source.WEBHOOK, payload=payload)
    except services.EventInvalid as exc:
        return status.HTTP_400_BAD_REQUEST, {"errors": exc.errors}
    except (services.EventConflict, services.CartOwnedByAnotherCustomer) as exc:
        return _answer(exc)
    return _answer(result)


# Answers of both endpoints that are about the request's body or the server, not the events.
_TRANSPORT_ERRORS = {
    411: OpenApiResponse(
        description="Chunked body on a server that does not de-chunk it: send a Content-Length."
    ),
    413: OpenApiResponse(
        description="Body over the size limit (NUDGE_EVENT_MAX_BYTES, 256 KiB; "
        "a batch: NUDGE_BATCH_MAX_BYTES, 8 MiB)."
    ),
    503: error_responses(503)[503],
}


class EventIngestView(SignedEventView):
    @property
    def max_bytes(self) -> int:  # type: ignore[override]
        return int(settings.NUDGE_EVENT_MAX_BYTES)

    @extend_schema(
        request=EventSerializer,
        responses={
            202: OpenApiResponse(
                description="New event, committed with its customer, cart or payment and the "
                "sends it cancels; journeys enrol from it within a tick."
            ),
            200: OpenApiResponse(description="Repeat of a known event: the same result."),
            400: OpenApiResponse(description="Invalid JSON or schema, with field errors."),
            401: OpenApiResponse(description="Missing or bad signature, or stale timestamp."),
            409: OpenApiResponse(description="Known event id with a different body."),
            **_TRANSPORT_ERRORS,
        },
        summary="Ingest one signed event (Standard Webhooks).",
    )
    def post(self, request: Request) -> Response:
        payload, refusal = self._verified_json(request)
        if refusal is not None:
            return refusal
        code, body = _ingest_one(payload)
        return Response(body, status=code)


class EventBatchIngestView(SignedEventView):
    @property
    def max_bytes(self) -> int:  # type: ignore[override]
        return int(settings.NUDGE_BATCH_MAX_BYTES)

    @extend_schema(
        request=EventBatchSerializer,
        responses={
            200: OpenApiResponse(description="One result per event, in order."),
            400: OpenApiResponse(description="Invalid JSON or envelope, with field errors."),
            401: OpenApiResponse(description="Missing or bad signature, or stale timestamp."),
            **_TRANSPORT_ERRORS,
        },
        summary="Ingest up to 1,000 signed events; answered per item.",
    )
    def post(self, request: Request) -> Response:
        payload, refusal = self._verified_json(request)
        if refusal is not None:
            return refusal
        if not _plain_envelope(payload):  # DRF says what is wrong with it, if anything
            envelope = EventBatchSerializer(data=payload)
            if not envelope.is_valid():
                return Response({"errors": envelope.errors}, status=status.HTTP_400_BAD_REQUEST)
        events: list[Any] = payload["events"]
        results: list[dict[str, Any]] = [{} for _ in events]
        valid: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
        for index, item in enumerate(events):
            data, errors = event_validate(item)
            if data is None:
                results[index] = {"index": index, "status": 400, "body": {"errors": errors}}
            else:
                valid.append((index, data, item))
        # One transaction for the batch; a refused item leaves the others intact.
        with transaction.atomic():
            outcomes = services.events_ingest_batch(
                source=Event.Source.WEBHOOK, items=[(data, item) for _, data, item in valid]
            )
        for (index, _, _), outcome in zip(valid, outcomes, strict=True):
            # the answer /api/events/ would give for this event, status and body
            code, body = _answer(outcome)
            results[index] = {"index": index, "status": code, "body": body}
        counts = {"accepted": 0, "duplicate": 0, "conflict": 0, "invalid": 0}
        names = {202: "accepted", 200: "duplicate", 409: "conflict", 400: "invalid"}
        for item in results:
            counts[names[item["status"]]] += 1
        return Response({**counts, "results": results}, status=status.HTTP_200_OK)


def _plain_envelope(payload: Any) -> bool:
    """The common, valid envelope, checked without building EventBatchSerializer (which
    would also dump every event to JSON once more): {"events": [1..limit items]} and nothing
    the serializer could refuse."""
    if type(payload) is not dict or set(payload) != {"events"}:
        return False
    events = payload["events"]
    return type(events) is list and 0 < len(events) <= settings.NUDGE_BATCH_MAX_EVENTS
