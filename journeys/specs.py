"""Validation of journeys as written by marketers (admin) or as code (journeys_import).

Pure functions: they read the known event types and compile templates, and write nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from journeys.durations import parse_iso_duration
from journeys.models import Journey
from journeys.rendering import template_problems
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
    holdout_percent: Decimal = Decimal(0)
    conversion_window: timedelta = timedelta(days=5)


def event_type_problem(value: object, known: set[str]) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be an event type name"
    if value not in known:
        return f"unknown event type {value!r} (known: {', '.join(sorted(known))})"
    return None


def step_problems(
    *, channel: str, subject: str, body: str, discount_percent: int | None
) -> dict[str, list[str]]:
    """Problems of one step by field name: channel, subject, body."""
    problems: dict[str, list[str]] = {}
    has_discount = bool(discount_percent)
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


def journey_spec_parse(raw: Any, *, known_types: set[str]) -> tuple[JourneySpec | None, list[str]]:
    """One journey of the journeys-as-code format, checked field by field.

    Returns (spec, []) or (None, ["field: problem", ...]).
    """
    if not isinstance(raw, dict):
        return None, ["must be an object"]
    errors: list[str] = []
    unknown = set(raw) - {
        "slug", "name", "trigger", "exit_on", "exit_scope", "dedupe", "max_wait", "reentry",
        "reentry_period", "max_lateness", "active", "steps", "holdout_percent",
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
    steps_raw = raw.get("steps")
    steps: list[StepSpec] = []
    if not isinstance(steps_raw, list) or not steps_raw:
        errors.append("steps: at least one step")
        steps_raw = []
    elif len(steps_raw) > MAX_STEPS:
        errors.append(f"steps: at most {MAX_STEPS}")
    for position, step_raw in enumerate(steps_raw):
        step, step_errors = _step_parse(step_raw)
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


def _step_parse(raw: Any) -> tuple[StepSpec | None, list[str]]:
    if not isinstance(raw, dict):
        return None, ["must be an object"]
    errors: list[str] = []
    unknown = set(raw) - {"delay", "channel", "template", "discount"}
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
    percent, valid_for = None, None
    discount = raw.get("discount")
    if discount is not None:
        if not isinstance(discount, dict):
            errors.append("discount: must be an object with percent_off and valid_for")
        else:
            percent = discount.get("percent_off")
            if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
                errors.append("discount.percent_off: a whole number from 1 to 100")
                percent = None
            valid_for = _duration(discount, "valid_for", errors, optional=True)
    for name, problems in step_problems(
        channel=str(channel), subject=subject, body=body, discount_percent=percent
    ).items():
        target = name if name == "channel" else f"template.{name}"
        errors.extend(f"{target}: {problem}" for problem in problems)
    if errors:
        return None, errors
    return StepSpec(
        delay=delay,
        channel=str(channel),
        subject=subject,
        body=body,
        discount_percent=percent,
        discount_valid_for=valid_for,
    ), []
