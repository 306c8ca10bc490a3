from __future__ import annotations

import pytest

from marketing.models import Customer, Event
from tests.webhook_client import SECRET, event, post_signed

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _secret(settings):
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET]


def test_new_event_is_accepted_and_stored(client):
    response = post_signed(client, "/api/events/", event())

    assert response.status_code == 202, response.content
    assert response.json()["id"] == "evt_01"
    stored = Event.objects.get()
    assert (stored.source, stored.event_id, stored.type) == ("webhook", "evt_01", "user_registered")
    assert Customer.objects.get().email == "u_1@example.com"


def test_repeat_with_same_body_answers_200_with_same_result(client):
    first = post_signed(client, "/api/events/", event())
    second = post_signed(client, "/api/events/", event())

    assert second.status_code == 200
    assert second.json() == first.json()
    assert Event.objects.count() == 1
