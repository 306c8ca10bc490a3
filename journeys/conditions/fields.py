"""The fields conditions read, their types, the operators each type takes, and where each
kind of condition may name what (`Scope`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

MISSING: Any = object()

# --- the fields -----------------------------------------------------------------------------

TEXT, AMOUNT, CURRENCY, NUMBER, ANY = "text", "amount", "currency", "number", "any"

# name -> (type, words). `event.properties.<name>` is any key of the event's "properties".
ENTRY_FIELDS: dict[str, tuple[str, str]] = {
    "event.type": (TEXT, "event type"),
    "event.id": (TEXT, "event id"),
    "cart.id": (TEXT, "cart id"),
    "cart.total": (AMOUNT, "cart total"),
    "cart.currency": (CURRENCY, "cart currency"),
    "cart.checkout_url": (TEXT, "cart checkout URL"),
    "cart.item_count": (NUMBER, "number of cart items"),
    "payment.id": (TEXT, "payment id"),
    "payment.cart_id": (TEXT, "payment's cart id"),
    "payment.amount": (AMOUNT, "payment amount"),
    "payment.currency": (CURRENCY, "payment currency"),
    "payment.discount_code": (TEXT, "payment discount code"),
    "customer.id": (TEXT, "customer id"),
    "customer.email": (TEXT, "customer email"),
    "customer.phone": (TEXT, "customer phone"),
    "customer.first_name": (TEXT, "customer first name"),
    "customer.timezone": (TEXT, "customer time zone"),
}
PROPERTIES = "event.properties."
# At dispatch there is no trigger event at hand: the send's customer and cart, as stored.
STEP_FIELDS: dict[str, tuple[str, str]] = {
    name: spec for name, spec in ENTRY_FIELDS.items() if name.startswith(("customer.", "cart."))
}

# --- the operators --------------------------------------------------------------------------

EQUALITY = ("=", "!=")
ORDER = ("<", "<=", ">", ">=")
MEMBERSHIP = ("in", "not in")
TEXTUAL = ("starts with", "contains")
PRESENCE = ("is set", "is not set")
OPERATORS_BY_TYPE: dict[str, tuple[str, ...]] = {
    TEXT: EQUALITY + MEMBERSHIP + TEXTUAL + PRESENCE,
    CURRENCY: EQUALITY + MEMBERSHIP + PRESENCE,
    AMOUNT: EQUALITY + ORDER + MEMBERSHIP + PRESENCE,
    NUMBER: EQUALITY + ORDER + MEMBERSHIP + PRESENCE,
    ANY: EQUALITY + ORDER + MEMBERSHIP + TEXTUAL + PRESENCE,
}
COUNT_OPERATORS = EQUALITY + ORDER
OPERATOR_SYMBOLS = {"=": "=", "!=": "≠", "<": "<", "<=": "≤", ">": ">", ">=": "≥"}
STEP_STATES = ("sent", "opened", "clicked", "not sent", "not opened", "not clicked")

_PROPERTY = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,4}")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
MAX_NODES = 100
MAX_DEPTH = 8


@dataclass(frozen=True)
class Scope:
    """Where a condition is written: what it may name."""

    fields: Mapping[str, tuple[str, str]]
    properties: bool
    history: bool
    steps: frozenset[int] | None  # earlier steps' positions (step conditions), else None

    @property
    def label(self) -> str:
        return "a step condition" if self.steps is not None else "an entry condition"


def entry_scope() -> Scope:
    return Scope(fields=ENTRY_FIELDS, properties=True, history=True, steps=None)


def step_scope(earlier_positions: set[int] | frozenset[int]) -> Scope:
    return Scope(
        fields=STEP_FIELDS, properties=False, history=False, steps=frozenset(earlier_positions)
    )


def field_type(name: str, scope: Scope) -> str | None:
    if name in scope.fields:
        return scope.fields[name][0]
    if (
        scope.properties
        and name.startswith(PROPERTIES)
        and _PROPERTY.fullmatch(name[len(PROPERTIES) :])
    ):
        return ANY
    return None


def known_fields(scope: Scope) -> str:
    names = sorted(scope.fields)
    if scope.properties:
        names.append(f"{PROPERTIES}<name>")
    return ", ".join(names)


def as_decimal(value: Any) -> Decimal | None:
    """A number or a plain decimal string as a Decimal; None for anything else (true/false
    too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str) and _PLAIN_NUMBER.fullmatch(value.strip()):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None
