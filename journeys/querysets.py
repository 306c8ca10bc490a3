from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models
from django.db.models.functions import Now

if TYPE_CHECKING:
    from journeys.models import ScheduledSend


class ScheduledSendQuerySet(models.QuerySet):
    # the statuses from the model itself (journeys.models imports this module)
    model: type[ScheduledSend]

    def pending(self) -> ScheduledSendQuerySet:
        return self.filter(status=self.model.Status.PENDING)

    def active(self) -> ScheduledSendQuerySet:
        """Not yet decided: pending or in flight."""
        return self.filter(status__in=self.model.ACTIVE)

    def due(self) -> ScheduledSendQuerySet:
        """Pending and due by the database's clock (one clock for every machine)."""
        return self.pending().filter(due_at__lte=Now())

    def in_flight_since(self, cutoff: object) -> ScheduledSendQuerySet:
        return self.filter(status=self.model.Status.SENDING, claimed_at__lt=cutoff)


ScheduledSendManager = models.Manager.from_queryset(ScheduledSendQuerySet)
