from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path: Path) -> Path:
    """Each test stores originals and variants in its own folder."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


@pytest.fixture
def api_client(db) -> APIClient:
    """The shop's integration token: uploads images and reads every one (see test_api_access)."""
    user = get_user_model().objects.create_user("shop", password="unused-password")
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="media_tasks",
            codename__in=["add_uploadedimage", "view_uploadedimage", "view_all_uploadedimages"],
        )
    )
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def stored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def admin_pages(settings) -> None:
    """Admin pages render without a collected static manifest (production storage needs one)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
