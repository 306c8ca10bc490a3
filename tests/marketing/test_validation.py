"""event_validate gives EventSerializer's answer, to the type and the error message."""

from __future__ import annotations

import copy
import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework import ISO_8601
from rest_framework.settings import api_settings

from bench.run import _event as bench_event
from marketing import validation
from marketing.api.serializers import EventSerializer
from marketing.validation import event_validate
from tests.marketing.test_event_fuzz import json_values, nasty_text
from tests.webhook_client import event

DIFFERENTIAL = settings(
    # NUDGE_FUZZ_EXAMPLES=5000 for a deeper run than the suite's
    max_examples=int(os.environ.get("NUDGE_FUZZ_EXAMPLES", "300")),
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def typed(value: Any) -> Any:
    """The value with every type spelled out: 1 == True and Decimal('0') == Decimal('-0.00')."""
    if isinstance(value, dict):
        return (type(value), {key: typed(item) for key, item in value.items()})
    if isinstance(value, list):
        return (type(value), [typed(item) for item in value])
    if isinstance(value, datetime):
        return (type(value), value.isoformat(), repr(value.tzinfo))
    if isinstance(value, Decimal):
        return (type(value), str(value))
    return (type(value), value)


def serializer_answer(payload: Any) -> tuple[Any, Any]:
    serializer = EventSerializer(data=copy.deepcopy(payload))
    if serializer.is_valid():
        return typed(serializer.validated_data), None
    return None, json.loads(json.dumps(serializer.errors))


def fast_answer(payload: Any) -> tuple[Any, Any]:
    before = copy.deepcopy(payload)
    data, errors = event_validate(payload)
    assert payload == before, "event_validate changed its input"
    if errors is None:
        return typed(data), None
    assert data is None
    return None, json.loads(json.dumps(errors))


def assert_same_answer(payload: Any) -> None:
    assert fast_answer(payload) == serializer_answer(payload)


def recent() -> str:
    return (timezone.now() - timedelta(minutes=1)).isoformat()


# --- values at the edges of each field ----------------------------------------------------------

MISSING = object()  # the key left out
NOT_STRINGS = [MISSING, None, True, 0, 17, 1.5, [], {}, ["x"], {"x": "y"}]
TEXT_255 = ["", "   ", " e ", "a" * 255, " " + "a" * 255 + "\n", "a" * 256, "é" * 256]
TEXT_255 += ["\x00", "\ud800"]
AMOUNTS = [
    *["0", "120", "120.5", "120.00", " 3.50 ", "9999999999.99", "0000000000001", "0.001"],
    *[
        "-0",
        "-0.00",
        "-1",
        "1.005",
        "1e2",
        "1E-2",
        "12345678901",
        "\u0661\u0662",
        "1_000",
        ".5",
        "5.",
    ],
    *["NaN", "sNaN", "Infinity", "-inf", "", " ", "9" * 1001, "0" * 999 + "1", 12, 1.5, -1],
]
CURRENCIES = ["EUR", "eur", "EURO", " EUR ", "EUR\n", "EU", "€", "E1R", ""]
EDGES: dict[tuple[str, ...], list[Any]] = {
    ("id",): TEXT_255 + NOT_STRINGS,
    ("type",): [
        *["user_registered", "custom.thing_2", " user_registered ", "User_registered", "1x"],
        *["a" * 64, "a" * 65, "user_registered\n", "", "checkout_started", "user_registered"],
        *NOT_STRINGS,
    ],
    ("occurred_at",): [
        *["2024-01-01T12:00:00Z", "2024-01-01T12:00:00z", "2024-01-01 12:00:00+01:00"],
        *["2024-01-01T12:00:00.123456-0530", "2024-01-01T12:00:00Z\n", "2024-01-01T12:00Z"],
        *["2024-01-01T12:00:00+01", "2024-01-01T12:00:00", "2024-01-01", " 2024-01-01T12:00Z"],
        *["2024/01/01T12:00:00Z", "2024-02-30T12:00:00Z", "2024-01-01T25:00:00Z"],
        *["2024-01-01T12:00:00+24:00", "2024-01-01T12:00:00.1234567Z", "20240101T120000Z"],
        *["2024-01-01T12:00:00+00:00:00", "2999-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"],
        *["0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z", "2024-1-1T1:2:3Z"],
        *NOT_STRINGS,
    ],
    ("user",): [MISSING, None, "u_1", [], {}, {"id": "u_2"}],
    ("user", "id"): TEXT_255 + NOT_STRINGS,
    ("user", "email"): [
        *["", "  ", " a@example.com ", "A@EXAMPLE.COM", "a@b", "a@localhost", "a@[127.0.0.1]"],
        *["a@[::1]", '"quoted man"@example.com', "ü@example.com", "a@exämple.com"],
        *["a@xn--exmple-cua.com", "a..b@example.com", ".a@example.com", "a.@example.com"],
        *["a@-example.com", "a@example-.com", "a@example.c", "a@example.c0m", "a@example.com."],
        *["a@@example.com", "a@b@example.com", "a" * 242 + "@example.com", "a@example..com"],
        *["a" * 243 + "@example.com", "a@" + "b" * 63 + ".com", "a@" + "b" * 64 + ".com"],
        *["a@example." + "c" * 63, "a@example." + "c" * 64, "a+b_c-d@ex-ample.co.uk", "a b@x.com"],
        *NOT_STRINGS,
    ],
    ("user", "phone"): [
        *[
            "+14155550101",
            " +14155550101 ",
            "+1\u0664\u0661\u0665\u0665\u0665\u0665\u0660\u0661\u0660\u0661",
            "+0123456789",
            "+123456",
        ],
        *["+1234567", "+123456789012345", "+1234567890123456", "14155550101", "", " "],
        *["+14155550101\n", *NOT_STRINGS],
    ],
    ("user", "first_name"): ["Ana", "a" * 150, "a" * 151, " " + "b" * 150, "", " ", *NOT_STRINGS],
    ("user", "timezone"): [
        *["Europe/Berlin", " UTC ", "UTC", "utc", "", " ", "Nowhere/City", "Europe", "Europe/"],
        *["../etc/passwd", "/etc/localtime", "a" * 65, "America/Argentina/Buenos_Aires"],
        *NOT_STRINGS,
    ],
    ("user", "consent"): [
        *[{}, {"email": True}, {"email": False, "sms": True}, {"push": True}, {"email": "true"}],
        *[{"sms": 1}, {"sms": 0}, {"sms": 0.0}, {"email": None}, {"email": "null"}, {"sms": 2}],
        *[{"email": "no"}, {"email": ""}, *NOT_STRINGS],
    ],
    ("cart",): [MISSING, None, "c_1", [], {}, {"id": "c_2"}],
    ("cart", "id"): TEXT_255 + NOT_STRINGS,
    ("cart", "total"): AMOUNTS + NOT_STRINGS,
    ("cart", "currency"): CURRENCIES + NOT_STRINGS,
    ("cart", "checkout_url"): [
        *["https://shop.example/c_1", "http://example.com", "https://a.b.example.co.uk/x?y=1#z"],
        *["https://example.com/a b", "https://example.com/ä", "https://münchen.de/", ""],
        *["HTTPS://EXAMPLE.COM/", "ftp://a.bc", "https://localhost:8000/x", "https://a.b"],
        *["https://user:pw@example.com/", "https://example.com:99999/", "https://[::1]/"],
        *["https://[::1", "https://exa mple.com", "https://example.com/\tx", "javascript:x"],
        *["https://-example.com", "https://example.com./", "https://example.com/" + "p" * 1981],
        *["https://example.com/" + "p" * 1980, " https://example.com ", "https://example"],
        *["https://" + "a" * 63 + ("." + "a" * 63) * 3 + ".com/", "https://" + "a" * 64 + ".com"],
        *["https://" + "a" * 63 + ("." + "a" * 61) * 3 + ".co/", "https://example.com\\x"],
        *NOT_STRINGS,
    ],
    ("cart", "items"): [
        *[[{"sku": "a", "qty": 1, "note": None}], [{}] * 500, [{}] * 501, [1], [[]], [None]],
        *[[{"a": {"b": ["\x00"]}}], [{"\ud800": 1}], "x", *NOT_STRINGS],
    ],
    ("payment",): [MISSING, None, "p_1", [], {}, {"id": "p_2"}],
    ("payment", "id"): TEXT_255 + NOT_STRINGS,
    ("payment", "cart_id"): TEXT_255 + NOT_STRINGS,
    ("payment", "amount"): AMOUNTS + NOT_STRINGS,
    ("payment", "currency"): CURRENCIES + NOT_STRINGS,
    ("payment", "discount_code"): ["", " ", "d" * 64, "d" * 65, " SAVE10 ", *NOT_STRINGS],
    ("extra",): [MISSING, "x", "\x00", {"deep": [["\ud800"]]}, {"\x00": 1}],
}


def full_event(**changes: Any) -> dict[str, Any]:
    """A valid event with every field there is."""
    payload = event(
        "evt_1",
        "payment_finished",
        occurred_at=recent(),
        cart={
            "id": "c_1",
            "total": "12.5",
            "currency": "EUR",
            "checkout_url": "https://shop.example/c_1",
            "items": [{"sku": "a", "qty": 1, "note": None}],
        },
        payment={
            "id": "p_1",
            "cart_id": "c_1",
            "amount": "12.50",
            "currency": "EUR",
            "discount_code": "SAVE10",
        },
    )
    payload["user"]["consent"] = {"email": True, "sms": False}
    payload.update(changes)
    return payload


def with_value(payload: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    target = payload
    for key in path[:-1]:
        target = target[key]
    if value is MISSING:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = copy.deepcopy(value)
    return payload


@pytest.mark.parametrize("path", list(EDGES), ids="/".join)
@pytest.mark.parametrize("event_type", ["user_registered", "checkout_started", "payment_finished"])
def test_edge_values_get_the_serializers_answer(path, event_type):
    for value in EDGES[path]:
        payload = with_value(full_event(type=event_type), path, value)
        assert fast_answer(payload) == serializer_answer(payload), (path, value)


# --- generated events: mostly well formed, each field now and then wrong -----------------------


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a good value, sometimes a bad one: most events stay valid, every field gets hit.
    (Not n == 0: hypothesis draws the ends of a range more often than the middle.)"""
    return st.integers(0, 24).flatmap(lambda n: bad if n == 12 else good)


def edges(*path: str) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from([v for v in EDGES[path] if v is not MISSING]), anything)


def padded(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    spaces = st.sampled_from(["", "", " ", "\t", "\n", "\u00a0", "\u3000"])
    return st.tuples(spaces, strategy, spaces).map("".join)


anything = st.one_of(json_values, nasty_text, st.just(None))
ids = mostly(padded(st.from_regex(r"[a-zA-Z0-9_.:-]{1,24}", fullmatch=True)), edges("id"))
event_types = mostly(
    st.sampled_from(["user_registered", "checkout_started", "payment_finished"]),
    st.one_of(st.from_regex(r"[a-z][a-z0-9_.]{0,63}", fullmatch=True), edges("type")),
)
past = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(2025, 1, 1))
offsets = st.sampled_from([UTC, timezone.get_fixed_timezone(60), timezone.get_fixed_timezone(-330)])


def iso_forms(moment: datetime) -> st.SearchStrategy[str]:
    """Ways of writing a moment with its offset that the serializer takes."""
    text = moment.isoformat()
    return st.sampled_from(
        [text, text.replace("+00:00", "Z"), text.replace("T", " "), text[:-3] + text[-2:]]
    )


occurred_ats = mostly(
    st.builds(lambda moment, tz: moment.replace(tzinfo=tz), past, offsets).flatmap(iso_forms),
    edges("occurred_at"),
)
emails = mostly(
    st.one_of(st.emails(), st.builds("{}@example.com".format, st.from_regex(r"[a-z0-9.]{1,9}"))),
    edges("user", "email"),
)
phones = mostly(
    st.one_of(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True), st.sampled_from(["", None])),
    st.one_of(st.integers(0, 10**12), edges("user", "phone")),
)
first_names = mostly(st.one_of(st.text(max_size=20), st.none()), edges("user", "first_name"))
zones = mostly(
    st.sampled_from(["Europe/Berlin", "UTC", "America/New_York", "Asia/Kolkata"]),
    edges("user", "timezone"),
)
flags = mostly(st.booleans(), st.sampled_from(["true", "False", "0", 1, 0, 0.0, None, "", 2]))
consents = st.dictionaries(st.sampled_from(["email", "sms", "push"]), flags, max_size=3)
amounts = mostly(
    st.one_of(
        st.decimals(min_value=0, max_value=Decimal("9999999999.99"), places=2).map(str),
        st.decimals(min_value=0, max_value=Decimal("99"), places=1).map(str),
        st.integers(0, 10**10).map(str),
    ),
    st.one_of(
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
        st.integers(-(10**13), 10**13),
        st.floats(),
        edges("cart", "total"),
    ),
)
currencies = mostly(st.sampled_from(["EUR", "USD", "GBP"]), edges("cart", "currency"))
hosts = st.sampled_from(["shop.example", "example.com", "a-b.c0.example.org", "xn--80ak6aa92e.com"])
urls = mostly(
    st.one_of(
        st.builds(
            "{}://{}{}".format,
            st.sampled_from(["https", "http"]),
            hosts,
            st.one_of(st.just(""), st.text(max_size=15).map(lambda path: "/" + path)),
        ),
        st.just(""),
    ),
    edges("cart", "checkout_url"),
)
item_lists = mostly(
    st.lists(st.dictionaries(nasty_text, json_values, max_size=3), max_size=3),
    st.one_of(st.lists(json_values, min_size=1, max_size=3), edges("cart", "items")),
)


def optional(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Each field present or absent."""
    return st.fixed_dictionaries({}, optional=fields)


users = st.builds(
    lambda required, rest: {**required, **rest},
    st.fixed_dictionaries({"id": ids}),
    optional(
        {
            "email": emails,
            "phone": phones,
            "first_name": first_names,
            "timezone": zones,
            "consent": mostly(consents, edges("user", "consent")),
        }
    ),
)
carts = st.builds(
    lambda required, rest: {**required, **rest},
    st.fixed_dictionaries({"id": ids, "total": amounts, "currency": currencies}),
    optional({"checkout_url": urls, "items": item_lists}),
)
payments = st.builds(
    lambda required, rest: {**required, **rest},
    st.fixed_dictionaries({"id": ids, "amount": amounts, "currency": currencies}),
    optional(
        {
            "cart_id": mostly(st.one_of(ids, st.none()), edges("payment", "cart_id")),
            "discount_code": mostly(
                st.one_of(st.text(max_size=10), st.none()), edges("payment", "discount_code")
            ),
        }
    ),
)
events = st.builds(
    lambda required, rest: {**required, **rest},
    st.fixed_dictionaries(
        {
            "id": ids,
            "type": event_types,
            "occurred_at": occurred_ats,
            "user": mostly(users, anything),
        }
    ),
    optional(
        {
            "cart": mostly(carts, st.one_of(st.none(), anything)),
            "payment": mostly(payments, st.one_of(st.none(), anything)),
        }
    ),
)


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A generated event with a few more blows: a field dropped, replaced, or an extra key."""
    payload = draw(events)
    for _ in range(draw(st.integers(0, 2))):
        target = payload
        while True:
            nested = [key for key, value in target.items() if isinstance(value, dict)]
            if not nested or draw(st.booleans()):
                break
            target = target[draw(st.sampled_from(nested))]
        action = draw(st.sampled_from(["drop", "replace", "extra"]))
        if action == "drop" and target:
            del target[draw(st.sampled_from(sorted(target)))]
        elif action == "replace" and target:
            target[draw(st.sampled_from(sorted(target)))] = draw(anything)
        else:
            target[draw(nasty_text)] = draw(anything)
    return payload


@DIFFERENTIAL
@given(payload=events)
def test_generated_events_get_the_serializers_answer(payload):
    assert_same_answer(payload)


@DIFFERENTIAL
@given(payload=mutated_events())
def test_mutated_events_get_the_serializers_answer(payload):
    assert_same_answer(payload)


@DIFFERENTIAL
@given(payload=json_values)
def test_any_json_value_gets_the_serializers_answer(payload):
    assert_same_answer(payload)


# --- explicit cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_the_benchmark_events_take_the_fast_path(kind, monkeypatch):
    payload = bench_event("e1", "u1", kind, datetime.now().astimezone())
    expected = serializer_answer(payload)

    def no_serializer(*args, **kwargs):
        raise AssertionError("fell back to EventSerializer")

    monkeypatch.setattr(validation, "EventSerializer", no_serializer)
    assert fast_answer(payload) == expected
    assert expected[1] is None


def test_a_full_event_is_validated_on_the_fast_path():
    payload = full_event()
    data = validation._event(payload)
    assert (typed(data), None) == serializer_answer(payload)
    assert data["cart"]["total"] == Decimal("12.50")
    assert str(data["cart"]["total"]) == "12.50"
    assert data["occurred_at"].tzinfo == timezone.get_current_timezone()


@pytest.mark.parametrize("key", ["\x00", "\ud800", "ok\udfff", ""])
def test_a_bad_key_anywhere_gets_the_serializers_answer(key):
    assert_same_answer(full_event(**{key: 1}))
    assert_same_answer(full_event(cart={**full_event()["cart"], "items": [{key: 1}]}))


def test_the_clock_skew_allowance_is_the_serializers():
    now = timezone.now()
    for minutes in (9, 11):
        assert_same_answer(full_event(occurred_at=(now + timedelta(minutes=minutes)).isoformat()))


def test_an_activated_time_zone_is_honoured():
    payload = full_event()
    with timezone.override("Asia/Kolkata"):
        data, errors = event_validate(payload)
        assert (typed(data), errors) == serializer_answer(payload)
    assert data is not None
    assert str(data["occurred_at"].tzinfo) == "Asia/Kolkata"


@pytest.mark.parametrize("payload", [None, [], "event", 1, True, {}])
def test_a_payload_that_is_no_event_gets_the_serializers_errors(payload):
    assert_same_answer(payload)


def described(serializer: Any, prefix: str = "") -> dict[str, dict[str, Any]]:
    """What validation.py relies on about each field, by dotted path."""
    fields: dict[str, dict[str, Any]] = {}
    for name, field in serializer.fields.items():
        attrs = ("allow_blank", "max_length", "max_digits", "decimal_places", "min_value")
        fields[prefix + name] = {
            "class": type(field).__name__,
            "required": field.required,
            "null": field.allow_null,
            **{attr: getattr(field, attr) for attr in attrs if getattr(field, attr, None)},
            "validators": sorted(type(validator).__name__ for validator in field.validators),
        }
        if hasattr(field, "child"):
            fields[prefix + name]["child"] = type(field.child).__name__
        if hasattr(field, "fields"):
            fields.update(described(field, prefix + name + "."))
    return fields


def spec(cls: str, *validators: str, required: bool = True, null: bool = False, **attrs: Any):
    return {"class": cls, "required": required, "null": null, **attrs, "validators": validators}


def text(max_length: int | None, *validators: str, cls: str = "CharField", **kwargs: Any):
    no_nul = ["ProhibitNullCharactersValidator", "ProhibitSurrogateCharactersValidator"]
    if max_length is None:
        return spec(cls, *sorted([*no_nul, *validators]), **kwargs)
    validators = tuple(sorted(["MaxLengthValidator", *no_nul, *validators]))
    return spec(cls, *validators, max_length=max_length, **kwargs)


def test_the_fast_path_knows_the_serializers_fields():
    """validation.py copies the serializer's limits: a change there must be made there too."""
    money = spec("AmountField", "MinValueValidator", max_digits=12, decimal_places=2)
    currency = text(None, "RegexValidator", cls="CurrencyField")
    nested: dict[str, Any] = {"validators": []}
    expected = {
        "id": text(255),
        "type": text(None, "RegexValidator", cls="RegexField"),
        "occurred_at": spec("DateTimeField"),
        "user": {"class": "UserSerializer", "required": True, "null": False, **nested},
        "user.id": text(255),
        "user.email": text(
            254, "EmailValidator", cls="EmailField", required=False, allow_blank=True
        ),
        "user.phone": text(16, "RegexValidator", required=False, null=True, allow_blank=True),
        "user.first_name": text(150, required=False, null=True, allow_blank=True),
        "user.timezone": text(64, "function", required=False),
        "user.consent": {"class": "ConsentSerializer", "required": False, "null": False, **nested},
        "user.consent.email": spec("BooleanField", required=False),
        "user.consent.sms": spec("BooleanField", required=False),
        "cart": {"class": "CartSerializer", "required": False, "null": True, **nested},
        "cart.id": text(255),
        "cart.total": money,
        "cart.currency": currency,
        "cart.checkout_url": text(
            2000, "URLValidator", cls="URLField", required=False, allow_blank=True
        ),
        "cart.items": spec(
            "ListField", "MaxLengthValidator", required=False, max_length=500, child="DictField"
        ),
        "payment": {"class": "PaymentSerializer", "required": False, "null": True, **nested},
        "payment.id": text(255),
        "payment.cart_id": text(255, required=False, null=True),
        "payment.amount": money,
        "payment.currency": currency,
        "payment.discount_code": text(64, required=False, null=True, allow_blank=True),
    }
    # DateTimeField parses as validation._occurred_at does only with DRF's default formats
    assert api_settings.DATETIME_INPUT_FORMATS == [ISO_8601]
    actual = described(EventSerializer())
    for fields in (actual, expected):
        for field in fields.values():
            field["validators"] = list(field["validators"])
    assert actual == expected
