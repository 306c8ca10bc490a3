"""Validation of incoming events: shape only, no side effects."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from marketing.event_fields import (
    CURRENCY_PATTERN,
    EVENT_TYPE_PATTERN,
    MAX_CLOCK_SKEW,
    MAX_ITEMS,
    MAX_LENGTH,
    MONEY_DECIMAL_PLACES,
    MONEY_MAX_DIGITS,
    OFFSET_PATTERN,
    SURROGATE,
    time_zone_known,
)
from marketing.models import E164, EventType

_OFFSET = re.compile(OFFSET_PATTERN)


def _no_nul(value: Any) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000, and UTF-8 cannot hold a lone surrogate
    (JSON's "\\ud800"): refuse them anywhere in the event with a field error, not a 500."""
    if isinstance(value, str):
        if "\x00" in value:
            raise serializers.ValidationError("must not contain the NUL character (\\u0000)")
        if SURROGATE.search(value):
            raise serializers.ValidationError("must not contain lone surrogates (\\ud800-\\udfff)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key)
            _no_nul(item)
    elif isinstance(value, list):
        for item in value:
            _no_nul(item)


def _validate_timezone(value: str) -> None:
    if not time_zone_known(value):
        raise serializers.ValidationError(f"unknown time zone {value!r}")


# An amount written as a string: ASCII digits, an optional sign and at most one decimal point.
# Decimal() alone also takes "1_000", "1e3", "١٢٣" (Arabic-Indic digits) and full-width digits.
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


class AmountField(serializers.DecimalField):
    """A money amount as the columns store it (their digits and decimal places, at least 0),
    from a plain decimal string ("120.00") or a JSON number, never another spelling."""

    default_error_messages = {
        **serializers.DecimalField.default_error_messages,
        "invalid": "A decimal number in ASCII digits, e.g. 120.00 (no exponent, no '_').",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            max_digits=MONEY_MAX_DIGITS,
            decimal_places=MONEY_DECIMAL_PLACES,
            min_value=0,
            **kwargs,
        )

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and _PLAIN_DECIMAL.fullmatch(data.strip()) is None:
            self.fail("invalid")
        return super().to_internal_value(data)


class CurrencyField(serializers.RegexField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            CURRENCY_PATTERN, error_messages={"invalid": "ISO 4217 code, e.g. EUR."}, **kwargs
        )


class ConsentSerializer(serializers.Serializer):
    email = serializers.BooleanField(required=False)
    sms = serializers.BooleanField(required=False)


class UserSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=MAX_LENGTH["user.id"])
    email = serializers.EmailField(
        max_length=MAX_LENGTH["user.email"], required=False, allow_blank=True
    )
    phone = serializers.CharField(
        max_length=MAX_LENGTH["user.phone"],
        required=False,
        allow_blank=True,
        allow_null=True,
        validators=[E164],
    )
    first_name = serializers.CharField(
        max_length=MAX_LENGTH["user.first_name"], required=False, allow_blank=True, allow_null=True
    )
    timezone = serializers.CharField(
        max_length=MAX_LENGTH["user.timezone"], required=False, validators=[_validate_timezone]
    )
    consent = ConsentSerializer(required=False)


class CartSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=MAX_LENGTH["cart.id"])
    total = AmountField()
    currency = CurrencyField()
    checkout_url = serializers.URLField(
        max_length=MAX_LENGTH["cart.checkout_url"], required=False, allow_blank=True
    )
    items = serializers.ListField(
        child=serializers.DictField(), required=False, max_length=MAX_ITEMS
    )


class PaymentSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=MAX_LENGTH["payment.id"])
    cart_id = serializers.CharField(
        max_length=MAX_LENGTH["payment.cart_id"], required=False, allow_null=True
    )
    amount = AmountField()
    currency = CurrencyField()
    discount_code = serializers.CharField(
        max_length=MAX_LENGTH["payment.discount_code"],
        required=False,
        allow_null=True,
        allow_blank=True,
    )


class EventSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=MAX_LENGTH["id"])
    type = serializers.RegexField(
        EVENT_TYPE_PATTERN,
        error_messages={"invalid": "lower-case letters, digits, '_' and '.', at most 64."},
    )
    occurred_at = serializers.DateTimeField()
    user = UserSerializer()
    cart = CartSerializer(required=False, allow_null=True)
    payment = PaymentSerializer(required=False, allow_null=True)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            try:
                _no_nul(data)
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"non_field_errors": exc.detail}) from exc
        return super().to_internal_value(data)

    def validate_occurred_at(self, value: Any) -> Any:
        raw = self.initial_data.get("occurred_at") if isinstance(self.initial_data, dict) else None
        if isinstance(raw, str) and not _OFFSET.search(raw):
            raise serializers.ValidationError(
                "must carry a time zone offset, e.g. 2026-11-28T12:00:00Z"
            )
        if value > timezone.now() + MAX_CLOCK_SKEW:
            raise serializers.ValidationError("is in the future")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        event_type = attrs["type"]
        if event_type == EventType.CHECKOUT_STARTED and not attrs.get("cart"):
            raise serializers.ValidationError({"cart": ["required for checkout_started"]})
        if event_type == EventType.PAYMENT_FINISHED and not attrs.get("payment"):
            raise serializers.ValidationError({"payment": ["required for payment_finished"]})
        return attrs


class EventBatchSerializer(serializers.Serializer):
    """The batch envelope; each event is validated on its own and answered per item."""

    events = serializers.ListField(
        # null items are refused one by one, like any other malformed item
        child=serializers.JSONField(allow_null=True),
        allow_empty=False,
    )

    def validate_events(self, value: list[Any]) -> list[Any]:
        limit = settings.NUDGE_BATCH_MAX_EVENTS
        if len(value) > limit:
            raise serializers.ValidationError(f"at most {limit} events per batch")
        return value
