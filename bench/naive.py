"""The naive design the engine replaced: one django-q2 ONCE Schedule per send."""

from __future__ import annotations

from django.db.models import F
from django.db.models.functions import Now

from journeys import services
from journeys.models import ScheduledSend


def send_one(send_id: int) -> str:
    """What one schedule runs: the same compare-and-set and locked dispatch, for one row."""
    moved = ScheduledSend.objects.filter(pk=send_id, status="pending").update(
        status="sending", claimed_at=Now(), attempts=F("attempts") + 1
    )
    return services.scheduled_send_dispatch(send_id=send_id) if moved else "noop"
