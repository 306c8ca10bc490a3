"""`POST /api/events/batch/`: one signature over the body, one answer per event."""

from __future__ import annotations

import json

import pytest

from marketing.models import Customer, Event
from tests.webhook_client import event, post_signed, signed_headers

pytestmark = pytest.mark.django_db

BATCH = "/api/events/batch/"


def test_each_event_of_a_batch_is_answered_in_order_as_the_single_endpoint_would(client):
    post_signed(client, "/api/events/", event("evt_known"))
    conflicting = event("evt_known")
    conflicting["user"]["first_name"] = "Other"
    events = [
        event("evt_a", user_id="u_a"),
        event("evt_known"),
        conflicting,
        event("evt_b", "checkout_started", user_id="u_b"),  # no cart
        event("evt_c", "wishlist.item_added", user_id="u_c"),
    ]

    response = post_signed(client, BATCH, {"events": events})

    assert response.status_code == 200, response.content
    answer = response.json()
    assert [item["index"] for item in answer["results"]] == [0, 1, 2, 3, 4]
    assert [item["status"] for item in answer["results"]] == [202, 200, 409, 400, 202]
    assert answer["results"][0]["body"]["id"] == "evt_a"
    assert "cart" in answer["results"][3]["body"]["errors"]
    assert (answer["accepted"], answer["duplicate"], answer["conflict"], answer["invalid"]) == (
        2,
        1,
        1,
        1,
    )
    assert set(Event.objects.values_list("event_id", flat=True)) == {"evt_known", "evt_a", "evt_c"}


def test_an_event_repeated_within_a_batch_is_stored_once(client):
    response = post_signed(client, BATCH, {"events": [event("evt_a"), event("evt_a")]})

    assert [item["status"] for item in response.json()["results"]] == [202, 200]
    assert Event.objects.count() == 1
    assert Customer.objects.count() == 1


def test_a_conflicting_id_within_a_batch_is_refused_and_the_first_kept(client):
    second = event("evt_a")
    second["user"]["email"] = "changed@example.com"

    response = post_signed(client, BATCH, {"events": [event("evt_a"), second]})

    assert [item["status"] for item in response.json()["results"]] == [202, 409]
    assert Customer.objects.get().email == "u_1@example.com"


def test_a_malformed_item_does_not_block_the_others(client):
    events = [
        "not an event",
        42,
        None,
        [],
        {"id": "evt_nul", "x": "\u0000"},
        event("evt_ok", user_id="u_ok"),
    ]

    response = post_signed(client, BATCH, {"events": events})

    assert response.status_code == 200, response.content
    statuses = [item["status"] for item in response.json()["results"]]
    assert statuses == [400, 400, 400, 400, 400, 202]
    assert list(Event.objects.values_list("event_id", flat=True)) == ["evt_ok"]


def test_a_repeated_batch_answers_the_same_results(client):
    events = [event(f"evt_{n}", user_id=f"u_{n % 3}") for n in range(10)]
    first = post_signed(client, BATCH, {"events": events}).json()
    second = post_signed(client, BATCH, {"events": events}).json()

    assert [r["body"] for r in second["results"]] == [r["body"] for r in first["results"]]
    assert second["duplicate"] == 10
    assert Event.objects.count() == 10


def test_a_batch_of_1000_events_is_accepted(client):
    events = [event(f"evt_{n}", user_id=f"u_{n % 50}") for n in range(1000)]

    response = post_signed(client, BATCH, {"events": events})

    assert response.status_code == 200
    assert response.json()["accepted"] == 1000
    assert Event.objects.count() == 1000


def test_a_batch_of_1001_events_is_refused_whole(client):
    events = [event(f"evt_{n}") for n in range(1001)]

    response = post_signed(client, BATCH, {"events": events})

    assert response.status_code == 400
    assert "events" in response.json()["errors"]
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "envelope",
    [[], {}, {"events": []}, {"events": "evt_01"}, {"event": [event()]}, None],
    ids=["array", "no events", "empty events", "events not a list", "misspelt key", "null"],
)
def test_a_malformed_envelope_is_refused_with_400(client, envelope):
    response = post_signed(client, BATCH, envelope)

    assert response.status_code == 400, response.content
    assert not Event.objects.exists()


def test_a_batch_body_over_its_limit_is_refused_with_413(client, settings):
    padding = "x" * (settings.NUDGE_BATCH_MAX_BYTES + 1)

    response = post_signed(client, BATCH, {"events": [event(padding=padding)]})

    assert response.status_code == 413
    assert not Event.objects.exists()


def test_an_event_under_the_batch_limit_but_over_256_kib_is_accepted_in_a_batch(client):
    """The batch limit is on the whole body; documented in the README."""
    response = post_signed(client, BATCH, {"events": [event(padding="x" * 300_000)]})

    assert response.json()["results"][0]["status"] == 202


def test_the_batch_signature_covers_the_whole_body(client):
    body = json.dumps({"events": [event("evt_a")]}).encode()
    headers = signed_headers(body)
    tampered = body.replace(b"evt_a", b"evt_b")

    response = client.post(BATCH, data=tampered, content_type="application/json", headers=headers)

    assert response.status_code == 401
    assert not Event.objects.exists()


def test_an_unsigned_batch_is_refused(client):
    body = json.dumps({"events": [event()]}).encode()

    response = client.post(BATCH, data=body, content_type="application/json")

    assert response.status_code == 401
    assert not Event.objects.exists()


def test_a_single_event_signature_does_not_open_the_batch_endpoint(client):
    single = json.dumps(event()).encode()
    headers = signed_headers(single)
    body = json.dumps({"events": [event()]}).encode()

    response = client.post(BATCH, data=body, content_type="application/json", headers=headers)

    assert response.status_code == 401
