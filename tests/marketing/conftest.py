from __future__ import annotations

import pytest

from tests.webhook_client import SECRET


@pytest.fixture(autouse=True)
def _webhook_secret(settings):
    """Every marketing test signs with tests.webhook_client.SECRET unless it says otherwise."""
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET]


MARKETER_PASSWORD = "demo-Passw0rd-for-tests"


@pytest.fixture
def marketer(db):
    from marketing import services

    return services.marketer_user_ensure(username="marketer", password=MARKETER_PASSWORD)


@pytest.fixture
def marketer_client(client, marketer):
    client.force_login(marketer)
    return client
