"""The condition language of journeys: entry conditions (`Journey.conditions`, on the trigger
event and its customer) and step conditions (`JourneyStep.condition`, at dispatch).

A condition is JSON, one of:

    {"all": [<condition>, ...]}       every one holds (an empty list holds)
    {"any": [<condition>, ...]}       at least one holds
    {"field": "cart.total", "op": ">=", "value": 50}
    {"history": {"event": "payment_finished", "within": "P30D", "op": "=", "count": 0}}
    {"step": 0, "was": "opened"}      step conditions only: an earlier step of the enrolment

and `{}` (or nothing) means "always". This module is pure: it checks a condition as written
(`condition_problems`), says it in words (`condition_words`), compiles it once
(`condition_compile`) and evaluates the compiled form against `Facts` that the caller loaded
for a whole chunk (services.conditions): no query here.

Rules a reader may look for:
- A comparison on a value the event or customer does not carry (or carries blank) is false,
  `!=` and `not in` too; `is set` / `is not set` test presence.
- Text compares as written (case-sensitive); amounts as decimals.
- A history condition counts the customer's stored events of a type that occurred within the
  window that ends at the trigger's occurred_at (both ends included): the trigger itself is
  counted when it is of that type, an event that occurred after it never is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from journeys.durations import parse_iso_duration

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
_SYMBOL = {"=": "=", "!=": "≠", "<": "<", "<=": "≤", ">": ">", ">=": "≥"}
STEP_STATES = ("sent", "opened", "clicked", "not sent", "not opened", "not clicked")

_CURRENCY = re.compile(r"[A-Z]{3}")
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


# --- checking a condition as written --------------------------------------------------------


def condition_problems(
    raw: Any, *, scope: Scope, known_types: set[str] | None = None, path: str = "conditions"
) -> list[str]:
    """What is wrong with a condition as written, as "path: problem" lines; [] when it is
    fine. `{}` and None are fine (always). `known_types` checks history event types."""
    if raw is None or raw == {}:
        return []
    problems: list[str] = []
    counter = [0]
    _node_problems(raw, scope, known_types, path, problems, counter, 0)
    return problems


def _node_problems(
    raw: Any,
    scope: Scope,
    known_types: set[str] | None,
    path: str,
    problems: list[str],
    counter: list[int],
    depth: int,
) -> None:
    counter[0] += 1
    if counter[0] == MAX_NODES + 1:
        problems.append(f"{path}: at most {MAX_NODES} conditions in all")
    if depth > MAX_DEPTH:
        problems.append(f"{path}: nested more than {MAX_DEPTH} deep")
        return
    if not isinstance(raw, dict) or not raw:
        problems.append(
            f'{path}: must be an object: {{"all": [...]}}, {{"any": [...]}}, '
            '{"field": ..., "op": ..., "value": ...}'
            + (', {"history": {...}}' if scope.history else "")
            + (', {"step": <position>, "was": ...}' if scope.steps is not None else "")
        )
        return
    for group in ("all", "any"):
        if group in raw:
            if set(raw) != {group}:
                extra = ", ".join(sorted(set(raw) - {group}))
                problems.append(f"{path}: {group!r} stands alone (also found: {extra})")
            children = raw[group]
            if not isinstance(children, list):
                problems.append(f"{path}.{group}: must be a list of conditions")
                return
            if group == "any" and not children:
                problems.append(f"{path}.any: at least one condition")
            for index, child in enumerate(children):
                _node_problems(
                    child,
                    scope,
                    known_types,
                    f"{path}.{group}[{index}]",
                    problems,
                    counter,
                    depth + 1,
                )
            return
    if "history" in raw:
        _history_problems(raw, scope, known_types, path, problems)
    elif "step" in raw:
        _step_problems(raw, scope, path, problems)
    elif "field" in raw:
        _comparison_problems(raw, scope, path, problems)
    else:
        problems.append(
            f"{path}: unknown condition with keys {', '.join(sorted(map(str, raw)))}; "
            "use all, any, field"
            + (", history" if scope.history else "")
            + (", step" if scope.steps is not None else "")
        )


def _comparison_problems(raw: dict[str, Any], scope: Scope, path: str, problems: list[str]) -> None:
    unknown = set(raw) - {"field", "op", "value"}
    if unknown:
        problems.append(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))} (use field, op, value)"
        )
    name = raw.get("field")
    kind = field_type(name, scope) if isinstance(name, str) else None
    if kind is None:
        where = f" in {scope.label}" if isinstance(name, str) and name in ENTRY_FIELDS else ""
        problems.append(
            f"{path}.field: unknown field {name!r}{where} (known: {known_fields(scope)})"
        )
        return
    op = raw.get("op")
    allowed = OPERATORS_BY_TYPE[kind]
    if op not in allowed:
        problems.append(
            f"{path}.op: {op!r} does not apply to {name} ({_TYPE_WORDS[kind]}); "
            f"use one of: {', '.join(allowed)}"
        )
        return
    if op in PRESENCE:
        if "value" in raw:
            problems.append(f"{path}.value: {op!r} takes no value")
        return
    if "value" not in raw:
        problems.append(f"{path}.value: required with {op!r}")
        return
    value = raw["value"]
    if op in MEMBERSHIP:
        if not isinstance(value, list) or not value:
            problems.append(f"{path}.value: {op!r} takes a non-empty list of values")
            return
        for index, item in enumerate(value):
            if problem := _value_problem(item, kind, op):
                problems.append(f"{path}.value[{index}]: {problem}")
        return
    if problem := _value_problem(value, kind, op):
        problems.append(f"{path}.value: {problem}")


_TYPE_WORDS = {
    TEXT: "text",
    CURRENCY: "a currency code",
    AMOUNT: "an amount",
    NUMBER: "a number",
    ANY: "an event property",
}


def _value_problem(value: Any, kind: str, op: str) -> str | None:
    if kind in (AMOUNT, NUMBER) or (kind == ANY and op in ORDER):
        number = as_decimal(value)
        if number is None:
            return f'{value!r} is not a number (a decimal such as 50 or "49.90")'
        if kind == NUMBER and number != number.to_integral_value():
            return f"{value!r} is not a whole number"
        return None
    if kind == ANY:
        if op in TEXTUAL and not isinstance(value, str):
            return f"{op!r} takes text, not {value!r}"
        if not isinstance(value, str | int | float | bool):
            return f"{value!r} is not text, a number or true/false"
        return None
    if not isinstance(value, str):
        return f"{value!r} is not text (write it in quotes)"
    if kind == CURRENCY and not _CURRENCY.fullmatch(value):
        return f"{value!r} is not an ISO 4217 currency code such as EUR"
    if op in TEXTUAL and not value:
        return f"{op!r} takes a non-empty text"
    return None


def _history_problems(
    raw: dict[str, Any], scope: Scope, known_types: set[str] | None, path: str, problems: list[str]
) -> None:
    if not scope.history:
        problems.append(f"{path}: history conditions are for entry conditions only")
        return
    if set(raw) != {"history"}:
        problems.append(f"{path}: 'history' stands alone")
    spec = raw["history"]
    path = f"{path}.history"
    if not isinstance(spec, dict):
        problems.append(f'{path}: must be an object {{"event", "within", "op", "count"}}')
        return
    unknown = set(spec) - {"event", "within", "op", "count"}
    if unknown:
        problems.append(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))} (use event, within, op, count)"
        )
    event_type = spec.get("event")
    if not isinstance(event_type, str) or not event_type:
        problems.append(f"{path}.event: must be an event type name")
    elif known_types is not None and event_type not in known_types:
        known = ", ".join(sorted(known_types))
        problems.append(f"{path}.event: unknown event type {event_type!r} (known: {known})")
    try:
        within = parse_iso_duration(spec.get("within"))
    except ValueError as exc:
        problems.append(f"{path}.within: {exc}")
    else:
        if within <= timedelta(0):
            problems.append(f"{path}.within: must be longer than zero")
    op = spec.get("op", ">=")
    if op not in COUNT_OPERATORS:
        problems.append(f"{path}.op: {op!r} is not one of {', '.join(COUNT_OPERATORS)}")
    count = spec.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        problems.append(f"{path}.count: a whole number, 0 or more, not {count!r}")


def _step_problems(raw: dict[str, Any], scope: Scope, path: str, problems: list[str]) -> None:
    if scope.steps is None:
        problems.append(f"{path}: conditions on steps are for step conditions only")
        return
    unknown = set(raw) - {"step", "was"}
    if unknown:
        problems.append(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (use step, was)")
    position = raw.get("step")
    if isinstance(position, bool) or not isinstance(position, int):
        problems.append(f"{path}.step: the position of an earlier step, not {position!r}")
    elif position not in scope.steps:
        earlier = ", ".join(map(str, sorted(scope.steps))) or "none"
        problems.append(
            f"{path}.step: {position} is not an earlier step of this journey (earlier: {earlier})"
        )
    if raw.get("was") not in STEP_STATES:
        problems.append(f"{path}.was: {raw.get('was')!r} is not one of {', '.join(STEP_STATES)}")


def condition_step_positions(raw: Any) -> set[int]:
    """The step positions a (valid) condition names."""
    found: set[int] = set()
    if isinstance(raw, dict):
        if isinstance(raw.get("step"), int):
            found.add(raw["step"])
        for group in ("all", "any"):
            for child in raw.get(group) or []:
                found |= condition_step_positions(child)
    return found


def condition_renumber(raw: Any, positions: Mapping[int, int]) -> Any:
    """The condition with its step positions mapped (journeys-as-code numbers steps by their
    index in the list; the admin's positions may have gaps)."""
    if not isinstance(raw, dict):
        return raw
    if isinstance(raw.get("step"), int) and not isinstance(raw["step"], bool):
        return {**raw, "step": positions.get(raw["step"], raw["step"])}
    for group in ("all", "any"):
        if isinstance(raw.get(group), list):
            return {group: [condition_renumber(child, positions) for child in raw[group]]}
    return raw


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


# --- in words -------------------------------------------------------------------------------


def duration_words(value: timedelta) -> str:
    """30 days, 12 hours, 1 day 6 hours."""
    total = int(value.total_seconds())
    parts = []
    for seconds, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        amount, total = divmod(total, seconds)
        if amount:
            parts.append(f"{amount} {unit}{'s' if amount != 1 else ''}")
    return " ".join(parts) or "0 seconds"


def _field_words(name: str, scope_fields: Mapping[str, tuple[str, str]]) -> str:
    if name in scope_fields:
        return scope_fields[name][1]
    if name in ENTRY_FIELDS:
        return ENTRY_FIELDS[name][1]
    if name.startswith(PROPERTIES):
        return f"event property {name[len(PROPERTIES) :]}"
    return name


def _value_words(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_value_words(v) for v in value)
    if isinstance(value, str):
        return value if value and value.strip() == value and "," not in value else repr(value)
    return str(value)


def condition_words(raw: Any, *, step_channels: Mapping[int, str] | None = None) -> str:
    """A condition in words: "cart total ≥ 50 and no payment_finished in the last 30 days".
    `step_channels` (position -> channel) names the channel of steps referred to."""
    if raw is None or raw == {}:
        return "always"
    return _words(raw, step_channels or {}, top=True)


def _words(raw: Any, channels: Mapping[int, str], *, top: bool = False) -> str:
    if not isinstance(raw, dict):
        return repr(raw)
    for group, joiner in (("all", " and "), ("any", " or ")):
        if group in raw:
            children = raw[group] or []
            if not children:
                return "always" if group == "all" else "never"
            if len(children) == 1:
                return _words(children[0], channels, top=top)
            text = joiner.join(_words(child, channels) for child in children)
            return text if top else f"({text})"
    if "history" in raw:
        spec = raw["history"] if isinstance(raw["history"], dict) else {}
        event_type, count, op = spec.get("event"), spec.get("count"), spec.get("op", ">=")
        try:
            window = f"in the last {duration_words(parse_iso_duration(spec.get('within')))}"
        except ValueError:
            window = f"within {spec.get('within')!r}"
        how = {
            "=": "no" if count == 0 else f"exactly {count}",
            "!=": f"not exactly {count}",
            "<": f"fewer than {count}",
            "<=": f"at most {count}",
            ">": f"more than {count}",
            ">=": "any" if count == 0 else f"at least {count}",
        }.get(op, f"{op} {count}")
        return f"{how} {event_type} {window}"
    if "step" in raw:
        position = raw.get("step")
        channel = channels.get(position) if isinstance(position, int) else None
        label = f"step {position}" + (f" ({channel})" if channel else "")
        return f"{label} {raw.get('was')}"
    name = str(raw.get("field"))
    field = _field_words(name, ENTRY_FIELDS)
    op = raw.get("op")
    value = raw.get("value")
    if op in PRESENCE:
        return f"{field} {op}"
    if op in MEMBERSHIP:
        return f"{field} {'is one of' if op == 'in' else 'is not one of'} {_value_words(value)}"
    if op in TEXTUAL:
        return f"{field} {op} {_value_words(value)}"
    return f"{field} {_SYMBOL.get(str(op), op)} {_value_words(value)}"


def condition_expression(raw: Any) -> str:
    """A compact form for debug notes: cart.total >= 50, history payment_finished in P30D = 0."""
    if not isinstance(raw, dict):
        return repr(raw)
    for group in ("all", "any"):
        if group in raw:
            return f"{group}(" + ", ".join(condition_expression(c) for c in raw[group]) + ")"
    if "history" in raw:
        spec = raw["history"]
        event_type, within = spec.get("event"), spec.get("within")
        return f"{event_type} within {within} {spec.get('op', '>=')} {spec.get('count')}"
    if "step" in raw:
        return f"step {raw.get('step')} {raw.get('was')}"
    if raw.get("op") in PRESENCE:
        return f"{raw.get('field')} {raw.get('op')}"
    return f"{raw.get('field')} {raw.get('op')} {_value_words(raw.get('value'))}"


# --- evaluation -----------------------------------------------------------------------------


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
            shown = "not set" if _absent(actual) else _value_words(actual)
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
