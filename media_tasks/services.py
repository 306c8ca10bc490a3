"""Every write to media data: upload, claim, finish, fail, requeue.

Compression holds no transaction while Pillow works: `image_compress` claims the row
(compare-and-set, committed), encodes and stores the new files outside any transaction, then
swaps the variant rows in one short transaction that re-checks the claim. A worker that lost
its claim, or failed, deletes the files it wrote; the old files go only after the swap commits.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone
from django_q.tasks import async_task

from media_tasks import compression
from media_tasks.conf import compression_settings
from media_tasks.models import ImageStatus, ImageVariant, UploadedImage
from media_tasks.validation import InvalidImage, inspect_upload

logger = logging.getLogger(__name__)

COMPRESS_TASK = "media_tasks.tasks.compress_image"
MAX_ERROR_LENGTH = 2000


@dataclass(frozen=True)
class CompressOutcome:
    image_id: int
    status: str  # the image's status afterwards, or "skipped" when another worker has it
    variants: int = 0


def _enqueue_compression(image_id: int) -> None:
    """Queue the compression on the media cluster's own queue, never the messaging one."""
    async_task(
        COMPRESS_TASK,
        image_id,
        cluster=settings.NUDGE_MEDIA_CLUSTER,
        task_name=f"compress-image-{image_id}-{uuid.uuid4().hex[:8]}",
    )


@transaction.atomic
def image_upload(*, file: UploadedFile, uploaded_by: Any = None) -> UploadedImage:
    """Validate and store an original, and queue its compression once the row is committed.

    Raises InvalidImage before anything is written: a refused upload leaves no row and no file.
    """
    info = inspect_upload(
        file,
        size=file.size or 0,
        max_bytes=settings.NUDGE_MEDIA_MAX_UPLOAD_BYTES,
        max_pixels=settings.NUDGE_MEDIA_MAX_PIXELS,
    )
    name = (file.name or "upload").rsplit("/", 1)[-1][:200]
    image = UploadedImage(
        original_name=name,
        original_format=info.format,
        original_width=info.width,
        original_height=info.height,
        original_size=info.size,
        uploaded_by=uploaded_by if getattr(uploaded_by, "pk", None) else None,
    )
    image.original.save(name, file, save=False)
    try:
        with transaction.atomic():
            image.save()
    except BaseException:
        image.original.delete(save=False)
        raise
    transaction.on_commit(partial(_enqueue_compression, image.pk))
    return image


def _stale_before() -> Any:
    return Now() - timedelta(seconds=settings.NUDGE_MEDIA_STALE_AFTER_SECONDS)


@transaction.atomic
def image_claim(*, image_id: int) -> uuid.UUID | None:
    """Compare-and-set pending (or abandoned processing) -> processing; the token, or None.

    One UPDATE decides: two workers given the same image cannot both win. A `processing` row
    older than NUDGE_MEDIA_STALE_AFTER_SECONDS (its worker was killed) can be claimed again.
    """
    token = uuid.uuid4()
    claimable = Q(status=ImageStatus.PENDING) | Q(
        status=ImageStatus.PROCESSING, claimed_at__lt=_stale_before()
    )
    won = (
        UploadedImage.objects.filter(claimable, pk=image_id).update(
            status=ImageStatus.PROCESSING,
            claim_token=token,
            claimed_at=Now(),
            attempts=F("attempts") + 1,
            error="",
            updated_at=timezone.now(),
        )
        == 1
    )
    return token if won else None


@transaction.atomic
def image_variants_replace(
    *,
    image_id: int,
    claim_token: uuid.UUID,
    variants: list[tuple[compression.EncodedVariant, str]],
    served_by_original: list[tuple[compression.EncodedVariant, str]] | None = None,
) -> bool:
    """Swap in a complete new set of variants (encoded, stored file name) and mark done.

    `served_by_original` holds the variants that saved nothing (encoded, reason): their
    rows name the original's file, format, size and dimensions, with the reason. False when
    the claim was lost (another worker took the row over): nothing is changed. The previous
    set's files are deleted after commit (never the original).
    """
    image = UploadedImage.objects.select_for_update().filter(pk=image_id).first()
    if image is None or image.status != ImageStatus.PROCESSING or image.claim_token != claim_token:
        return False
    old_files = [
        name
        for name in image.variants.values_list("file", flat=True)
        if name != image.original.name
    ]
    image.variants.all().delete()
    rows = [
        ImageVariant(
            image=image,
            name=encoded.name,
            format=encoded.format.lower(),
            width=encoded.width,
            height=encoded.height,
            size=len(encoded.data),
            file=file_name,
        )
        for encoded, file_name in variants
    ]
    rows += [
        ImageVariant(
            image=image,
            name=encoded.name,
            format=image.original_format.lower(),
            width=image.original_width,
            height=image.original_height,
            size=image.original_size,
            file=image.original.name,
            reason=reason[:255],
        )
        for encoded, reason in served_by_original or []
    ]
    ImageVariant.objects.bulk_create(rows)
    image.status = ImageStatus.DONE
    image.claim_token = None
    image.processed_at = timezone.now()
    image.error = ""
    image.save(update_fields=["status", "claim_token", "processed_at", "error", "updated_at"])
    transaction.on_commit(partial(_delete_files, old_files))
    return True


@transaction.atomic
def image_fail(*, image_id: int, claim_token: uuid.UUID, error: str) -> bool:
    """Mark a claimed image failed with a reason; earlier variants, if any, are left whole."""
    return (
        UploadedImage.objects.filter(
            pk=image_id, status=ImageStatus.PROCESSING, claim_token=claim_token
        ).update(
            status=ImageStatus.FAILED,
            claim_token=None,
            error=error[:MAX_ERROR_LENGTH],
            processed_at=timezone.now(),
            updated_at=timezone.now(),
        )
        == 1
    )


def image_compress(*, image_id: int) -> CompressOutcome:
    """Compress one image into its variants (the media task's whole job).

    Deliberately not one transaction: the claim must be committed before minutes of CPU
    work, and no transaction is held open meanwhile. Each write is its own atomic service.
    A repeat delivery of the task for an image that is done, failed or being processed by a
    live worker is a no-op ("skipped"); use `image_requeue` to compress again.
    """
    token = image_claim(image_id=image_id)
    if token is None:
        logger.info("image %s: not claimable (done, failed or taken), skipped", image_id)
        return CompressOutcome(image_id=image_id, status="skipped")
    image = UploadedImage.objects.get(pk=image_id)
    written: list[str] = []
    try:
        with image.original.open("rb") as fp:
            encoded = compression.compress(
                fp, settings=compression_settings(), max_pixels=settings.NUDGE_MEDIA_MAX_PIXELS
            )
        prefix = f"media_tasks/variants/{image_id}/{token.hex[:12]}"
        stored = []
        # A variant no smaller than the original is no compression: not stored, the
        # original is served under its name (its row says why).
        size = image.original_size
        kept = [v for v in encoded if compression.saves_bytes(v, original_size=size)]
        served_by_original = [
            (v, compression.not_saving_reason(v, original_size=size))
            for v in encoded
            if not compression.saves_bytes(v, original_size=size)
        ]
        for variant in kept:
            name = default_storage.save(
                f"{prefix}/{variant.name}.{variant.extension}", ContentFile(variant.data)
            )
            written.append(name)
            stored.append((variant, name))
        if not image_variants_replace(
            image_id=image_id,
            claim_token=token,
            variants=stored,
            served_by_original=served_by_original,
        ):
            _delete_files(written)
            return CompressOutcome(image_id=image_id, status="skipped")
    except (InvalidImage, OSError, ValueError) as exc:
        _delete_files(written)
        reason = str(exc) if isinstance(exc, InvalidImage) else f"{type(exc).__name__}: {exc}"
        image_fail(image_id=image_id, claim_token=token, error=reason)
        logger.warning("image %s: compression failed: %s", image_id, reason)
        return CompressOutcome(image_id=image_id, status=ImageStatus.FAILED)
    except BaseException:
        # Unexpected (database down, worker killed...): the files go, the row stays
        # `processing` until it is stale and claimed again.
        _delete_files(written)
        raise
    for variant, _ in stored:
        logger.info(
            "image %s: %s %dx%d %d bytes (%.0f%% saved)",
            image_id,
            variant.name,
            variant.width,
            variant.height,
            len(variant.data),
            100 * (1 - len(variant.data) / image.original_size),
        )
    for variant, reason in served_by_original:
        logger.info("image %s: %s not kept: %s", image_id, variant.name, reason)
    return CompressOutcome(
        image_id=image_id, status=ImageStatus.DONE, variants=len(stored) + len(served_by_original)
    )


@transaction.atomic
def image_requeue(*, image_id: int) -> bool:
    """Compress an image again (new settings, a failure fixed): back to pending and queued.

    Refused (False) while a live worker is processing it. The current variants stay until
    the new set replaces them.
    """
    requeued = (
        UploadedImage.objects.filter(pk=image_id)
        .filter(
            Q(status__in=[ImageStatus.PENDING, ImageStatus.DONE, ImageStatus.FAILED])
            | Q(status=ImageStatus.PROCESSING, claimed_at__lt=_stale_before())
        )
        .update(status=ImageStatus.PENDING, claim_token=None, updated_at=timezone.now())
        == 1
    )
    if requeued:
        transaction.on_commit(partial(_enqueue_compression, image_id))
    return requeued


@transaction.atomic
def image_requeue_stuck(*, dry_run: bool = False) -> list[int]:
    """Requeue every image abandoned in `processing` (its worker died); their ids."""
    stuck = list(
        UploadedImage.objects.filter(
            status=ImageStatus.PROCESSING, claimed_at__lt=_stale_before()
        ).values_list("pk", flat=True)
    )
    if not dry_run:
        for image_id in stuck:
            image_requeue(image_id=image_id)
    return stuck


def _delete_files(names: list[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            logger.warning("could not delete %s", name, exc_info=True)
