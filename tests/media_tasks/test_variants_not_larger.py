"""No variant larger than its original: an encoding that saves nothing is not stored, and the
original is served under that variant's name, with the reason on its row."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, ImageDraw

from media_tasks import services
from media_tasks.models import ImageVariant, UploadedImage
from media_tasks.samples import photo, photo_jpeg
from tests.media_tasks.conftest import stored_files

pytestmark = pytest.mark.django_db


def transparent_palette_png(width: int = 500, height: int = 375) -> bytes:
    """A cut-out product photo saved as a 64-colour palette PNG with transparency: re-encoded
    as a full-colour PNG (the transparent fallback) it grows: 45 KB to 102 KB here (large)
    and 172 KB (thumb, 400 px)."""
    image = photo(width, height).convert("RGBA")
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse((0, 0, width, height), fill=255)
    image.putalpha(mask)
    out = io.BytesIO()
    image.quantize(64).save(out, "PNG", optimize=True)
    return out.getvalue()


def compressed(data: bytes, name: str) -> UploadedImage:
    image = services.image_upload(file=SimpleUploadedFile(name, data))
    assert services.image_compress(image_id=image.pk).status == "done"
    image.refresh_from_db()
    return image


def test_a_variant_that_saves_nothing_is_not_stored_and_the_original_is_served(media_root):
    image = compressed(transparent_palette_png(), "cutout.png")
    rows = {v.name: v for v in image.variants.all()}

    assert set(rows) == {"large-webp", "large-png", "thumb-webp", "thumb-png"}
    for row in rows.values():
        assert row.size <= image.original_size
        assert row.file.size == row.size
    for name in ("large-png", "thumb-png"):  # both re-encodings grew past the original
        row = rows[name]
        assert row.file.name == image.original.name
        assert (row.format, row.width, row.height, row.size) == (
            "png",
            500,
            375,
            image.original_size,
        )
        assert "not smaller than the original" in row.reason
        assert row.saving == 0
    for name in ("large-webp", "thumb-webp"):
        assert rows[name].reason == ""
        assert rows[name].size < image.original_size
        assert rows[name].file.name.startswith("media_tasks/variants/")
    variant_files = [f for f in stored_files(media_root) if f.startswith("media_tasks/variants/")]
    assert sorted(variant_files) == sorted(
        [rows["large-webp"].file.name, rows["thumb-webp"].file.name]
    )


def test_the_api_serves_the_original_for_a_variant_that_saved_nothing(media_root, api_client):
    image = compressed(transparent_palette_png(), "cutout.png")

    body = api_client.get(f"/api/media/{image.pk}/").json()

    variants = {v["name"]: v for v in body["variants"]}
    assert variants["large-png"]["url"] == f"http://testserver/media/{image.original.name}"
    assert variants["large-png"]["size"] == image.original_size
    assert all(v["size"] <= image.original_size for v in variants.values())


def test_compressing_again_never_deletes_the_original(media_root):
    image = compressed(transparent_palette_png(), "cutout.png")

    assert services.image_requeue(image_id=image.pk)
    assert services.image_compress(image_id=image.pk).status == "done"

    image.refresh_from_db()
    assert image.original.storage.exists(image.original.name)
    assert ImageVariant.objects.filter(image=image, file=image.original.name).count() == 2
    assert all(v.file.storage.exists(v.file.name) for v in image.variants.all())


def test_a_photo_keeps_every_variant_as_a_compression(media_root):
    image = compressed(photo_jpeg(1200, 900), "photo.jpg")

    assert [v.reason for v in image.variants.all()] == [""] * 4
    assert all(0 < v.saving < 1 for v in image.variants.all())
