from __future__ import annotations

import re
from typing import Any

from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from journeys import selectors, services, stats
from journeys.api.serializers import (
    DiscountCodeSerializer,
    JourneyStatsQuerySerializer,
    JourneyStatsSerializer,
    ScheduledSendCancelSerializer,
    ScheduledSendFilterSerializer,
    ScheduledSendSerializer,
)
from journeys.codes import code_state, value_of, value_text
from journeys.models import Journey, ScheduledSend
from nudge.api import AUTHENTICATED_ERRORS, AuthenticatedAPIView, Pagination, error_responses


class HasPermission(BasePermission):
    """The user holds one model permission (the Marketer group has them)."""

    perm = ""

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.has_perm(self.perm))


class CanViewSends(HasPermission):
    perm = "journeys.view_scheduledsend"


class CanChangeSends(HasPermission):
    perm = "journeys.change_scheduledsend"


class CanCheckCodes(HasPermission):
    perm = "journeys.check_discount_code"


class CanViewJourneys(HasPermission):
    perm = "journeys.view_journey"


class ScheduledSendListView(AuthenticatedAPIView, GenericAPIView):
    permission_classes = [IsAuthenticated, CanViewSends]
    pagination_class = Pagination
    serializer_class = ScheduledSendSerializer

    @extend_schema(
        operation_id="sends_list",
        responses={
            200: ScheduledSendSerializer(many=True),
            **error_responses(400, *AUTHENTICATED_ERRORS),
        },
        parameters=[
            OpenApiParameter("customer", str, description="Customer external id."),
            OpenApiParameter("journey", str, description="Journey slug."),
            OpenApiParameter("status", str, enum=ScheduledSend.Status.values),
        ],
        summary="Scheduled sends, newest first (paginated: limit, offset).",
    )
    def get(self, request: Request) -> Response:
        filters = ScheduledSendFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        sends = selectors.scheduled_sends(**filters.validated_data)
        page = self.paginate_queryset(sends)
        return self.get_paginated_response(ScheduledSendSerializer(page, many=True).data)


class ScheduledSendDetailView(AuthenticatedAPIView):
    permission_classes = [IsAuthenticated, CanViewSends]

    @extend_schema(
        responses={200: ScheduledSendSerializer, **error_responses(404, *AUTHENTICATED_ERRORS)},
        summary="One scheduled send.",
    )
    def get(self, request: Request, send_id: int) -> Response:
        send = get_object_or_404(selectors.scheduled_sends(), pk=send_id)
        return Response(ScheduledSendSerializer(send).data)


class ScheduledSendCancelView(AuthenticatedAPIView):
    permission_classes = [IsAuthenticated, CanChangeSends]

    @extend_schema(
        request=ScheduledSendCancelSerializer,
        responses={
            200: ScheduledSendSerializer,
            **error_responses(400, 404, 409, 415, *AUTHENTICATED_ERRORS),
        },
        summary="Cancel a send that has not gone out (409 when it already has an outcome).",
    )
    def post(self, request: Request, send_id: int) -> Response:
        body = ScheduledSendCancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        get_object_or_404(ScheduledSend, pk=send_id)
        reason = body.validated_data["reason"] or "no reason given"
        try:
            services.scheduled_send_cancel(
                send_id=send_id, reason=f"cancelled by {request.user.get_username()}: {reason}"
            )
        except services.SendNotCancellable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        send = selectors.scheduled_sends().get(pk=send_id)
        return Response(ScheduledSendSerializer(send).data)


# what a code may look like (generated: capitals, digits, '-'; uploaded: '_' too), any case
CODE_PATTERN = r"^[A-Za-z0-9_-]+$"
_CODE_LIKE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class DiscountCodeView(AuthenticatedAPIView):
    """The shop's checkout asks whether a code may be used (redemption itself is recorded
    from the payment_finished event that carries it)."""

    permission_classes = [IsAuthenticated, CanCheckCodes]

    @extend_schema(
        operation_id="codes_retrieve",
        parameters=[
            OpenApiParameter(
                "code",
                {"type": "string", "minLength": 1, "maxLength": 64, "pattern": CODE_PATTERN},
                OpenApiParameter.PATH,
                required=True,
                description="The code, in any case (codes are compared upper-case).",
            )
        ],
        responses={200: DiscountCodeSerializer, **error_responses(404, *AUTHENTICATED_ERRORS)},
        summary="A discount code's state (valid, expired, redeemed, void), value and expiry; "
        "looked up case-insensitively.",
    )
    def get(self, request: Request, code: str) -> Response:
        send = selectors.discount_code_send(code) if _code_like(code) else None
        if send is None:
            raise Http404("No such discount code.")
        state, why = code_state(send, timezone.now())
        payment = send.discount_payment
        return Response(
            DiscountCodeSerializer(
                {
                    "code": send.discount_code,
                    "status": state,
                    "reason": why,
                    "value": value_of(send),
                    "value_text": value_text(
                        percent=send.discount_percent,
                        amount=send.discount_amount,
                        currency=send.discount_currency,
                    ),
                    "expires_at": send.discount_expires_at,
                    "sent_at": send.sent_at,
                    "redeemed_at": send.discount_redeemed_at,
                    "redeemed_by_payment": payment.external_id if payment is not None else None,
                    "journey": send.journey.slug,
                    "step": send.step_position,
                    "send": send.pk,
                }
            ).data
        )


def _code_like(code: str) -> bool:
    """Worth looking up: anything else is no code (and a NUL byte would be an error of the
    database, not a 404)."""
    return _CODE_LIKE.fullmatch(code.strip()) is not None


class JourneyStatsView(AuthenticatedAPIView):
    permission_classes = [IsAuthenticated, CanViewJourneys]

    @extend_schema(
        operation_id="journey_stats",
        parameters=[
            OpenApiParameter(
                "from",
                OpenApiTypes.DATE,
                description="First UTC day counted (YYYY-MM-DD); default: 30 days before `to`.",
            ),
            OpenApiParameter(
                "to",
                OpenApiTypes.DATE,
                description="First UTC day not counted (YYYY-MM-DD), after `from`, at most "
                "3660 days after it; default: tomorrow (or 30 days after `from`).",
            ),
        ],
        responses={
            200: JourneyStatsSerializer,
            **error_responses(400, 404, *AUTHENTICATED_ERRORS),
        },
        summary="A journey's figures over UTC days [from, to): enrolments, sends by outcome "
        "and reason, conversions of the sent and holdout groups, lift, codes, revenue.",
    )
    def get(self, request: Request, slug: str) -> Response:
        query = JourneyStatsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        journey = get_object_or_404(Journey, slug=slug)
        start, end = query.validated_data["from"], query.validated_data["to"]
        figures = stats.journey_figures(journey, start, end)
        report = stats.figures_report(journey, start, end, figures)
        return Response(JourneyStatsSerializer(report).data)
