"""Validation of journeys as written by marketers (admin) or as code (journeys_import).

Pure functions: they read the known event types and compile templates, and write nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from journeys.codes import DiscountRule, amount_parse, discount_rule_problems
from journeys.conditions import condition_problems, entry_scope, step_scope
from journeys.durations import parse_iso_duration
from journeys.models import Journey, SendWindowMode
from journeys.rendering import template_problems
from journeys.sendwindow import SendWindow, time_parse
from marketing.models import Channel

SLUG_RE = re.compile(r"^[-a-zA-Z0-9_]{1,100}$")
MAX_STEPS = 20


@dataclass
class StepSpec:
    delay: timedelta
    channel: str
    subject: str
    body: str
    discount_percent: int | None
    discount_valid_for: timedelta | None
    condition: dict[str, Any] | None = None
    discount_amount: Decimal | None = None
    discount_currency: str = ""
    discount_prefix: str = ""
    discount_pool: str | None = None  # the pool's name


@dataclass
class JourneySpec:
    slug: str
    name: str
    trigger: str
    exit_on: list[str]
    exit_scope: str
    dedupe: str
    max_wait: timedelta | None
    reentry: str
    reentry_period: timedelta | None
    max_lateness: timedelta
    active: bool
    steps: list[StepSpec] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)
    # pacing (journeys.services.pacing)
    priority: int = 0
    transactional: bool = False
    send_window: str = SendWindowMode.SITE
    send_window_start: time | None = None
    send_window_end: time | None = None
    send_weekdays_only: bool = False
    holdout_percent: Decimal = Decimal(0)
    conversion_window: timedelta = timedelta(days=5)


@dataclass
class CapSpec:
    channel: str
    max_sends: int
    period: timedelta
    active: bool = True


def event_type_problem(value: object, known: set[str]) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be an event type name"
    if value not in known:
        return f"unknown event type {value!r} (known: {', '.join(sorted(known))})"
    return None


def step_problems(
    *,
    channel: str,
    subject: str,
    body: str,
    discount_percent: int | None,
    discount_amount: Decimal | None = None,
) -> dict[str, list[str]]:
    """Problems of one step by field name: channel, subject, body."""
    problems: dict[str, list[str]] = {}
    has_discount = bool(discount_percent) or discount_amount is not None
    if channel not in Channel.values:
        problems["channel"] = [f"must be one of {', '.join(Channel.values)}"]
    if channel == Channel.EMAIL and not subject.strip():
        problems["subject"] = ["an email needs a subject"]
    if subject and (found := template_problems(subject, has_discount=has_discount)):
        problems.setdefault("subject", []).extend(found)
    if not body.strip():
        problems["body"] = ["must not be empty"]
    elif found := template_problems(body, has_discount=has_discount):
        problems["body"] = found
    return problems


def _duration(spec: dict[str, Any], key: str, errors: list[str], *, optional: bool) -> Any:
    value = spec.get(key)
    if value is None:
        if not optional:
            errors.append(f"{key}: required (ISO 8601 duration such as PT30M)")
        return None
    try:
        return parse_iso_duration(value)
    except ValueError as exc:
        errors.append(f"{key}: {exc}")
        return None


def _choice(
    spec: dict[str, Any], key: str, choices: list[str], default: str, errors: list[str]
) -> str:
    value = spec.get(key, default)
    if value not in choices:
        errors.append(f"{key}: must be one of {', '.join(choices)}, not {value!r}")
        return default
    return str(value)


def journey_spec_parse(
    raw: Any, *, known_types: set[str], known_pools: set[str] | None = None
) -> tuple[JourneySpec | None, list[str]]:
    """One journey of the journeys-as-code format, checked field by field. `known_pools`:
    the discount code pools' names (read from the database when not given).

    Returns (spec, []) or (None, ["field: problem", ...]).
    """
    if not isinstance(raw, dict):
        return None, ["must be an object"]
    errors: list[str] = []
    unknown = set(raw) - {
        "slug", "name", "trigger", "exit_on", "exit_scope", "dedupe", "max_wait", "reentry",
        "reentry_period", "max_lateness", "active", "steps", "priority", "transactional",
        "send_window", "conditions",
        "holdout_percent",
        "conversion_window",
    }  # fmt: skip
    if unknown:
        errors.append(f"unknown field(s): {', '.join(sorted(unknown))}")
    slug = raw.get("slug")
    if not isinstance(slug, str) or not SLUG_RE.match(slug):
        errors.append("slug: letters, digits, '-' and '_', 1 to 100 characters")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        errors.append("name: required, at most 200 characters")
    if problem := event_type_problem(raw.get("trigger"), known_types):
        errors.append(f"trigger: {problem}")
    exit_on = raw.get("exit_on", [])
    if not isinstance(exit_on, list):
        errors.append("exit_on: must be a list of event types")
        exit_on = []
    for position, value in enumerate(exit_on):
        if problem := event_type_problem(value, known_types):
            errors.append(f"exit_on[{position}]: {problem}")
    exit_scope = _choice(raw, "exit_scope", Journey.ExitScope.values, "customer", errors)
    dedupe = _choice(raw, "dedupe", Journey.Dedupe.values, "first", errors)
    reentry = _choice(raw, "reentry", Journey.Reentry.values, "once", errors)
    max_wait = _duration(raw, "max_wait", errors, optional=True)
    reentry_period = _duration(raw, "reentry_period", errors, optional=True)
    if reentry == Journey.Reentry.PERIOD and not reentry_period:
        errors.append("reentry_period: required when reentry is 'period'")
    max_lateness = _duration(raw, "max_lateness", errors, optional=True)
    holdout_percent = holdout_percent_parse(raw.get("holdout_percent", 0), errors)
    conversion_window = _duration(raw, "conversion_window", errors, optional=True)
    if conversion_window is not None and not conversion_window:
        errors.append("conversion_window: must be longer than 0 (e.g. P5D)")
    active = raw.get("active", True)
    if not isinstance(active, bool):
        errors.append("active: must be true or false")
    priority = raw.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 2**31 - 1:
        errors.append("priority: a whole number (higher goes first; default 0)")
        priority = 0
    transactional = raw.get("transactional", False)
    if not isinstance(transactional, bool):
        errors.append("transactional: must be true or false")
    window = send_window_parse(raw.get("send_window", SendWindowMode.SITE), errors)
    conditions = raw.get("conditions") or {}
    errors.extend(condition_problems(conditions, scope=entry_scope(), known_types=known_types))
    steps_raw = raw.get("steps")
    steps: list[StepSpec] = []
    if not isinstance(steps_raw, list) or not steps_raw:
        errors.append("steps: at least one step")
        steps_raw = []
    elif len(steps_raw) > MAX_STEPS:
        errors.append(f"steps: at most {MAX_STEPS}")
    if known_pools is None and any(
        isinstance(step, dict) and isinstance(step.get("discount"), dict) for step in steps_raw
    ):
        from journeys.selectors import discount_pool_names

        known_pools = discount_pool_names()
    for position, step_raw in enumerate(steps_raw):
        step, step_errors = _step_parse(step_raw, position, known_pools or set())
        errors.extend(f"steps[{position}].{problem}" for problem in step_errors)
        if step:
            steps.append(step)
    if errors:
        return None, errors
    return (
        JourneySpec(
            slug=str(slug),
            name=str(name).strip(),
            trigger=str(raw["trigger"]),
            exit_on=[str(v) for v in exit_on],
            exit_scope=exit_scope,
            dedupe=dedupe,
            max_wait=max_wait,
            reentry=reentry,
            reentry_period=reentry_period,
            max_lateness=max_lateness if max_lateness is not None else timedelta(hours=2),
            active=bool(active),
            steps=steps,
            priority=priority,
            transactional=bool(transactional),
            send_window=window[0],
            send_window_start=window[1],
            send_window_end=window[2],
            send_weekdays_only=window[3],
            conditions=conditions,
            holdout_percent=holdout_percent,
            conversion_window=(
                conversion_window if conversion_window is not None else timedelta(days=5)
            ),
        ),
        [],
    )


def holdout_percent_parse(value: object, errors: list[str]) -> Decimal:
    """A holdout percentage: a number (or a numeric string) from 0 to 100, at most two
    decimals (10, 2.5, "12.75")."""
    problem = "holdout_percent: a number from 0 to 100 with at most 2 decimals (e.g. 10)"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        errors.append(problem)
        return Decimal(0)
    try:
        percent = Decimal(str(value).strip())
    except InvalidOperation:
        errors.append(problem)
        return Decimal(0)
    if (
        not percent.is_finite()
        or not 0 <= percent <= 100
        or percent != percent.quantize(Decimal("0.01"))
    ):
        errors.append(problem)
        return Decimal(0)
    return percent.quantize(Decimal("0.01"))


_DISCOUNT_KEYS = {"percent_off", "amount_off", "currency", "valid_for", "prefix", "pool"}


def _discount_parse(
    discount: Any, known_pools: set[str], errors: list[str]
) -> tuple[DiscountRule, timedelta | None]:
    """A step's "discount" object: {"percent_off": 10} or {"amount_off": "10.00",
    "currency": "EUR"}, with "valid_for", "prefix" or "pool" (a known pool's name)."""
    if not isinstance(discount, dict):
        errors.append("discount: must be an object with percent_off or amount_off")
        return DiscountRule(), None
    if unknown := set(discount) - _DISCOUNT_KEYS:
        errors.append(f"discount: unknown field(s): {', '.join(sorted(unknown))}")
    percent = discount.get("percent_off")
    if percent is not None and (
        isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100
    ):
        errors.append("discount.percent_off: a whole number from 1 to 100")
        percent = None
    amount = None
    if (raw_amount := discount.get("amount_off")) is not None:
        amount = amount_parse(raw_amount)
        if amount is None:
            errors.append('discount.amount_off: a positive amount such as "10.00"')
    if discount.get("percent_off") is None and discount.get("amount_off") is None:
        errors.append("discount: percent_off or amount_off is required")
    texts: dict[str, str] = {}
    for key in ("currency", "prefix", "pool"):
        value = discount.get(key)
        if value is not None and not isinstance(value, str):
            errors.append(f"discount.{key}: must be text")
            value = None
        texts[key] = value or ""
    pool = texts["pool"] or None
    if pool is not None and pool not in known_pools:
        known = ", ".join(sorted(known_pools)) or "none yet: create it in the admin"
        errors.append(f"discount.pool: unknown pool {pool!r} (known: {known})")
    valid_for = _duration(discount, "valid_for", errors, optional=True)
    rule = DiscountRule(
        percent=percent,
        amount=amount,
        currency=texts["currency"].strip().upper(),
        prefix=texts["prefix"].strip().upper(),
        pool=pool,
        has_valid_for=valid_for is not None,
    )
    names = {"percent": "percent_off", "amount": "amount_off"}
    for name, problems in discount_rule_problems(rule).items():
        errors.extend(f"discount.{names.get(name, name)}: {problem}" for problem in problems)
    return rule, valid_for


def _step_parse(
    raw: Any, position: int, known_pools: set[str]
) -> tuple[StepSpec | None, list[str]]:
    """One step; its position is its index in the list (what step conditions refer to)."""
    if not isinstance(raw, dict):
        return None, ["must be an object"]
    errors: list[str] = []
    unknown = set(raw) - {"delay", "channel", "template", "discount", "condition"}
    if unknown:
        errors.append(f"unknown field(s): {', '.join(sorted(unknown))}")
    delay = _duration(raw, "delay", errors, optional=False)
    channel = raw.get("channel")
    template = raw.get("template")
    if not isinstance(template, dict):
        errors.append("template: must be an object with subject and body")
        template = {}
    subject = template.get("subject") or ""
    body = template.get("body") or ""
    if not isinstance(subject, str) or not isinstance(body, str):
        errors.append("template: subject and body must be text")
        subject, body = "", ""
    rule, valid_for = DiscountRule(), None
    discount = raw.get("discount")
    if discount is not None:
        rule, valid_for = _discount_parse(discount, known_pools, errors)
    for name, problems in step_problems(
        channel=str(channel),
        subject=subject,
        body=body,
        discount_percent=rule.percent,
        discount_amount=rule.amount,
    ).items():
        target = name if name == "channel" else f"template.{name}"
        errors.extend(f"{target}: {problem}" for problem in problems)
    condition = raw.get("condition") or None
    errors.extend(
        condition_problems(condition, scope=step_scope(set(range(position))), path="condition")
    )
    if errors:
        return None, errors
    return StepSpec(
        delay=delay,
        channel=str(channel),
        subject=subject,
        body=body,
        discount_percent=rule.percent,
        discount_valid_for=valid_for,
        condition=condition,
        discount_amount=rule.amount,
        discount_currency=rule.currency,
        discount_prefix=rule.prefix,
        discount_pool=rule.pool,
    ), []


SEND_WINDOW_HINT = (
    'send_window: "site" (the site\'s NUDGE_SEND_WINDOW), null (any time), or '
    '{"start": "09:00", "end": "21:00", "weekdays_only": false}'
)


def send_window_problem(start: time | None, end: time | None) -> str | None:
    """Why a journey's own hours are refused (shared by the admin and journeys-as-code)."""
    if start is None or end is None:
        return "own hours need a start and an end"
    try:
        SendWindow(start=start, end=end)
    except ValueError as exc:
        return str(exc)
    return None


def send_window_parse(value: Any, errors: list[str]) -> tuple[str, time | None, time | None, bool]:
    """(mode, start, end, weekdays_only) of a journey's "send_window"."""
    if value is None:
        return SendWindowMode.ALWAYS, None, None, False
    if value == SendWindowMode.SITE:
        return SendWindowMode.SITE, None, None, False
    if not isinstance(value, dict):
        errors.append(f"{SEND_WINDOW_HINT}, not {value!r}")
        return SendWindowMode.SITE, None, None, False
    unknown = set(value) - {"start", "end", "weekdays_only"}
    if unknown:
        errors.append(f"send_window: unknown field(s): {', '.join(sorted(unknown))}")
    times: list[time | None] = []
    for key in ("start", "end"):
        try:
            times.append(time_parse(value.get(key)))
        except ValueError as exc:
            errors.append(f"send_window.{key}: {exc}")
            times.append(None)
    weekdays_only = value.get("weekdays_only", False)
    if not isinstance(weekdays_only, bool):
        errors.append("send_window.weekdays_only: must be true or false")
        weekdays_only = False
    start, end = times
    if start is not None and end is not None and (problem := send_window_problem(start, end)):
        errors.append(f"send_window: {problem}")
    return SendWindowMode.CUSTOM, start, end, weekdays_only


def caps_spec_parse(raw: Any) -> tuple[list[CapSpec], list[str]]:
    """The journeys-as-code "caps": [{"channel": "sms", "max_sends": 1, "period": "P1D"}]."""
    if not isinstance(raw, list):
        return [], ["caps: must be a list of {channel, max_sends, period}"]
    caps: list[CapSpec] = []
    errors: list[str] = []
    seen: set[tuple[str, timedelta]] = set()
    for index, item in enumerate(raw):
        label = f"caps[{index}]"
        if not isinstance(item, dict):
            errors.append(f"{label}: must be an object with channel, max_sends and period")
            continue
        problems: list[str] = []
        unknown = set(item) - {"channel", "max_sends", "period", "active"}
        if unknown:
            problems.append(f"unknown field(s): {', '.join(sorted(unknown))}")
        channel = item.get("channel")
        if channel not in Channel.values:
            problems.append(f"channel: must be one of {', '.join(Channel.values)}")
        max_sends = item.get("max_sends")
        if isinstance(max_sends, bool) or not isinstance(max_sends, int) or max_sends < 1:
            problems.append("max_sends: a whole number, at least 1")
        period = _duration(item, "period", problems, optional=False)
        if period is not None and period <= timedelta(0):
            problems.append("period: must be longer than zero")
        active = item.get("active", True)
        if not isinstance(active, bool):
            problems.append("active: must be true or false")
        if not problems and (channel, period) in seen:
            problems.append("a cap for this channel and period appears twice")
        if problems:
            fields = ("channel", "max_sends", "period", "active")
            errors.extend(
                f"{label}.{p}" if p.startswith(fields) else f"{label}: {p}" for p in problems
            )
            continue
        assert period is not None
        assert isinstance(max_sends, int)
        seen.add((str(channel), period))
        caps.append(CapSpec(str(channel), max_sends, period, bool(active)))
    return caps, errors
