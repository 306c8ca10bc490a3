"""`event_record`: an event from inside the process, validated and stored like a webhook's."""

from __future__ import annotations

import pytest

from marketing import services
from marketing.models import Customer, Event
from tests.webhook_client import event, post_signed

pytestmark = pytest.mark.django_db


def test_a_valid_event_is_stored_as_the_webhook_stores_it(client):
    recorded = services.event_record(
        source=Event.Source.HOST, payload=event("e_in", user_id="u_in")
    )
    post_signed(client, "/api/events/", event("e_hook", user_id="u_hook"))

    assert recorded.created
    host, hook = Event.objects.get(event_id="e_in"), Event.objects.get(event_id="e_hook")
    assert (host.source, hook.source) == ("host", "webhook")
    assert host.payload == {
        **hook.payload,
        "id": "e_in",
        "user": {**hook.payload["user"], "id": "u_in", "email": "u_in@example.com"},
    }
    assert recorded.body == services.event_result(host)
    assert Customer.objects.get(external_id="u_in").email == "u_in@example.com"


def test_a_repeat_is_answered_as_a_repeat_and_a_changed_body_as_a_conflict():
    payload = event("e_1")
    services.event_record(source=Event.Source.HOST, payload=payload)

    assert not services.event_record(source=Event.Source.HOST, payload=dict(payload)).created
    with pytest.raises(services.EventConflict):
        services.event_record(source=Event.Source.HOST, payload=event("e_1", user_id="u_2"))


@pytest.mark.parametrize(
    "payload",
    [
        event(occurred_at="2026-11-28T12:00:00"),  # no offset
        event(event_type="checkout_started"),  # no cart
        {**event(), "user": {"id": "u_1", "timezone": "Mars/Olympus"}},
        "not an event",
    ],
)
def test_an_invalid_event_raises_with_the_webhooks_errors(client, payload):
    with pytest.raises(services.EventInvalid) as raised:
        services.event_record(source=Event.Source.HOST, payload=payload)

    response = post_signed(client, "/api/events/", payload)
    assert response.status_code == 400
    assert response.json() == {"errors": raised.value.errors}
    assert not Event.objects.exists()
