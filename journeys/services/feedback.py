"""Delivery feedback: what a provider reports about a message after it took it (delivered,
bounced, complained, ...), recorded on the send it names by its provider message id."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q
from django.utils import timezone

from journeys.models import ScheduledSend

# The order a message's statuses reach: a late "queued" never overwrites "delivered", and
# the final ones (bounced, complained, failed, undelivered) are never overwritten.
DELIVERY_RANK = {
    "queued": 1,
    "sent": 2,
    "delivered": 3,
    "opened": 4,
    "clicked": 5,
    "unsubscribed": 6,
    "undelivered": 7,
    "failed": 7,
    "bounced": 7,
    "complained": 8,
}


def scheduled_send_delivery_record(
    *, provider_message_id: str, status: str, at: datetime | None = None
) -> int:
    """Record `status` (a DELIVERY_RANK key) on the send with that provider message id,
    unless it already holds a status of a higher rank. Returns the rows changed (0 when no
    send has that id, or when the report is older news)."""
    if status not in DELIVERY_RANK or not provider_message_id:
        raise ValueError(f"unknown delivery status {status!r}")
    lower = [name for name, rank in DELIVERY_RANK.items() if rank < DELIVERY_RANK[status]]
    return (
        ScheduledSend.objects.filter(provider_message_id=provider_message_id)
        .filter(Q(delivery_status="") | Q(delivery_status__in=lower))
        .update(
            delivery_status=status,
            delivery_updated_at=at or timezone.now(),
            updated_at=timezone.now(),
        )
    )
