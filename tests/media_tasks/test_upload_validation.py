"""Bad uploads are refused with a clear 400 and leave nothing behind: no image row, no variant
rows, no stored file, no queued task (the original is not kept)."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django_q.models import OrmQ
from PIL import Image

from media_tasks.models import ImageVariant, UploadedImage
from media_tasks.samples import encoded, photo, photo_jpeg
from tests.media_tasks.conftest import stored_files

pytestmark = pytest.mark.django_db


def upload(client, data: bytes, name: str = "upload.jpg"):
    return client.post("/api/media/", {"file": SimpleUploadedFile(name, data)}, format="multipart")


def assert_nothing_written(media_root) -> None:
    assert UploadedImage.objects.count() == 0
    assert ImageVariant.objects.count() == 0
    assert OrmQ.objects.count() == 0
    assert stored_files(media_root) == []


def bomb_png(width: int, height: int) -> bytes:
    """A tiny file that decodes to width x height pixels."""
    return encoded(Image.new("1", (width, height)), "PNG")


def refusal(response) -> str:
    assert response.status_code == 400, response.content
    return response.json()["file"][0]


def test_text_file_is_not_an_image(api_client, media_root):
    message = refusal(upload(api_client, b"hello, this is not an image\n", "notes.jpg"))

    assert "Not an image" in message
    assert_nothing_written(media_root)


def test_truncated_jpeg_is_refused(api_client, media_root):
    data = photo_jpeg(800, 600)

    message = refusal(upload(api_client, data[: len(data) // 2]))

    assert "truncated" in message
    assert_nothing_written(media_root)


def test_truncated_png_is_refused(api_client, media_root):
    data = encoded(photo(400, 300), "PNG")

    message = refusal(upload(api_client, data[: len(data) // 2], "cut.png"))

    assert "truncated" in message.lower() or "damaged" in message.lower()
    assert_nothing_written(media_root)


def test_image_over_the_pixel_limit_is_refused(api_client, media_root, settings):
    settings.NUDGE_MEDIA_MAX_PIXELS = 1_000_000

    message = refusal(upload(api_client, bomb_png(2000, 2000), "bomb.png"))

    assert "4000000 pixels, over the limit of 1000000 pixels" in message
    assert_nothing_written(media_root)


def test_decompression_bomb_warning_from_pillow_is_an_error(api_client, media_root, settings):
    """Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse."""
    settings.NUDGE_MEDIA_MAX_PIXELS = 10**10
    side = (
        int((Image.MAX_IMAGE_PIXELS or 89_478_485) ** 0.5) + 100
    )  # just over Pillow's limit: a warning
    data = bomb_png(side, side)
    assert len(data) < 200_000

    message = refusal(upload(api_client, data, "bomb.png"))

    assert "decompression bomb" in message
    assert_nothing_written(media_root)


def test_file_over_the_size_limit_is_refused(api_client, media_root, settings):
    settings.NUDGE_MEDIA_MAX_UPLOAD_BYTES = 10_000
    data = photo_jpeg(400, 300)
    assert len(data) > 10_000

    message = refusal(upload(api_client, data))

    assert f"File is {len(data)} bytes, over the limit of 10000 bytes." == message
    assert_nothing_written(media_root)


def test_body_far_over_the_size_limit_is_refused_before_parsing(api_client, media_root, settings):
    settings.NUDGE_MEDIA_MAX_UPLOAD_BYTES = 1_000

    message = refusal(upload(api_client, b"\xff" * 200_000))

    assert "over the limit of 1000 bytes" in message
    assert_nothing_written(media_root)


def test_sixteen_bit_image_mode_is_unsupported(api_client, media_root):
    data = encoded(Image.new("I;16", (64, 64), 1000), "PNG")

    message = refusal(upload(api_client, data, "depth.png"))

    assert "Image mode I;16 is not supported" in message
    assert_nothing_written(media_root)


def test_animated_gif_is_refused(api_client, media_root):
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "green", "blue")]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])

    message = refusal(upload(api_client, out.getvalue(), "spinner.gif"))

    assert "Animated and multi-page images are not supported" in message
    assert_nothing_written(media_root)


def test_unsupported_format_is_refused(api_client, media_root):
    data = encoded(Image.new("RGB", (16, 16)), "ICO")

    message = refusal(upload(api_client, data, "favicon.ico"))

    assert "format ICO is not supported" in message
    assert_nothing_written(media_root)


def test_empty_file_is_refused(api_client, media_root):
    response = upload(api_client, b"")

    assert response.status_code == 400
    assert_nothing_written(media_root)


def test_missing_file_field_is_refused(api_client, media_root):
    response = api_client.post("/api/media/", {"other": "x"}, format="multipart")

    assert response.status_code == 400
    assert "file" in response.json()
    assert_nothing_written(media_root)


def test_upload_needs_authentication(media_root, client):
    response = client.post("/api/media/", {"file": SimpleUploadedFile("a.jpg", photo_jpeg(8, 8))})

    assert response.status_code in (401, 403)
    assert_nothing_written(media_root)


def test_admin_upload_shows_the_same_error(admin_client, admin_pages, media_root):
    response = admin_client.post(
        "/admin/media_tasks/uploadedimage/add/",
        {"original": SimpleUploadedFile("notes.jpg", b"not an image")},
    )

    assert response.status_code == 200  # the form again, with the error
    assert "Not an image" in response.content.decode()
    assert_nothing_written(media_root)


def test_admin_upload_stores_and_queues(
    admin_client, admin_pages, media_root, django_capture_on_commit_callbacks
):
    data = photo_jpeg(320, 240)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/media_tasks/uploadedimage/add/",
            {"original": SimpleUploadedFile("shop.jpg", data)},
        )

    assert response.status_code == 302, response.content.decode()[:2000]
    image = UploadedImage.objects.get()
    assert (image.original_width, image.original_height, image.status) == (320, 240, "pending")
    assert list(OrmQ.objects.values_list("key", flat=True)) == ["media"]


def test_image_data_is_not_trusted_by_file_name(
    api_client, media_root, django_capture_on_commit_callbacks
):
    """A PNG named .jpg is a PNG: the content decides."""
    data = encoded(photo(100, 80), "PNG")
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(api_client, data, "really-a-png.jpg")

    assert response.status_code == 201, response.content
    assert UploadedImage.objects.get().original_format == "PNG"
    assert io.BytesIO(data).getvalue() == UploadedImage.objects.get().original.read()
