from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from media_tasks import services
from media_tasks.samples import photo_jpeg
from tests.factories import UploadedImageFactory

pytestmark = pytest.mark.django_db


def test_upload_answers_201_with_the_pending_image(api_client):
    data = photo_jpeg(800, 600)

    response = api_client.post(
        "/api/media/", {"file": SimpleUploadedFile("shop.jpg", data)}, format="multipart"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body == {
        "id": body["id"],
        "status": "pending",
        "error": "",
        "original": {"width": 800, "height": 600, "size": len(data)},
        "variants": [],
    }


def test_detail_has_exactly_the_documented_shape(api_client):
    image = UploadedImageFactory.create(width=1000, height=500)
    services.image_compress(image_id=image.pk)

    response = api_client.get(f"/api/media/{image.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["id", "status", "error", "original", "variants"]
    assert body["id"] == image.pk
    assert body["status"] == "done"
    assert body["original"] == {"width": 1000, "height": 500, "size": image.original_size}
    assert [list(v) for v in body["variants"]] == [
        ["name", "format", "width", "height", "size", "url"]
    ] * 4
    assert [(v["name"], v["format"], v["width"], v["height"]) for v in body["variants"]] == [
        ("large-jpg", "jpeg", 1000, 500),
        ("large-webp", "webp", 1000, 500),
        ("thumb-jpg", "jpeg", 400, 200),
        ("thumb-webp", "webp", 400, 200),
    ]
    for variant in body["variants"]:
        assert variant["url"].startswith("http://testserver/media/media_tasks/variants/")
        assert isinstance(variant["size"], int)
        assert variant["size"] > 0


def test_failed_image_shows_its_error(api_client):
    image = UploadedImageFactory.create(status="failed", error="Image is truncated or damaged")

    body = api_client.get(f"/api/media/{image.pk}/").json()

    assert (body["status"], body["error"], body["variants"]) == (
        "failed",
        "Image is truncated or damaged",
        [],
    )


def test_unknown_image_is_404(api_client):
    assert api_client.get("/api/media/999999/").status_code == 404


def test_detail_needs_authentication(client):
    image = UploadedImageFactory.create()

    assert client.get(f"/api/media/{image.pk}/").status_code in (401, 403)
