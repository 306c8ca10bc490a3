"""What providers say after they took a message: an ESP's tracking events (django-anymail)
and Twilio's status callbacks move the send's delivery status; a hard bounce or a complaint
suppresses the address (marketing.services.suppression); an ESP's unsubscribe opts the
customer out of email as the unsubscribe link does.

The delivery status never loses information: a bounce or a complaint, once recorded, is
kept whatever arrives later (a late "delivered" after a bounce keeps the bounce); otherwise
the newest by the provider's time wins, and an older event changes nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction

from journeys.models import ScheduledSend
from marketing.models import Channel, OptOutSource, Suppression
from marketing.services.consent import customer_unsubscribe
from marketing.services.suppression import address_suppress

logger = logging.getLogger(__name__)

Delivery = ScheduledSend.DeliveryStatus
# statuses a later event never replaces
_FINAL = {Delivery.BOUNCED, Delivery.COMPLAINED}
_SUPPRESSES = {
    Delivery.BOUNCED: Suppression.Reason.BOUNCED,
    Delivery.COMPLAINED: Suppression.Reason.COMPLAINED,
}


def _send_find(
    *, provider: str, provider_message_id: str, send_id: int | None
) -> ScheduledSend | None:
    sends = ScheduledSend.objects.select_for_update().select_related("customer")
    if send_id is not None:
        found = sends.filter(pk=send_id).first()
        if found is not None:
            return found
    if not provider_message_id:
        return None
    return sends.filter(provider=provider, provider_message_id=provider_message_id).first()


# anymail's engagement events: when the message was first opened, first clicked
ENGAGEMENTS = ("opened", "clicked")


@transaction.atomic
def send_engagement_record(
    *,
    provider: str,
    provider_message_id: str,
    engagement: str,
    occurred_at: datetime,
    send_id: int | None = None,
) -> ScheduledSend | None:
    """Record that the recipient opened or clicked a message (an ESP's tracking event): the
    first open or click is kept (an earlier one arriving late replaces a later one), a click
    is an open too (images blocked, the link followed). The delivery status is not touched: a
    delivered, bounced or complained send stays so. None when there is no such send."""
    if engagement not in ENGAGEMENTS:
        raise ValueError(f"unknown engagement {engagement!r} (known: {', '.join(ENGAGEMENTS)})")
    send = _send_find(provider=provider, provider_message_id=provider_message_id, send_id=send_id)
    if send is None:
        logger.warning(
            "engagement feedback for an unknown message: %s %s (%s)",
            provider,
            provider_message_id,
            engagement,
        )
        return None
    changed: list[str] = []
    names = ["opened_at", "clicked_at"] if engagement == "clicked" else ["opened_at"]
    for name in names:
        current = getattr(send, name)
        if current is None or occurred_at < current:
            setattr(send, name, occurred_at)
            changed.append(name)
    if changed:
        send.save(update_fields=[*changed, "updated_at"])
    return send


@transaction.atomic
def send_delivery_record(
    *,
    provider: str,
    provider_message_id: str,
    status: str,
    detail: str,
    occurred_at: datetime,
    send_id: int | None = None,
) -> ScheduledSend | None:
    """Record a provider's word on one send, found by `send_id` when the provider echoes it
    back, else by (provider, provider_message_id). None when there is no such send (logged:
    the caller still answers 2xx, or the provider retries for ever)."""
    send = _send_find(provider=provider, provider_message_id=provider_message_id, send_id=send_id)
    if send is None:
        logger.warning(
            "delivery feedback for an unknown message: %s %s (%s)",
            provider,
            provider_message_id,
            status,
        )
        return None
    status = Delivery(status)
    current = send.delivery_status
    newer = send.delivery_updated_at is None or occurred_at >= send.delivery_updated_at
    keeps = current in _FINAL and status not in _FINAL
    if not keeps and (newer or status in _FINAL):
        send.delivery_status = status
        send.delivery_updated_at = occurred_at
        send.delivery_detail = detail[:300]
        send.save(
            update_fields=[
                "delivery_status",
                "delivery_updated_at",
                "delivery_detail",
                "updated_at",
            ]
        )
    reason = _SUPPRESSES.get(status)
    if reason is not None and send.recipient:
        address_suppress(
            channel=send.channel,
            address=send.recipient,
            reason=reason,
            source=f"provider:{provider}",
            detail=detail,
        )
    if status == Delivery.UNSUBSCRIBED and send.channel == Channel.EMAIL:
        customer_unsubscribe(customer_id=send.customer_id, source=OptOutSource.ESP_UNSUBSCRIBE)
    return send
