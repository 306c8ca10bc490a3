from __future__ import annotations

from django.conf import settings
from django.db import models


class Order(models.Model):
    """A shop's order, as a host project models it."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PAID = "paid", "Paid"
        REFUNDED = "refunded", "Refunded"

    customer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    paid_at = models.DateTimeField(null=True, blank=True)

    # declared: mypy reads config.settings, where this test app is not installed
    objects: models.Manager[Order] = models.Manager()

    def __str__(self) -> str:
        return f"order {self.pk} ({self.status})"
