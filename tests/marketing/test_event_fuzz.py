"""No input, however malformed, makes the event endpoints answer 5xx (hypothesis)."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webhook_client import event, post_signed

pytestmark = pytest.mark.django_db

FUZZ = settings(
    # NUDGE_FUZZ_EXAMPLES=2000 for a deeper run than the suite's
    max_examples=int(os.environ.get("NUDGE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text that reaches the corners: NUL, surrogates, other planes, long runs.
nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec=None), max_size=20),
    st.sampled_from(["", "\x00", "\ud800", "1e400", "NaN", "-0", "9" * 400, "+14155550101"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    nasty_text,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(nasty_text, children, max_size=5),
    ),
    max_leaves=20,
)

FIELD_PATHS = [
    ("id",),
    ("type",),
    ("occurred_at",),
    ("user",),
    ("user", "id"),
    ("user", "email"),
    ("user", "phone"),
    ("user", "first_name"),
    ("user", "timezone"),
    ("user", "consent"),
    ("cart",),
    ("cart", "id"),
    ("cart", "total"),
    ("cart", "currency"),
    ("cart", "checkout_url"),
    ("cart", "items"),
    ("payment",),
    ("payment", "amount"),
    ("payment", "cart_id"),
    ("payment", "discount_code"),
    ("extra",),
]


def full_event() -> dict[str, Any]:
    return event(
        "evt_fuzz",
        "payment_finished",
        cart={"id": "c_1", "total": "1.00", "currency": "EUR", "items": []},
        payment={"id": "p_1", "cart_id": "c_1", "amount": "1.00", "currency": "EUR"},
    )


def replaced(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    payload = copy.deepcopy(full_event())
    target = payload
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return payload


def assert_answered(response) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:500])
    response.json()  # always a JSON answer


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes_never_cause_a_server_error(client, body):
    response = post_signed(client, "/api/events/", body)
    assert_answered(response)
    assert response.status_code == 400


@FUZZ
@given(value=json_values)
def test_any_json_value_as_an_event_never_causes_a_server_error(client, value):
    assert_answered(post_signed(client, "/api/events/", json.dumps(value).encode()))


@FUZZ
@given(path=st.sampled_from(FIELD_PATHS), value=json_values, event_id=st.text(max_size=8))
def test_an_event_with_any_field_replaced_never_causes_a_server_error(
    client, path, value, event_id
):
    payload = replaced(path, value)
    if path != ("id",):
        payload["id"] = f"evt_{event_id}"
    response = post_signed(client, "/api/events/", json.dumps(payload).encode())
    assert_answered(response)
    assert response.status_code in {200, 202, 400, 409}


@FUZZ
@given(items=st.lists(st.one_of(json_values, st.just(full_event())), max_size=6))
def test_a_batch_of_any_items_never_causes_a_server_error(client, items):
    response = post_signed(client, "/api/events/batch/", json.dumps({"events": items}).encode())
    assert_answered(response)


@FUZZ
@given(
    body=st.binary(max_size=200),
    cut=st.integers(min_value=0, max_value=400),
)
def test_a_valid_event_cut_or_spliced_with_bytes_never_causes_a_server_error(client, body, cut):
    valid = json.dumps(full_event()).encode()
    response = post_signed(client, "/api/events/", valid[:cut] + body + valid[cut:])
    assert_answered(response)


@FUZZ
@given(depth=st.integers(min_value=1, max_value=1500), kind=st.sampled_from(["[]", "{}"]))
def test_json_nested_to_any_depth_never_causes_a_server_error(client, depth, kind):
    opening, closing = (b"[", b"]") if kind == "[]" else (b'{"a":', b"}")
    inner = b"1" if kind == "{}" else b""
    deep = opening * depth + inner + closing * depth
    body = json.dumps(full_event()).encode()[:-1] + b', "deep": ' + deep + b"}"
    assert_answered(post_signed(client, "/api/events/", body))
