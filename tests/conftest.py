from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _plain_http(settings: pytest.FixtureRequest) -> None:
    """Tests talk plain HTTP to the test client; production redirects to HTTPS."""
    settings.SECURE_SSL_REDIRECT = False  # type: ignore[attr-defined]
