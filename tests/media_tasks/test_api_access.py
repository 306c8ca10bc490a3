"""Who may use /api/media/: model permissions (add to upload, view to read), and a user reads
the images they uploaded unless they may read all (superuser, view_all_uploadedimages)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from media_tasks.models import UploadedImage
from media_tasks.samples import photo_jpeg
from tests.factories import UploadedImageFactory
from tests.media_tasks.conftest import stored_files

pytestmark = pytest.mark.django_db


def token_client(username: str, *codenames: str, superuser: bool = False) -> APIClient:
    users = get_user_model().objects
    make = users.create_superuser if superuser else users.create_user
    user = make(username, password="unused-password")
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="media_tasks", codename__in=codenames)
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    client.user = user  # type: ignore[attr-defined]
    return client


def upload(client: APIClient):
    return client.post(
        "/api/media/",
        {"file": SimpleUploadedFile("p.jpg", photo_jpeg(120, 90))},
        format="multipart",
    )


def test_a_token_without_permissions_cannot_upload(media_root):
    response = upload(token_client("nobody"))

    assert response.status_code == 403
    assert UploadedImage.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_token_with_view_only_cannot_upload(media_root):
    assert upload(token_client("reader", "view_uploadedimage")).status_code == 403
    assert UploadedImage.objects.count() == 0


def test_a_token_with_add_permission_uploads_and_reads_its_own_image():
    client = token_client("shop", "add_uploadedimage", "view_uploadedimage")

    response = upload(client)

    assert response.status_code == 201, response.content
    image = UploadedImage.objects.get()
    assert image.uploaded_by == client.user  # type: ignore[attr-defined]
    assert client.get(f"/api/media/{image.pk}/").json()["id"] == image.pk


def test_a_token_without_view_permission_cannot_read_even_its_own_image():
    uploader = token_client("uploader", "add_uploadedimage")
    image_id = upload(uploader).json()["id"]

    assert uploader.get(f"/api/media/{image_id}/").status_code == 403


def test_a_token_without_permissions_cannot_read_an_image():
    image = UploadedImageFactory.create()

    assert token_client("nobody").get(f"/api/media/{image.pk}/").status_code == 403


def test_another_users_image_is_not_found():
    owner = token_client("owner", "add_uploadedimage", "view_uploadedimage")
    other = token_client("other", "add_uploadedimage", "view_uploadedimage")
    image_id = upload(owner).json()["id"]

    response = other.get(f"/api/media/{image_id}/")

    assert response.status_code == 404
    assert "photo" not in response.content.decode() and "p.jpg" not in response.content.decode()


@pytest.mark.parametrize(
    ("codenames", "superuser"),
    [(("view_uploadedimage", "view_all_uploadedimages"), False), ((), True)],
    ids=["view_all permission", "superuser"],
)
def test_who_may_view_all_reads_every_users_image(codenames, superuser):
    owner = token_client("owner", "add_uploadedimage", "view_uploadedimage")
    image_id = upload(owner).json()["id"]
    reader = token_client("auditor", *codenames, superuser=superuser)

    response = reader.get(f"/api/media/{image_id}/")

    assert response.status_code == 200
    assert response.json()["id"] == image_id
