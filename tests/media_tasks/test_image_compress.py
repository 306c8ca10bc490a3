"""The compression service: claim, encode, swap in variants; idempotent and safe to race."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone
from django_q.models import OrmQ

from media_tasks import services, tasks
from media_tasks.models import ImageStatus, ImageVariant, UploadedImage
from tests.factories import UploadedImageFactory
from tests.media_tasks.conftest import stored_files

pytestmark = pytest.mark.django_db


def variant_files(media_root) -> list[str]:
    return [name for name in stored_files(media_root) if name.startswith("media_tasks/variants/")]


def test_compression_stores_variants_and_marks_done(media_root):
    image = UploadedImageFactory.create(width=2000, height=1500)

    assert tasks.compress_image(image.pk) == "done"

    image.refresh_from_db()
    assert (image.status, image.error, image.claim_token) == ("done", "", None)
    assert image.processed_at is not None
    rows = {v.name: v for v in image.variants.all()}
    assert set(rows) == {"large-webp", "large-jpg", "thumb-webp", "thumb-jpg"}
    assert (rows["large-webp"].width, rows["large-webp"].height) == (1600, 1200)
    assert (rows["thumb-jpg"].format, rows["thumb-jpg"].width) == ("jpeg", 400)
    for row in rows.values():
        assert row.file.size == row.size
        assert 0 < row.saving < 1
    assert len(variant_files(media_root)) == 4


def test_compressing_again_replaces_variants_without_duplicates(
    media_root, django_capture_on_commit_callbacks
):
    image = UploadedImageFactory.create()
    services.image_compress(image_id=image.pk)
    first_ids = set(ImageVariant.objects.values_list("pk", flat=True))
    first_files = variant_files(media_root)

    assert services.image_requeue(image_id=image.pk)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.image_compress(image_id=image.pk).status == "done"

    assert ImageVariant.objects.count() == 4
    assert set(ImageVariant.objects.values_list("pk", flat=True)).isdisjoint(first_ids)
    files = variant_files(media_root)
    assert len(files) == 4
    assert set(files).isdisjoint(first_files)  # old files deleted once the swap committed
    assert sorted(ImageVariant.objects.values_list("file", flat=True)) == files


def test_a_repeated_task_for_a_done_image_does_nothing(media_root):
    image = UploadedImageFactory.create()
    services.image_compress(image_id=image.pk)
    files = variant_files(media_root)

    assert services.image_compress(image_id=image.pk).status == "skipped"

    assert variant_files(media_root) == files
    assert UploadedImage.objects.get().attempts == 1


def test_only_one_claim_wins():
    image = UploadedImageFactory.create()

    first = services.image_claim(image_id=image.pk)
    second = services.image_claim(image_id=image.pk)

    assert first is not None
    assert second is None
    assert UploadedImage.objects.get().claim_token == first


def test_image_being_processed_is_skipped_by_another_worker(media_root):
    image = UploadedImageFactory.create()
    services.image_claim(image_id=image.pk)

    assert services.image_compress(image_id=image.pk).status == "skipped"
    assert ImageVariant.objects.count() == 0
    assert variant_files(media_root) == []


def test_stuck_processing_image_is_claimed_again_after_the_stale_period(media_root, settings):
    image = UploadedImageFactory.create()
    services.image_claim(image_id=image.pk)
    UploadedImage.objects.filter(pk=image.pk).update(
        claimed_at=timezone.now() - timedelta(seconds=settings.NUDGE_MEDIA_STALE_AFTER_SECONDS + 5)
    )

    assert services.image_compress(image_id=image.pk).status == "done"
    assert UploadedImage.objects.get().attempts == 2


def test_requeue_stuck_finds_only_abandoned_rows(django_capture_on_commit_callbacks, settings):
    stuck, live, done = (
        UploadedImageFactory.create(),
        UploadedImageFactory.create(),
        UploadedImageFactory.create(),
    )
    for image in (stuck, live):
        services.image_claim(image_id=image.pk)
    UploadedImage.objects.filter(pk=done.pk).update(status=ImageStatus.DONE)
    UploadedImage.objects.filter(pk=stuck.pk).update(
        claimed_at=timezone.now() - timedelta(seconds=settings.NUDGE_MEDIA_STALE_AFTER_SECONDS + 5)
    )

    with django_capture_on_commit_callbacks(execute=True):
        requeued = services.image_requeue_stuck()

    assert requeued == [stuck.pk]
    assert UploadedImage.objects.get(pk=stuck.pk).status == "pending"
    assert UploadedImage.objects.get(pk=live.pk).status == "processing"
    assert list(OrmQ.objects.values_list("key", flat=True)) == ["media"]


def test_requeue_is_refused_while_a_live_worker_processes_the_image():
    image = UploadedImageFactory.create()
    services.image_claim(image_id=image.pk)

    assert services.image_requeue(image_id=image.pk) is False


def test_worker_that_lost_its_claim_writes_nothing(media_root, monkeypatch):
    """Between encoding and the swap another worker took the row over: ours is discarded."""
    image = UploadedImageFactory.create()
    real_replace = services.image_variants_replace

    def taken_over(**kwargs):
        UploadedImage.objects.filter(pk=image.pk).update(claim_token=uuid.uuid4())
        return real_replace(**kwargs)

    monkeypatch.setattr(services, "image_variants_replace", taken_over)

    assert services.image_compress(image_id=image.pk).status == "skipped"
    assert ImageVariant.objects.count() == 0
    assert variant_files(media_root) == []


def test_damaged_original_marks_the_image_failed_with_a_reason(media_root):
    """The original was valid at upload and damaged in storage later: failed, original kept."""
    image = UploadedImageFactory.create()
    data = image.original.read()
    image.original.close()
    with open(image.original.path, "wb") as fp:
        fp.write(data[: len(data) // 3])

    assert tasks.compress_image(image.pk) == "failed"

    image.refresh_from_db()
    assert image.status == "failed"
    assert "truncated" in image.error
    assert image.claim_token is None
    assert ImageVariant.objects.count() == 0
    assert variant_files(media_root) == []
    assert image.original.storage.exists(image.original.name)


def test_missing_original_marks_the_image_failed(media_root):
    image = UploadedImageFactory.create()
    image.original.storage.delete(image.original.name)

    assert tasks.compress_image(image.pk) == "failed"

    assert "FileNotFoundError" in UploadedImage.objects.get().error


def test_failure_midway_leaves_the_previous_variants_whole(media_root, monkeypatch):
    image = UploadedImageFactory.create()
    services.image_compress(image_id=image.pk)
    before = sorted(ImageVariant.objects.values_list("file", flat=True))
    services.image_requeue(image_id=image.pk)
    saved: list[str] = []
    real_save = services.default_storage.save

    def disk_full_on_third(name, content, **kwargs):
        if len(saved) == 2:
            raise OSError(28, "No space left on device")
        saved.append(name)
        return real_save(name, content, **kwargs)

    monkeypatch.setattr(services.default_storage, "save", disk_full_on_third)

    assert services.image_compress(image_id=image.pk).status == "failed"

    image.refresh_from_db()
    assert "No space left on device" in image.error
    assert sorted(ImageVariant.objects.values_list("file", flat=True)) == before
    assert variant_files(media_root) == before  # the two new files were removed


def test_unexpected_error_removes_new_files_and_leaves_the_row_claimed(media_root, monkeypatch):
    image = UploadedImageFactory.create()

    def database_gone(**kwargs):
        raise RuntimeError("connection lost")

    monkeypatch.setattr(services, "image_variants_replace", database_gone)

    with pytest.raises(RuntimeError):
        services.image_compress(image_id=image.pk)

    assert variant_files(media_root) == []
    assert UploadedImage.objects.get().status == "processing"  # recoverable once stale


def test_requeue_command_lists_and_queues_failed_images(django_capture_on_commit_callbacks):
    from io import StringIO

    from django.core.management import call_command

    failed = UploadedImageFactory.create(status=ImageStatus.FAILED, error="boom")
    UploadedImageFactory.create(status=ImageStatus.DONE)
    out = StringIO()

    call_command("media_requeue", "--failed", "--dry-run", stdout=out)
    assert f"would queue 1 image(s): {failed.pk}" in out.getvalue()
    assert UploadedImage.objects.get(pk=failed.pk).status == "failed"

    with django_capture_on_commit_callbacks(execute=True):
        call_command("media_requeue", "--failed", stdout=out)
    assert UploadedImage.objects.get(pk=failed.pk).status == "pending"
    assert OrmQ.objects.filter(key="media").count() == 1


def test_original_content_file_factory_is_valid():
    image = UploadedImageFactory.create(original=ContentFile(b"x", name="x.jpg"), original_size=1)
    assert image.original_size == 1
