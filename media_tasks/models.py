from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.timezone import now


class ImageStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


def original_upload_to(instance: UploadedImage, filename: str) -> str:
    return f"media_tasks/originals/{now():%Y/%m}/{filename}"


class UploadedImage(models.Model):
    """An image a marketer or the shop uploaded; the row is the record of the work promised.

    The original is validated before it is stored (see `validation.py`); compression runs on the
    media cluster and moves the status pending -> processing -> done | failed.
    """

    original = models.FileField(upload_to=original_upload_to, max_length=255)
    original_name = models.CharField(max_length=255, blank=True)
    original_format = models.CharField(max_length=16)
    original_width = models.PositiveIntegerField()
    original_height = models.PositiveIntegerField()
    original_size = models.PositiveBigIntegerField(help_text="bytes")
    status = models.CharField(
        max_length=16, choices=ImageStatus.choices, default=ImageStatus.PENDING
    )  # indexed in Meta (db_index=True would add a LIKE index too)
    error = models.TextField(blank=True)
    # Compare-and-set claim: the worker that set the token is the only one allowed to finish.
    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    claimed_at = models.DateTimeField(null=True, blank=True, editable=False)
    attempts = models.PositiveIntegerField(default=0, editable=False)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    processed_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(status=ImageStatus.PROCESSING)
                | models.Q(claim_token__isnull=False, claimed_at__isnull=False),
                name="uploaded_image_processing_is_claimed",
            ),
        ]
        indexes = [models.Index(fields=["status"], name="image_status")]
        # The API shows a user the images they uploaded; this permission (and superuser) shows
        # every image (media_tasks.api.views).
        permissions = [("view_all_uploadedimages", "Can view images uploaded by anyone (API)")]

    def __str__(self) -> str:
        return self.original_name or f"image {self.pk}"


class ImageVariant(models.Model):
    """One compressed rendition of an image; (image, name) is unique so re-runs replace."""

    # indexed by image_variant_unique_name, which leads with it
    image = models.ForeignKey(
        UploadedImage, on_delete=models.CASCADE, related_name="variants", db_index=False
    )
    name = models.CharField(max_length=64)
    format = models.CharField(max_length=16)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size = models.PositiveBigIntegerField(help_text="bytes")
    file = models.FileField(max_length=255)
    # Empty for an encoded variant. Otherwise why no compression is kept for this name: the
    # encoding saved nothing, so `file` is the original itself (and format, size and
    # dimensions are the original's): see media_tasks.compression.saves_bytes.
    reason = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["image", "-width", "name"]
        constraints = [
            models.UniqueConstraint(fields=["image", "name"], name="image_variant_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.image_id}:{self.name}"

    @property
    def saving(self) -> float:
        """Fraction of the original's bytes saved (negative when the variant is larger)."""
        original = self.image.original_size
        return 1 - self.size / original if original else 0.0
