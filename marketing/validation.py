"""Event validation at webhook speed, with EventSerializer's answers.

Building an `EventSerializer` deep-copies every declared field and runs DRF's field machinery:
0.6-1 ms an event, more than everything else ingestion does. `event_validate` checks the common
shape by hand and is conservative: whatever it cannot vouch for (another type, a null, a string
it cannot prove valid, a blank, a bad value, a NUL character) goes to `EventSerializer`, so every
error message is DRF's by construction and the fast path only ever says "valid, and here is what
the serializer would have returned".

Both take their limits and patterns from `marketing.event_fields`;
tests/marketing/test_validation.py checks that the fields below still match the serializer's
and compares both on generated events.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator, URLValidator
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from marketing.api.serializers import EventSerializer
from marketing.event_fields import (
    CURRENCY_PATTERN,
    EVENT_TYPE_PATTERN,
    MAX_CLOCK_SKEW,
    MAX_ITEMS,
    MAX_LENGTH,
    MONEY_DECIMAL_PLACES,
    MONEY_MAX_DIGITS,
    OFFSET_PATTERN,
    SURROGATE,
    time_zone_known,
)
from marketing.models import E164, EventType

_MISSING = object()
_EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN)
_CURRENCY = re.compile(CURRENCY_PATTERN)
_E164 = cast("re.Pattern[str]", E164.regex)
_PHONE = re.compile(_E164.pattern, _E164.flags)  # not through E164's lazy proxy
# EventSerializer.validate_occurred_at's check on the raw value
_OFFSET = re.compile(OFFSET_PATTERN)
# Amounts DecimalField(max_digits=12, decimal_places=2, min_value=0) surely takes as they are;
# anything else (a sign, an exponent, more digits, a number instead of a string) is DRF's call.
_WHOLE_DIGITS = MONEY_MAX_DIGITS - MONEY_DECIMAL_PLACES
_AMOUNT = re.compile(rf"[0-9]{{1,{_WHOLE_DIGITS}}}(?:\.[0-9]{{1,{MONEY_DECIMAL_PLACES}}})?")
_CENT = Decimal(1).scaleb(-MONEY_DECIMAL_PLACES)
# Django's EmailValidator and URLValidator take 10-20 us a value (large Unicode regexes,
# urlsplit). These plain ASCII forms are subsets of what they accept, label for label (host
# label, more labels, alphabetic TLD; dot-atom local part; http(s) with no user, port or
# space), so a match is an answer; a value that does not match still gets Django's validator.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})*\.[A-Za-z]{{2,63}}"
_PLAIN_EMAIL = re.compile(rf"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@{_HOST}")
_PLAIN_URL = re.compile(rf"https?://({_HOST})(?:[/?#][!-~]*)?")
_EMAIL = EmailValidator()
_URL = URLValidator()
# Deeper than any real event; deeper still is left to the serializer (and its recursion limit).
_MAX_DEPTH = 32


class _Unusual(Exception):
    """The fast path cannot vouch for this input: EventSerializer decides."""


def event_validate(payload: Any) -> tuple[dict[str, Any] | None, Any]:
    """(validated_data, None) when valid, (None, errors) when not: EventSerializer's answer."""
    try:
        return _event(payload), None
    except _Unusual:
        pass
    serializer = EventSerializer(data=payload)
    if serializer.is_valid():
        return serializer.validated_data, None
    return None, serializer.errors


def _event(payload: Any) -> dict[str, Any]:
    if type(payload) is not dict or not _clean(payload, 0):
        raise _Unusual
    event: dict[str, Any] = {}
    _text(payload, event, "id", MAX_LENGTH["id"])
    event_type = _text(payload, event, "type", None, check=_EVENT_TYPE.search)
    event["occurred_at"] = _occurred_at(payload.get("occurred_at", _MISSING))
    event["user"] = _user(payload.get("user", _MISSING))
    cart = payload.get("cart", _MISSING)
    if cart is not _MISSING:
        event["cart"] = None if cart is None else _cart(cart)
    payment = payload.get("payment", _MISSING)
    if payment is not _MISSING:
        event["payment"] = None if payment is None else _payment(payment)
    # EventSerializer.validate
    if event_type == EventType.CHECKOUT_STARTED and not event.get("cart"):
        raise _Unusual
    if event_type == EventType.PAYMENT_FINISHED and not event.get("payment"):
        raise _Unusual
    return event


def _clean(value: Any, depth: int) -> bool:
    """No NUL character or lone surrogate anywhere: serializers._no_nul, answering yes or no."""
    if isinstance(value, str):
        return _clean_strings((value,), depth)
    if isinstance(value, dict):
        return _clean_strings(value, depth) and _clean_strings(value.values(), depth)
    if isinstance(value, list):
        return _clean_strings(value, depth)
    return True


def _clean_strings(values: Iterable[Any], depth: int) -> bool:
    for value in values:
        if type(value) is str:
            if value.isascii():
                if "\x00" in value:
                    return False
            elif "\x00" in value or SURROGATE.search(value) is not None:
                return False
        elif isinstance(value, str | dict | list) and (
            depth >= _MAX_DEPTH or not _clean(value, depth + 1)
        ):
            return False
    return True


def _text(
    source: dict[str, Any],
    target: dict[str, Any],
    key: str,
    max_length: int | None,
    *,
    required: bool = True,
    blank: bool = False,
    null: bool = False,
    check: Callable[[str], Any] | None = None,
) -> str | None:
    """A CharField (trimmed) given a str, with its max_length, blank, null and validator."""
    value = source.get(key, _MISSING)
    if value is _MISSING:
        if required:
            raise _Unusual
        return None
    if value is None and null:
        target[key] = None
        return None
    if type(value) is not str:
        raise _Unusual
    value = value.strip()
    if not value:
        if not blank:
            raise _Unusual
    elif (max_length is not None and len(value) > max_length) or (
        check is not None and not check(value)
    ):
        raise _Unusual
    target[key] = value
    return value


def _amount(source: dict[str, Any], target: dict[str, Any], key: str) -> None:
    value = source.get(key)
    if type(value) is not str:
        raise _Unusual
    text = value.strip()
    if _AMOUNT.fullmatch(text) is None:
        raise _Unusual
    target[key] = Decimal(text).quantize(_CENT)


def _occurred_at(raw: Any) -> Any:
    if type(raw) is not str or not settings.USE_TZ:
        raise _Unusual
    try:
        parsed = parse_datetime(raw)
    except Exception as exc:  # DRF's answer, whatever it is
        raise _Unusual from exc
    if parsed is None or parsed.utcoffset() is None:
        raise _Unusual
    if raw[-1] != "Z" and _OFFSET.search(raw) is None:
        raise _Unusual
    try:
        value = parsed.astimezone(timezone.get_current_timezone())
    except Exception as exc:  # DRF's answer, whatever it is
        raise _Unusual from exc
    if value > timezone.now() + MAX_CLOCK_SKEW:
        raise _Unusual
    return value


def _passes(validator: Callable[[str], None]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            validator(value)
        except ValidationError:
            return False
        return True

    return check


_django_email = _passes(_EMAIL)
_django_url = _passes(_URL)


def _email(value: str) -> bool:
    return _PLAIN_EMAIL.fullmatch(value) is not None or _django_email(value)


def _url(value: str) -> bool:
    plain = _PLAIN_URL.fullmatch(value)
    # URLValidator: a host name is at most 253 characters
    if plain is not None and len(plain[1]) <= 253:
        return True
    return _django_url(value)


def _user(user: Any) -> dict[str, Any]:
    if type(user) is not dict:
        raise _Unusual
    out: dict[str, Any] = {}
    _text(user, out, "id", MAX_LENGTH["user.id"])
    _text(user, out, "email", MAX_LENGTH["user.email"], required=False, blank=True, check=_email)
    _text(
        user,
        out,
        "phone",
        MAX_LENGTH["user.phone"],
        required=False,
        blank=True,
        null=True,
        check=_PHONE.search,
    )
    _text(
        user,
        out,
        "first_name",
        MAX_LENGTH["user.first_name"],
        required=False,
        blank=True,
        null=True,
    )
    _text(user, out, "timezone", MAX_LENGTH["user.timezone"], required=False, check=time_zone_known)
    consent = user.get("consent", _MISSING)
    if consent is not _MISSING:
        if type(consent) is not dict:
            raise _Unusual
        flags: dict[str, bool] = {}
        for channel in ("email", "sms"):
            flag = consent.get(channel, _MISSING)
            if flag is _MISSING:
                continue
            if type(flag) is not bool:
                raise _Unusual
            flags[channel] = flag
        out["consent"] = flags
    return out


def _cart(cart: Any) -> dict[str, Any]:
    if type(cart) is not dict:
        raise _Unusual
    out: dict[str, Any] = {}
    _text(cart, out, "id", MAX_LENGTH["cart.id"])
    _amount(cart, out, "total")
    _text(cart, out, "currency", None, check=_CURRENCY.search)
    _text(
        cart,
        out,
        "checkout_url",
        MAX_LENGTH["cart.checkout_url"],
        required=False,
        blank=True,
        check=_url,
    )
    items = cart.get("items", _MISSING)
    if items is not _MISSING:
        if type(items) is not list or len(items) > MAX_ITEMS:
            raise _Unusual
        copies = []
        for item in items:
            if type(item) is not dict or not all(type(key) is str for key in item):
                raise _Unusual
            copies.append(dict(item))
        out["items"] = copies
    return out


def _payment(payment: Any) -> dict[str, Any]:
    if type(payment) is not dict:
        raise _Unusual
    out: dict[str, Any] = {}
    _text(payment, out, "id", MAX_LENGTH["payment.id"])
    _text(payment, out, "cart_id", MAX_LENGTH["payment.cart_id"], required=False, null=True)
    _amount(payment, out, "amount")
    _text(payment, out, "currency", None, check=_CURRENCY.search)
    _text(
        payment,
        out,
        "discount_code",
        MAX_LENGTH["payment.discount_code"],
        required=False,
        blank=True,
        null=True,
    )
    return out
