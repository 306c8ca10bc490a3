"""The rules an event's fields follow, in one place: EventSerializer (marketing.api.serializers)
and the fast validation (marketing.validation) both import them.

Lengths come from the columns that store the values, so a model change carries over to both.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import timedelta

from django.db.models import DecimalField, Field, Model

from marketing.models import Cart, Customer, Event, Payment


def _max_length(model: type[Model], name: str) -> int:
    field = model._meta.get_field(name)
    assert isinstance(field, Field), f"{model.__name__}.{name} is not a concrete field"
    assert field.max_length, f"{model.__name__}.{name} has no max_length"
    return field.max_length


# The longest value each text field of an event may hold, by its dotted path in the event.
MAX_LENGTH: dict[str, int] = {
    "id": _max_length(Event, "event_id"),
    "user.id": _max_length(Customer, "external_id"),
    "user.email": _max_length(Customer, "email"),
    "user.phone": _max_length(Customer, "phone"),
    "user.first_name": _max_length(Customer, "first_name"),
    "user.timezone": _max_length(Customer, "timezone"),
    "cart.id": _max_length(Cart, "external_id"),
    "cart.checkout_url": _max_length(Cart, "checkout_url"),
    "payment.id": _max_length(Payment, "external_id"),
    "payment.cart_id": _max_length(Cart, "external_id"),
    "payment.discount_code": _max_length(Payment, "discount_code"),
}
# Amounts (a cart's total, a payment's amount), as the columns store them.
_MONEY = Cart._meta.get_field("total")
assert isinstance(_MONEY, DecimalField)
MONEY_MAX_DIGITS: int = _MONEY.max_digits
MONEY_DECIMAL_PLACES: int = _MONEY.decimal_places
MAX_ITEMS = 500  # a cart's items
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_.]{0,63}$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
# An occurred_at must say its offset from UTC: a naive time means a different instant to
# each reader.
OFFSET_PATTERN = r"([zZ]|[+-]\d\d:?\d\d)$"
# How far in the future an event's occurred_at may be (sender clock skew).
MAX_CLOCK_SKEW = timedelta(minutes=10)
# UTF-8 cannot hold a lone surrogate (JSON's "\ud800"); PostgreSQL text and jsonb cannot hold
# U+0000 either. Both are refused anywhere in an event.
SURROGATE = re.compile("[\ud800-\udfff]")


def time_zone_known(value: str) -> bool:
    """An IANA time zone name this machine knows (zoneinfo), e.g. Europe/Berlin."""
    try:
        zoneinfo.ZoneInfo(value)
    except Exception:  # ZoneInfoNotFoundError, ValueError, OSError: all mean "not a zone"
        return False
    return True
