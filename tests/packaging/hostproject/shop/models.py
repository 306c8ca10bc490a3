from django.conf import settings
from django.db import models


class Order(models.Model):
    """The shop's own order: Nudge hears of it through NUDGE_HOST_EVENTS, not an API call."""

    class Status(models.TextChoices):
        OPEN = "open"
        PAID = "paid"

    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    paid_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"order {self.pk} ({self.status})"
