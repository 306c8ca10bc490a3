from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _plain_http(settings: pytest.FixtureRequest) -> None:
    """Tests talk plain HTTP to the test client; production redirects to HTTPS."""
    settings.SECURE_SSL_REDIRECT = False  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _static_files_without_collectstatic(settings: pytest.FixtureRequest) -> None:
    """Admin pages render without `collectstatic` (production reads its manifest)."""
    settings.STORAGES = {  # type: ignore[attr-defined]
        **settings.STORAGES,  # type: ignore[attr-defined]
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
