"""A condition as written, checked: what the admin and journeys-as-code say when saving."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from journeys.conditions.fields import (
    AMOUNT,
    ANY,
    COUNT_OPERATORS,
    CURRENCY,
    ENTRY_FIELDS,
    MAX_DEPTH,
    MAX_NODES,
    MEMBERSHIP,
    NUMBER,
    OPERATORS_BY_TYPE,
    ORDER,
    PRESENCE,
    STEP_STATES,
    TEXT,
    TEXTUAL,
    Scope,
    as_decimal,
    field_type,
    known_fields,
)
from journeys.durations import parse_iso_duration

_CURRENCY = re.compile(r"[A-Z]{3}")


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
