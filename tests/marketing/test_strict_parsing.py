"""Event bodies are parsed as strictly as the README says: UTF-8 only (json.loads on bytes
would also take UTF-16 and UTF-32), no byte order mark, amounts in ASCII digits (Decimal()
also takes "1_000" and Arabic-Indic or full-width digits)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from marketing.models import Cart, Event
from marketing.validation import event_validate
from tests.webhook_client import event, post_signed

pytestmark = pytest.mark.django_db


def checkout(total: object) -> dict:
    return event(
        "evt_cart",
        "checkout_started",
        cart={"id": "c_1", "total": total, "currency": "EUR"},
    )


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_body_in_another_unicode_encoding_is_a_400(client, encoding):
    body = json.dumps(event()).encode(encoding)  # "utf-16" and "utf-32" add a BOM

    response = post_signed(client, "/api/events/", body)

    assert response.status_code == 400
    assert "not valid UTF-8 JSON" in response.json()["detail"]
    assert not Event.objects.exists()


def test_a_utf8_byte_order_mark_is_refused_with_a_clear_message(client):
    body = b"\xef\xbb\xbf" + json.dumps(event()).encode()

    response = post_signed(client, "/api/events/", body)

    assert response.status_code == 400
    assert "byte order mark" in response.json()["detail"]


def test_utf8_with_non_ascii_text_is_still_accepted(client):
    payload = event()
    payload["user"]["first_name"] = "Zoë 李"

    response = post_signed(client, "/api/events/", json.dumps(payload, ensure_ascii=False).encode())

    assert response.status_code == 202, response.content


def test_a_batch_in_utf16_is_a_400(client):
    body = json.dumps({"events": [event()]}).encode("utf-16")

    assert post_signed(client, "/api/events/batch/", body).status_code == 400


@pytest.mark.parametrize(
    "total",
    [
        "1_000",
        "\u0661\u0662\u0663",
        "\uff11\uff12\uff13",
        "1e3",
        "12.3.4",
        "0x10",
        "Infinity",
        "",
        "--1",
    ],
)
def test_an_amount_that_is_not_plain_ascii_decimal_is_a_400(client, total):
    response = post_signed(client, "/api/events/", checkout(total))

    assert response.status_code == 400, response.content
    assert response.json()["errors"]["cart"]["total"]
    assert not Cart.objects.exists()


def test_the_message_says_what_an_amount_looks_like(client):
    errors = post_signed(client, "/api/events/", checkout("1_000")).json()["errors"]

    assert errors == {
        "cart": {"total": ["A decimal number in ASCII digits, e.g. 120.00 (no exponent, no '_')."]}
    }


def test_a_batch_item_with_a_unicode_digit_amount_is_refused_alone(client):
    ok = checkout("120.00")
    bad = {**checkout("\u0661\u0662\u0663"), "id": "evt_bad"}

    answer = post_signed(client, "/api/events/batch/", {"events": [ok, bad]}).json()

    assert [item["status"] for item in answer["results"]] == [202, 400]


@pytest.mark.parametrize(
    ("total", "stored"),
    [("120.00", "120.00"), (" 49.9 ", "49.90"), ("+5", "5.00"), (".5", "0.50"), (49.9, "49.90")],
)
def test_plain_decimal_strings_and_json_numbers_are_accepted(client, total, stored):
    response = post_signed(client, "/api/events/", checkout(total))

    assert response.status_code == 202, response.content
    assert Cart.objects.get().total == Decimal(stored)


def test_the_fast_validation_and_the_serializer_agree_on_unicode_digits():
    data, errors = event_validate(checkout("\u0661\u0662\u0663"))

    assert data is None
    assert "total" in errors["cart"]
