from __future__ import annotations

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
