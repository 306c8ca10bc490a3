from __future__ import annotations

import pytest

from tests.webhook_client import SECRET


@pytest.fixture(autouse=True)
def _webhook_secret(settings):
    """Every marketing test signs with tests.webhook_client.SECRET unless it says otherwise."""
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET]
