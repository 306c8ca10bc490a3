"""Discount codes, the rules: what a step's discount rule may be, what a code is worth in
words, and what state a send's code is in. Pure functions, shared by the admin, journeys as
code, the redemption of payments and the code API (journeys.services.codes writes).

A code is **valid** only when its send was sent, it has not expired and no payment redeemed
it yet. The code of a send that did not go out (cancelled, skipped, held out, failed, or still
pending) is **void**: it can never be redeemed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from journeys.models import ScheduledSend

# the width of ScheduledSend.discount_code, and the generated part (services.enrolment)
CODE_MAX_LENGTH = ScheduledSend._meta.get_field("discount_code").max_length or 32
GENERATED_LENGTH = 10
PREFIX_MAX_LENGTH = CODE_MAX_LENGTH - GENERATED_LENGTH
PREFIX_RE = re.compile(rf"[A-Z0-9-]{{1,{PREFIX_MAX_LENGTH}}}")
# an uploaded (pool) code once upper-cased: letters, digits, '-' and '_'
CODE_RE = re.compile(rf"[A-Z0-9][A-Z0-9_-]{{0,{CODE_MAX_LENGTH - 1}}}")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
AMOUNT_MAX = Decimal("99999999.99")  # the step's DecimalField(max_digits=10, decimal_places=2)

Status = ScheduledSend.Status


def code_normalise(value: str) -> str:
    """Codes are compared upper-case, without surrounding blanks: what a customer types at
    the checkout ("winback-ab12") is the code that was sent ("WINBACK-AB12")."""
    return value.strip().upper()


@dataclass(frozen=True)
class DiscountRule:
    """A step's discount rule as the marketer wrote it (admin form or journeys as code)."""

    percent: int | None = None
    amount: Decimal | None = None
    currency: str = ""
    prefix: str = ""
    pool: str | None = None  # the pool's name
    has_valid_for: bool = False

    @property
    def active(self) -> bool:
        return self.percent is not None or self.amount is not None


def amount_parse(value: Any) -> Decimal | None:
    """A fixed amount off from journeys as code ("10.00" or 10): None when it is not a
    positive amount with at most two decimals."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount <= 0 or amount > AMOUNT_MAX:
        return None
    if amount.as_tuple().exponent < -2:  # type: ignore[operator]  # finite: an int
        return None
    return amount.quantize(Decimal("0.01"))


def discount_rule_problems(rule: DiscountRule) -> dict[str, list[str]]:
    """What is wrong with a discount rule, by field: percent, amount, currency, prefix, pool,
    valid_for. Exactly one of percent and amount; a currency (ISO 4217, three letters) with
    an amount and only then; a prefix and a pool only with a value; a prefix that leaves room
    for the generated part of the code."""
    problems: dict[str, list[str]] = {}
    if rule.percent is not None and rule.amount is not None:
        problems["amount"] = ["a discount is a percentage or a fixed amount, not both"]
    if rule.percent is not None and not 1 <= rule.percent <= 100:
        problems["percent"] = ["a whole number from 1 to 100"]
    if rule.amount is not None:
        if rule.amount <= 0 or rule.amount > AMOUNT_MAX:
            problems.setdefault("amount", []).append(f"more than 0, at most {AMOUNT_MAX}")
        if not rule.currency:
            problems["currency"] = ["a fixed amount needs its currency (ISO 4217, e.g. EUR)"]
    if rule.currency:
        if not CURRENCY_RE.fullmatch(rule.currency):
            problems["currency"] = ["an ISO 4217 currency code: three capital letters (EUR)"]
        elif rule.amount is None:
            problems["currency"] = ["a currency goes with a fixed amount only"]
    if rule.prefix:
        if not PREFIX_RE.fullmatch(rule.prefix):
            problems["prefix"] = [
                f"capital letters, digits and '-', at most {PREFIX_MAX_LENGTH} characters "
                f"(the code adds {GENERATED_LENGTH} more, within {CODE_MAX_LENGTH})"
            ]
        elif rule.pool:
            problems["prefix"] = ["a pool's codes are used as uploaded: no prefix with a pool"]
    if not rule.active:
        for name, given in (
            ("prefix", rule.prefix),
            ("pool", rule.pool),
            ("valid_for", rule.has_valid_for),
        ):
            if given:
                problems.setdefault(name, []).append(
                    "needs a discount: a percentage or a fixed amount"
                )
    return problems


def value_text(*, percent: int | None, amount: Decimal | None, currency: str) -> str:
    """The code's worth in words for a message: "10%" or "10.00 EUR"; "" without a value."""
    if percent is not None:
        return f"{percent}%"
    if amount is not None:
        return f"{amount:.2f} {currency}".strip()
    return ""


def value_of(send: ScheduledSend) -> dict[str, Any]:
    """The code's value as the API shows it: {"kind": "percent", "percent": 10} or
    {"kind": "amount", "amount": "10.00", "currency": "EUR"}."""
    if send.discount_amount is not None:
        return {
            "kind": "amount",
            "amount": f"{send.discount_amount:.2f}",
            "currency": send.discount_currency,
        }
    return {"kind": "percent", "percent": send.discount_percent}


class CodeState:
    VALID = "valid"
    EXPIRED = "expired"
    REDEEMED = "redeemed"
    VOID = "void"


def code_state(send: ScheduledSend, at: datetime) -> tuple[str, str]:
    """(state, why) of a send's code at `at`: void unless the send was sent, then redeemed
    once a payment used it, expired after its expiry, else valid."""
    if send.status != Status.SENT:
        if send.status in (Status.PENDING, Status.SENDING):
            return CodeState.VOID, f"its send has not gone out ({send.status})"
        why = send.reason or send.status
        return CodeState.VOID, f"its send was {send.status}: {why}"[:300]
    if send.discount_redeemed_at is not None:
        return CodeState.REDEEMED, "redeemed"
    if send.discount_expires_at is not None and at > send.discount_expires_at:
        return CodeState.EXPIRED, "expired"
    return CodeState.VALID, ""
