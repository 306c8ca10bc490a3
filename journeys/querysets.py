from __future__ import annotations

from django.db import models
from django.db.models.functions import Now


class ScheduledSendQuerySet(models.QuerySet):
    def pending(self) -> ScheduledSendQuerySet:
        return self.filter(status="pending")

    def active(self) -> ScheduledSendQuerySet:
        """Not yet decided: pending or in flight."""
        return self.filter(status__in=["pending", "sending"])

    def due(self) -> ScheduledSendQuerySet:
        """Pending and due by the database's clock (one clock for every machine)."""
        return self.pending().filter(due_at__lte=Now())

    def in_flight_since(self, cutoff: object) -> ScheduledSendQuerySet:
        return self.filter(status="sending", claimed_at__lt=cutoff)


ScheduledSendManager = models.Manager.from_queryset(ScheduledSendQuerySet)
