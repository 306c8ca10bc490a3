"""What an operator does to journeys and sends (API, admin), and what a removed step means for
them."""

from __future__ import annotations

from django.db import transaction
from django.db.models.functions import Now

from journeys.models import Journey, ScheduledSend

Status = ScheduledSend.Status


class SendNotCancellable(Exception):
    pass


@transaction.atomic
def scheduled_send_cancel(*, send_id: int, reason: str) -> ScheduledSend:
    """Cancel one send that has not gone out yet (API, admin)."""
    send = ScheduledSend.objects.select_for_update().get(pk=send_id)
    if send.status not in ScheduledSend.ACTIVE:
        raise SendNotCancellable(f"send {send_id} is already {send.status}")
    send.status = Status.CANCELLED
    send.reason = reason[:500]
    send.save(update_fields=["status", "reason", "updated_at"])
    return send


def scheduled_send_cancel_for_steps(*, step_ids: list[int]) -> int:
    """Cancel the active sends of steps that are being removed from their journey."""
    if not step_ids:
        return 0
    return (
        ScheduledSend.objects.active()
        .filter(step_id__in=step_ids)
        .update(
            status=Status.CANCELLED,
            reason="cancelled: step removed from the journey",
            updated_at=Now(),
        )
    )


def journeys_deactivate(*, journey_ids: list[int]) -> int:
    """Switch journeys off and nothing else (a journey with sends is never deleted: they are
    the record). The dispatcher cancels their pending sends as they come due ("cancelled:
    journey deactivated"), so switching one on again in time lets them go out. `updated_at`
    moves, so every process's copy of the journeys sees it (selectors.journeys_all). Returns
    how many were active."""
    return Journey.objects.filter(pk__in=journey_ids, active=True).update(
        active=False, updated_at=Now()
    )
