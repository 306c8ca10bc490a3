"""Conditions in words, for the admin and for reasons ("cart total ≥ 50 and no
payment_finished in the last 30 days"), and in the compact form of debug notes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from journeys.conditions.fields import (
    ENTRY_FIELDS,
    MEMBERSHIP,
    OPERATOR_SYMBOLS,
    PRESENCE,
    PROPERTIES,
    TEXTUAL,
)
from journeys.durations import parse_iso_duration


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


def value_words(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(value_words(v) for v in value)
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
        return f"{field} {'is one of' if op == 'in' else 'is not one of'} {value_words(value)}"
    if op in TEXTUAL:
        return f"{field} {op} {value_words(value)}"
    return f"{field} {OPERATOR_SYMBOLS.get(str(op), op)} {value_words(value)}"


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
    return f"{raw.get('field')} {raw.get('op')} {value_words(raw.get('value'))}"
