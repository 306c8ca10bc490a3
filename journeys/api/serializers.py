from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from journeys.durations import format_iso_duration
from journeys.models import ScheduledSend
from journeys.stats import stats_range_default


class ScheduledSendSerializer(serializers.ModelSerializer):
    journey = serializers.CharField(source="journey.slug", read_only=True)
    step = serializers.IntegerField(source="step_position", read_only=True)
    customer = serializers.CharField(source="customer.external_id", read_only=True)
    cart = serializers.CharField(
        source="cart.external_id", read_only=True, default=None, allow_null=True
    )

    class Meta:
        model = ScheduledSend
        fields = [
            "id",
            "journey",
            "step",
            "customer",
            "cart",
            "channel",
            "status",
            "reason",
            "due_at",
            "sent_at",
            "discount_code",
            "recipient",
            "subject",
            "body",
            "attempts",
            "created_at",
        ]
        read_only_fields = fields


class ScheduledSendCancelSerializer(serializers.Serializer):
    reason = serializers.CharField(
        max_length=400, required=False, default="", allow_blank=True, trim_whitespace=True
    )


class ScheduledSendFilterSerializer(serializers.Serializer):
    customer = serializers.CharField(max_length=255, required=False)
    journey = serializers.CharField(max_length=100, required=False)
    status = serializers.ChoiceField(choices=ScheduledSend.Status.choices, required=False)


class DiscountPercentSerializer(serializers.Serializer):
    kind = serializers.CharField(read_only=True, help_text='"percent"')
    percent = serializers.IntegerField(read_only=True, min_value=1, max_value=100)


class DiscountAmountSerializer(serializers.Serializer):
    kind = serializers.CharField(read_only=True, help_text='"amount"')
    amount = serializers.CharField(read_only=True, help_text='A decimal string ("10.00").')
    currency = serializers.CharField(read_only=True, help_text="ISO 4217 (EUR).")


@extend_schema_field(
    PolymorphicProxySerializer(
        component_name="DiscountValue",
        serializers={"percent": DiscountPercentSerializer, "amount": DiscountAmountSerializer},
        resource_type_field_name="kind",
    )
)
class DiscountValueField(serializers.DictField):
    """A code's value: {"kind": "percent", "percent": 10} or {"kind": "amount", "amount":
    "10.00", "currency": "EUR"} (journeys.codes.value_of)."""


class DiscountCodeSerializer(serializers.Serializer):
    """A discount code as the shop's checkout checks it (journeys.codes: valid only when
    its send was sent, and it is neither expired nor redeemed)."""

    code = serializers.CharField(read_only=True)
    status = serializers.ChoiceField(
        choices=["valid", "expired", "redeemed", "void"], read_only=True
    )
    reason = serializers.CharField(
        read_only=True, help_text="Why it is not valid, in words; empty when it is."
    )
    value = DiscountValueField(read_only=True)
    value_text = serializers.CharField(read_only=True, help_text='"10%" or "10.00 EUR".')
    expires_at = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="Null: it does not expire (or not sent yet)."
    )
    sent_at = serializers.DateTimeField(read_only=True, allow_null=True)
    redeemed_at = serializers.DateTimeField(read_only=True, allow_null=True)
    redeemed_by_payment = serializers.CharField(
        read_only=True, allow_null=True, help_text="The payment id that redeemed it."
    )
    journey = serializers.CharField(read_only=True, help_text="The journey's slug.")
    step = serializers.IntegerField(read_only=True)
    send = serializers.IntegerField(read_only=True, help_text="The send's id.")


# --- a journey's figures (GET /api/journeys/{slug}/stats/, journeys.stats) ------------------

STATS_MAX_DAYS = 3660  # ten years of days: the widest range one request may ask for


class JourneyStatsQuerySerializer(serializers.Serializer):
    """`from` and `to`, UTC days (YYYY-MM-DD); `to` is excluded. Both optional: the last 30
    days, today included, by default; one alone sets the other 30 days away."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return {
            "from": serializers.DateField(required=False, input_formats=["iso-8601"]),
            "to": serializers.DateField(required=False, input_formats=["iso-8601"]),
        }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("from"), attrs.get("to")
        if start is None and end is None:
            start, end = stats_range_default(timezone.now().date())
        elif start is None:
            assert end is not None
            start = _days_before(end, 30)
        elif end is None:
            end = _days_after(start, 30)
        if end <= start:
            raise serializers.ValidationError({"to": ["must be a later day than from."]})
        if (end - start).days > STATS_MAX_DAYS:
            raise serializers.ValidationError(
                {"to": [f"the range may span at most {STATS_MAX_DAYS} days."]}
            )
        return {"from": start, "to": end}


def _days_before(day: date, days: int) -> date:
    return date.min if (day - date.min).days < days else day - timedelta(days=days)


def _days_after(day: date, days: int) -> date:
    return date.max if (date.max - day).days < days else day + timedelta(days=days)


class _DecidedSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    by_reason = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="By the reason's leading label (the text before its first ':' or ' (').",
    )


class _ConversionsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    by_kind = serializers.DictField(child=serializers.IntegerField(), help_text="code, window")


class _ConversionGroupsSerializer(serializers.Serializer):
    sent_group = _ConversionsSerializer()
    holdout_group = _ConversionsSerializer()


class _RevenueSerializer(serializers.Serializer):
    sent_group = serializers.DictField(
        child=serializers.CharField(), help_text="Amount per currency, e.g. {'EUR': '120.00'}."
    )
    holdout_group = serializers.DictField(child=serializers.CharField())


class _GroupSerializer(serializers.Serializer):
    enrolled = serializers.IntegerField()
    converted = serializers.IntegerField()
    conversion_rate = serializers.FloatField(allow_null=True)


class _GroupsSerializer(serializers.Serializer):
    sent = _GroupSerializer()
    holdout = _GroupSerializer()


class _IntervalSerializer(serializers.Serializer):
    ci95 = serializers.ListField(
        child=serializers.FloatField(), min_length=2, max_length=2, allow_null=True
    )
    method = serializers.CharField()


class _LiftSerializer(_IntervalSerializer):
    relative = serializers.FloatField(allow_null=True)


class _DifferenceSerializer(_IntervalSerializer):
    absolute = serializers.FloatField(allow_null=True)


class JourneyStatsSerializer(serializers.Serializer):
    journey = serializers.CharField()
    time_zone = serializers.CharField()
    holdout_percent = serializers.CharField()
    conversion_window = serializers.SerializerMethodField()
    enrolled = serializers.IntegerField()
    held_out = serializers.IntegerField()
    sent = serializers.IntegerField()
    cancelled = _DecidedSerializer()
    skipped = _DecidedSerializer()
    failed = _DecidedSerializer()
    codes_redeemed = serializers.IntegerField()
    conversions = _ConversionGroupsSerializer()
    revenue = _RevenueSerializer()
    groups = _GroupsSerializer()
    lift = _LiftSerializer()
    difference = _DifferenceSerializer()

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        return {
            "journey": fields.pop("journey"),
            "from": serializers.DateField(),
            "to": serializers.DateField(help_text="Excluded."),
            **fields,
        }

    @extend_schema_field(OpenApiTypes.STR)
    def get_conversion_window(self, report: dict[str, Any]) -> str:
        """ISO 8601, e.g. P5D."""
        return format_iso_duration(report["conversion_window"])
