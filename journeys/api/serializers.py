from __future__ import annotations

from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from journeys.models import ScheduledSend


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
