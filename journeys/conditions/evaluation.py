"""A condition compiled once, evaluated against facts the caller loaded for a whole chunk
(services.conditions): no query here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from journeys.conditions.checking import condition_problems
from journeys.conditions.fields import (
    AMOUNT,
    ANY,
    ENTRY_FIELDS,
    MEMBERSHIP,
    MISSING,
    NUMBER,
    ORDER,
    Scope,
    as_decimal,
)
from journeys.conditions.words import condition_expression, value_words
from journeys.durations import parse_iso_duration


class Facts(Protocol):
    """What a condition reads, loaded by the caller for a whole chunk."""

    def value(self, field: str) -> Any:
        """The field's value, or MISSING."""

    def history_count(self, event_type: str, within: timedelta) -> int:
        """The customer's events of `event_type` in the window ending at the trigger."""

    def step_state(self, position: int) -> StepState | None:
        """The enrolment's send of an earlier step, or None."""


@dataclass(frozen=True)
class StepState:
    sent: bool
    opened_at: datetime | None
    clicked_at: datetime | None


@dataclass(frozen=True)
class HistoryNeed:
    event_type: str
    within: timedelta


class Compiled:
    """A condition compiled once (per journey load): `failure(facts)` is None when it holds,
    else the note of the first part that did not ("cart.total >= 50 false (20.00)")."""

    def __init__(self, raw: Any, *, invalid: str = "") -> None:
        self.raw = raw
        self.always = not invalid and (raw is None or raw == {})
        self.invalid = invalid
        self.history: list[HistoryNeed] = []
        self.fields: set[str] = set()
        self.steps: set[int] = set()
        if invalid:
            self._test: Callable[[Facts], str | None] = lambda facts: (
                f"condition invalid: {invalid}"
            )
        elif self.always:
            self._test = lambda facts: None
        else:
            self._test = self._compile(raw)

    def failure(self, facts: Facts) -> str | None:
        return self._test(facts)

    @property
    def reads_customer(self) -> bool:
        return any(name.startswith("customer.") for name in self.fields)

    def _compile(self, raw: dict[str, Any]) -> Callable[[Facts], str | None]:
        if "all" in raw:
            children = [self._compile(child) for child in raw["all"]]

            def all_of(facts: Facts) -> str | None:
                for child in children:
                    if (why := child(facts)) is not None:
                        return why
                return None

            return all_of
        if "any" in raw:
            children = [self._compile(child) for child in raw["any"]]

            def any_of(facts: Facts) -> str | None:
                reasons = []
                for child in children:
                    why = child(facts)
                    if why is None:
                        return None
                    reasons.append(why)
                return "none of: " + "; ".join(reasons)

            return any_of
        if "history" in raw:
            return self._compile_history(raw["history"])
        if "step" in raw:
            return self._compile_step(raw["step"], raw["was"])
        return self._compile_comparison(raw)

    def _compile_history(self, spec: dict[str, Any]) -> Callable[[Facts], str | None]:
        need = HistoryNeed(event_type=spec["event"], within=parse_iso_duration(spec["within"]))
        self.history.append(need)
        compare = _ORDERING[spec.get("op", ">=")]
        count = int(spec["count"])
        expression = condition_expression({"history": spec})

        def history(facts: Facts) -> str | None:
            found = facts.history_count(need.event_type, need.within)
            return None if compare(found, count) else f"condition {expression} false ({found})"

        return history

    def _compile_step(self, position: int, was: str) -> Callable[[Facts], str | None]:
        self.steps.add(position)
        negated = was.startswith("not ")
        what = was.removeprefix("not ")
        expression = f"step {position} {was}"

        def step(facts: Facts) -> str | None:
            state = facts.step_state(position)
            if state is None:
                happened = False
            elif what == "sent":
                happened = state.sent
            elif what == "opened":
                happened = state.opened_at is not None
            else:
                happened = state.clicked_at is not None
            return None if happened != negated else f"condition {expression} false"

        return step

    def _compile_comparison(self, raw: dict[str, Any]) -> Callable[[Facts], str | None]:
        name, op = raw["field"], raw["op"]
        self.fields.add(name)
        kind = ENTRY_FIELDS[name][0] if name in ENTRY_FIELDS else ANY
        check = _comparison(kind, op, raw.get("value"))
        expression = condition_expression(raw)

        def comparison(facts: Facts) -> str | None:
            actual = facts.value(name)
            if check(actual):
                return None
            shown = "not set" if _absent(actual) else value_words(actual)
            return f"condition {expression} false ({shown})"

        return comparison


def condition_compile(raw: Any, *, scope: Scope | None = None) -> Compiled:
    """Compile a condition. With `scope`, it is checked first: one saved past the admin and
    journeys-as-code (a raw UPDATE, an older version's data) never holds, and its notes say
    why ("condition invalid: ..."), rather than failing the apply of every event it sees."""
    if scope is not None and (problems := condition_problems(raw, scope=scope)):
        return Compiled(raw, invalid="; ".join(problems))
    return Compiled(raw)


_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _absent(value: Any) -> bool:
    return value is MISSING or value is None or value == ""


def _comparison(kind: str, op: str, value: Any) -> Callable[[Any], bool]:
    """The test of one comparison on the field's actual value."""
    if op == "is set":
        return lambda actual: not _absent(actual)
    if op == "is not set":
        return _absent
    if kind in (AMOUNT, NUMBER) or (kind == ANY and op in ORDER):
        return _numeric(op, value)
    if kind == ANY:
        return _loose(op, value)
    if op in MEMBERSHIP:
        members = frozenset(value)
        inside = op == "in"
        return lambda actual: (
            isinstance(actual, str) and actual != "" and (actual in members) == inside
        )
    if op == "starts with":
        return lambda actual: isinstance(actual, str) and actual.startswith(value)
    if op == "contains":
        return lambda actual: isinstance(actual, str) and value in actual
    compare = _ORDERING[op]
    return lambda actual: isinstance(actual, str) and actual != "" and compare(actual, value)


def _numeric(op: str, value: Any) -> Callable[[Any], bool]:
    if op in MEMBERSHIP:
        members = frozenset(d for v in value if (d := as_decimal(v)) is not None)
        inside = op == "in"

        def member(actual: Any) -> bool:
            number = as_decimal(actual)
            return number is not None and (number in members) == inside

        return member
    target = as_decimal(value)
    compare = _ORDERING[op]

    def numeric(actual: Any) -> bool:
        number = as_decimal(actual)
        return number is not None and compare(number, target)

    return numeric


def _same(actual: Any, expected: Any) -> bool:
    """An event property equal to a condition's value: true/false only to a boolean, a
    number to a number (or a numeric string), text to text."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if isinstance(expected, int | float):
        number = as_decimal(actual)
        return number is not None and number == as_decimal(expected)
    return isinstance(actual, str | int | float) and str(actual) == expected


def _loose(op: str, value: Any) -> Callable[[Any], bool]:
    """Comparisons on an event property, whatever JSON type it has."""
    if op == "starts with":
        return lambda actual: isinstance(actual, str) and actual.startswith(value)
    if op == "contains":
        return lambda actual: isinstance(actual, str) and value in actual
    if op in MEMBERSHIP:
        inside = op == "in"
        return lambda actual: not _absent(actual) and any(_same(actual, v) for v in value) == inside
    if op == "=":
        return lambda actual: not _absent(actual) and _same(actual, value)
    return lambda actual: not _absent(actual) and not _same(actual, value)
