"""Every answer of `POST /api/events/` except signatures (test_event_signatures.py)."""

from __future__ import annotations

import json

import pytest

from marketing.models import Cart, Customer, Event, Payment
from tests.webhook_client import event, post_signed, signed_headers

pytestmark = pytest.mark.django_db

CART = {
    "id": "c_1",
    "total": "120.00",
    "currency": "EUR",
    "checkout_url": "https://shop.example/checkout/c_1",
    "items": [{"sku": "tea", "quantity": 2}],
}
PAYMENT = {
    "id": "p_1",
    "cart_id": "c_1",
    "amount": "120.00",
    "currency": "EUR",
    "discount_code": None,
}


def nothing_written() -> bool:
    return not (
        Event.objects.exists()
        or Customer.objects.exists()
        or Cart.objects.exists()
        or Payment.objects.exists()
    )


def test_new_event_is_accepted_and_stored(client):
    response = post_signed(client, "/api/events/", event())

    assert response.status_code == 202, response.content
    assert response.json()["id"] == "evt_01"
    stored = Event.objects.get()
    assert (stored.source, stored.event_id, stored.type) == ("webhook", "evt_01", "user_registered")
    assert stored.payload == event()
    assert len(stored.body_sha256) == 64
    assert stored.received_at is not None
    assert Customer.objects.get().email == "u_1@example.com"


def test_checkout_started_stores_the_cart(client):
    response = post_signed(client, "/api/events/", event(event_type="checkout_started", cart=CART))

    assert response.status_code == 202, response.content
    cart = Cart.objects.get()
    assert (cart.external_id, str(cart.total), cart.currency) == ("c_1", "120.00", "EUR")
    assert cart.customer.external_id == "u_1"
    assert cart.items == [{"sku": "tea", "quantity": 2}]


def test_payment_finished_stores_the_payment_against_its_cart(client):
    post_signed(client, "/api/events/", event("evt_01", "checkout_started", cart=CART))
    response = post_signed(
        client, "/api/events/", event("evt_02", "payment_finished", payment=PAYMENT)
    )

    assert response.status_code == 202, response.content
    payment = Payment.objects.get()
    assert payment.cart == Cart.objects.get()
    assert payment.discount_code == ""


def test_repeat_with_same_body_answers_200_with_same_result(client):
    first = post_signed(client, "/api/events/", event())
    second = post_signed(client, "/api/events/", event())

    assert second.status_code == 200
    assert second.json() == first.json()
    assert Event.objects.count() == 1


def test_repeat_reserialised_with_other_whitespace_and_key_order_is_the_same_event(client):
    first = post_signed(client, "/api/events/", event(event_type="checkout_started", cart=CART))
    reordered = json.dumps(
        event(event_type="checkout_started", cart=CART), indent=4, sort_keys=True
    ).encode()
    reordered = reordered.replace(b"\n", b"\r\n  ")
    second = post_signed(client, "/api/events/", reordered)

    assert second.status_code == 200, second.content
    assert second.json() == first.json()
    assert Event.objects.count() == 1
    assert Cart.objects.count() == 1


def test_repeat_of_an_event_with_a_utc_offset_answers_exactly_the_first_answer(client):
    payload = event(occurred_at="2026-11-28T13:00:00.123456+01:00")
    first = post_signed(client, "/api/events/", payload)
    second = post_signed(client, "/api/events/", payload)

    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json() == first.json()
    assert first.json()["occurred_at"] == "2026-11-28T12:00:00.123456Z"


def test_repeat_with_a_new_delivery_id_is_still_the_same_event(client):
    post_signed(client, "/api/events/", event(), msg_id="msg_first")
    second = post_signed(client, "/api/events/", event(), msg_id="msg_second")

    assert second.status_code == 200


def test_known_id_with_a_different_body_is_a_conflict_and_changes_nothing(client):
    post_signed(client, "/api/events/", event())
    changed = event()
    changed["user"]["email"] = "someone.else@example.com"
    response = post_signed(client, "/api/events/", changed)

    assert response.status_code == 409, response.content
    assert "evt_01" in response.json()["detail"]
    assert Event.objects.get().payload == event()
    assert Customer.objects.get().email == "u_1@example.com"


def test_unknown_event_type_is_stored_and_accepted(client):
    response = post_signed(client, "/api/events/", event(event_type="wishlist.item_added"))

    assert response.status_code == 202, response.content
    assert Event.objects.get().type == "wishlist.item_added"


def test_json_nested_64_levels_deep_is_accepted(client):
    response = post_signed(client, "/api/events/", event(extra=nested(63)))

    assert response.status_code == 202, response.content


def test_body_over_256_kib_is_refused_with_413_and_nothing_written(client):
    big = event(padding="x" * (256 * 1024))
    response = post_signed(client, "/api/events/", big)

    assert response.status_code == 413
    assert nothing_written()


def test_body_of_exactly_256_kib_is_accepted(client):
    body = json.dumps(event(padding="")).encode()
    body = json.dumps(event(padding="x" * (256 * 1024 - len(body)))).encode()
    assert len(body) == 256 * 1024
    response = post_signed(client, "/api/events/", body)

    assert response.status_code == 202, response.content[:300]


def nested(depth):
    """A list nested `depth` levels deep: [[[...]]]."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def invalid(payload):
    """A body that is valid JSON but breaks one rule of the schema."""
    return json.dumps(payload).encode()


def with_user(**changes):
    payload = event()
    payload["user"].update(changes)
    return invalid(payload)


def with_cart(**changes):
    return invalid(event(event_type="checkout_started", cart={**CART, **changes}))


def with_payment(**changes):
    return invalid(event(event_type="payment_finished", payment={**PAYMENT, **changes}))


def without(field):
    payload = event()
    del payload[field]
    return invalid(payload)


# (body, the field whose error the answer names)
BAD_BODIES = {
    "invalid JSON": (b'{"id": "evt_01",', "detail"),
    "empty body": (b"", "detail"),
    "JSON array, not an object": (b"[]", "non_field_errors"),
    "JSON string, not an object": (b'"evt_01"', "non_field_errors"),
    "JSON null": (b"null", "non_field_errors"),
    "missing id": (without("id"), "id"),
    "missing type": (without("type"), "type"),
    "missing occurred_at": (without("occurred_at"), "occurred_at"),
    "missing user": (without("user"), "user"),
    "user is a string": (invalid({**event(), "user": "u_1"}), "user"),
    "user without id": (invalid({**event(), "user": {"email": "a@example.com"}}), "user"),
    "checkout_started without cart": (invalid(event(event_type="checkout_started")), "cart"),
    "checkout_started with null cart": (
        invalid(event(event_type="checkout_started", cart=None)),
        "cart",
    ),
    "payment_finished without payment": (invalid(event(event_type="payment_finished")), "payment"),
    "bad email": (with_user(email="not-an-email"), "user"),
    "phone not E.164": (with_user(phone="0170 1234567"), "user"),
    "unknown time zone": (with_user(timezone="Mars/Olympus_Mons"), "user"),
    "bad currency": (with_cart(currency="euro"), "cart"),
    "total not a decimal": (with_cart(total="12o.00"), "cart"),
    "total with three decimals": (with_cart(total="1.005"), "cart"),
    "negative total": (with_cart(total="-1.00"), "cart"),
    "amount NaN": (with_payment(amount="NaN"), "payment"),
    "amount too big": (with_payment(amount="1" * 20), "payment"),
    "naive occurred_at": (invalid(event(occurred_at="2026-11-28T12:00:00")), "occurred_at"),
    "occurred_at not a date": (invalid(event(occurred_at="yesterday")), "occurred_at"),
    "occurred_at far in the future": (
        invalid(event(occurred_at="2999-01-01T00:00:00Z")),
        "occurred_at",
    ),
    "type with capitals": (invalid(event(event_type="UserRegistered")), "type"),
    "NUL in a value": (with_user(first_name="A\u0000na"), "non_field_errors"),
    "NUL in a key": (invalid({**event(), "extra": {"k\u0000": 1}}), "non_field_errors"),
    "escaped NUL in raw JSON": (
        invalid(event()).replace(b'"Ana"', b'"A\\u0000na"'),
        "non_field_errors",
    ),
    "deeply nested JSON": (
        b'{"id": "evt_01", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "detail",
    ),
    "JSON nested 65 levels deep": (invalid(event(extra=nested(64))), "detail"),
    "JSON nested 700 levels deep (under the parser's limit)": (
        invalid(event()).replace(b'"Ana"', b"[" * 700 + b"]" * 700),
        "detail",
    ),
    "non-UTF-8 body": (b'{"id": "evt_\xff\xfe"}', "detail"),
    "lone surrogate": (invalid(event()).replace(b'"Ana"', b'"\\ud800"'), None),
    "lone surrogate in an extra field": (
        invalid(event()).replace(b'"id": "evt_01"', b'"id": "evt_01", "note": "\\udfff"'),
        "non_field_errors",
    ),
    "NaN literal": (invalid(event()).replace(b'"Ana"', b"NaN"), "detail"),
    "Infinity literal": (invalid(event()).replace(b'"Ana"', b"-Infinity"), "detail"),
    "number beyond a double": (invalid(event()).replace(b'"Ana"', b"1e400"), "detail"),
    "integer of 5,000 digits": (invalid(event()).replace(b'"Ana"', b"9" * 5000), "detail"),
    "id too long": (invalid(event("e" * 256)), "id"),
    "items not a list": (with_cart(items="many"), "cart"),
}


@pytest.mark.parametrize(("body", "field"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_invalid_body_is_refused_with_400_naming_the_field(client, body, field):
    response = post_signed(client, "/api/events/", body)

    assert response.status_code == 400, response.content[:500]
    answer = response.json()
    if field == "detail":
        assert answer["detail"]
    elif field is not None:
        assert field in answer["errors"], answer
    assert nothing_written()


def test_a_cart_of_another_customer_is_refused_and_nothing_is_written(client):
    cart = {"id": "c_1", "total": "10.00", "currency": "EUR"}
    assert (
        post_signed(client, "/api/events/", event("e1", "checkout_started", cart=cart)).status_code
        == 202
    )

    response = post_signed(
        client, "/api/events/", event("e2", "checkout_started", user_id="u_2", cart=cart)
    )

    assert response.status_code == 400
    assert response.json()["errors"] == {"cart": {"id": ["cart c_1 belongs to another customer"]}}
    assert not Event.objects.filter(event_id="e2").exists()
    assert not Customer.objects.filter(external_id="u_2").exists()


def test_size_limits_follow_the_settings_at_request_time(client, settings):
    settings.NUDGE_EVENT_MAX_BYTES = 100
    assert post_signed(client, "/api/events/", event()).status_code == 413

    settings.NUDGE_BATCH_MAX_EVENTS = 2
    response = post_signed(
        client, "/api/events/batch/", {"events": [event("a"), event("b"), event("c")]}
    )
    assert response.status_code == 400
    assert response.json()["errors"]["events"] == ["at most 2 events per batch"]


@pytest.mark.parametrize("accept", ["application/xml", "text/html", "text/plain;q=1, */*;q=0"])
def test_any_accept_header_gets_the_json_answer_and_the_event_is_stored(client, accept):
    """A sender's HTTP client picks the Accept header, not the sender: whatever it says, a
    delivery is stored and answered in JSON (DRF would otherwise answer 406 and store nothing,
    or render an HTML page)."""
    deliveries = (
        ("/api/events/", event("evt_01"), 202),
        ("/api/events/batch/", {"events": [event("evt_02")]}, 200),
    )
    for path, payload, expected in deliveries:
        body = json.dumps(payload).encode()
        response = client.post(
            path,
            data=body,
            content_type="application/json",
            headers={**signed_headers(body), "Accept": accept},
        )

        assert response.status_code == expected, response.content
        assert response["Content-Type"] == "application/json"
        assert response.json()
    assert sorted(Event.objects.values_list("event_id", flat=True)) == ["evt_01", "evt_02"]
