"""Journeys as code: import (all or nothing) and the demo journeys."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models.functions import Now

from journeys import selectors
from journeys.models import DiscountCodePool, FrequencyCap, Journey, JourneyStep
from journeys.services.operators import scheduled_send_cancel_for_steps
from journeys.specs import CapSpec, JourneySpec, caps_spec_parse, journey_spec_parse


class JourneyImportError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class ImportSummary:
    created: list[str]
    updated: list[str]
    deactivated: list[str]
    # frequency caps (when the file has "caps"): "1 SMS per 24 h", ...
    caps_saved: list[str] = field(default_factory=list)
    caps_deactivated: list[str] = field(default_factory=list)


@transaction.atomic
def journeys_import(*, data: Any, replace: bool = False, dry_run: bool = False) -> ImportSummary:
    """Create or update journeys from the journeys-as-code format, all or nothing.

    Every journey is validated before anything is written; errors name the journey and the
    field. With `replace`, active journeys absent from `data` are deactivated. With
    `dry_run`, everything is validated and reported, and nothing is kept.

    The site's frequency caps travel in the same file under "caps" (optional): when present,
    it is the complete list (caps in it are created or updated by channel and period, the
    other active caps are deactivated); when absent, the caps are left as they are.
    """
    if not isinstance(data, dict) or not isinstance(data.get("journeys"), list):
        raise JourneyImportError(['the file must be an object {"journeys": [...]}'])
    known = selectors.known_event_types()
    pools = selectors.discount_pool_names()
    specs: list[JourneySpec] = []
    errors: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(data["journeys"]):
        label = f"journeys[{index}]"
        if isinstance(raw, dict) and isinstance(raw.get("slug"), str):
            label += f" ({raw['slug']})"
        spec, problems = journey_spec_parse(raw, known_types=known, known_pools=pools)
        errors.extend(f"{label}: {problem}" for problem in problems)
        if spec is not None:
            if spec.slug in seen:
                errors.append(f"{label}: slug: appears twice in the file")
            seen.add(spec.slug)
            specs.append(spec)
    caps: list[CapSpec] | None = None
    if "caps" in data:
        caps, cap_errors = caps_spec_parse(data["caps"])
        errors.extend(cap_errors)
    if errors:
        raise JourneyImportError(errors)
    created: list[str] = []
    updated: list[str] = []
    for spec in specs:
        _, was_created = journey_save_spec(spec=spec)
        (created if was_created else updated).append(spec.slug)
    deactivated: list[str] = []
    if replace:
        absent = Journey.objects.filter(active=True).exclude(slug__in=seen)
        deactivated = list(absent.values_list("slug", flat=True))
        absent.update(active=False, updated_at=Now())
    caps_saved, caps_deactivated = caps_save_specs(specs=caps) if caps is not None else ([], [])
    if dry_run:
        transaction.set_rollback(True)
    return ImportSummary(
        created=created,
        updated=updated,
        deactivated=deactivated,
        caps_saved=caps_saved,
        caps_deactivated=caps_deactivated,
    )


@transaction.atomic
def caps_save_specs(*, specs: list[CapSpec]) -> tuple[list[str], list[str]]:
    """Make the site's frequency caps the validated `specs` (by channel and period); the
    active caps not in them are deactivated. Returns (saved, deactivated) as labels."""
    kept: list[int] = []
    saved: list[str] = []
    for spec in specs:
        cap, _ = FrequencyCap.objects.update_or_create(
            channel=spec.channel,
            period=spec.period,
            defaults={"max_sends": spec.max_sends, "active": spec.active},
        )
        kept.append(cap.pk)
        saved.append(str(cap))
    absent = FrequencyCap.objects.filter(active=True).exclude(pk__in=kept)
    deactivated = [str(cap) for cap in absent]
    absent.update(active=False, updated_at=Now())
    return saved, deactivated


@transaction.atomic
def journey_save_spec(*, spec: JourneySpec) -> tuple[Journey, bool]:
    """Write one validated journey and its steps (by position); steps that disappear have
    their pending sends cancelled with a reason."""
    journey, created = Journey.objects.update_or_create(
        slug=spec.slug,
        defaults={
            "name": spec.name,
            "trigger": spec.trigger,
            "exit_on": spec.exit_on,
            "exit_scope": spec.exit_scope,
            "dedupe": spec.dedupe,
            "max_wait": spec.max_wait,
            "reentry": spec.reentry,
            "reentry_period": spec.reentry_period,
            "max_lateness": spec.max_lateness,
            "active": spec.active,
            "priority": spec.priority,
            "transactional": spec.transactional,
            "send_window": spec.send_window,
            "send_window_start": spec.send_window_start,
            "send_window_end": spec.send_window_end,
            "send_weekdays_only": spec.send_weekdays_only,
            "conditions": spec.conditions,
            "holdout_percent": spec.holdout_percent,
            "conversion_window": spec.conversion_window,
        },
    )
    names = {step.discount_pool for step in spec.steps if step.discount_pool}
    pools = dict(DiscountCodePool.objects.filter(name__in=names).values_list("name", "pk"))
    if missing := names - set(pools):
        raise JourneyImportError([f"discount.pool: unknown pool {name!r}" for name in missing])
    for position, step in enumerate(spec.steps):
        JourneyStep.objects.update_or_create(
            journey=journey,
            position=position,
            defaults={
                "delay": step.delay,
                "channel": step.channel,
                "subject": step.subject,
                "body": step.body,
                "discount_percent": step.discount_percent,
                "discount_valid_for": step.discount_valid_for,
                "condition": step.condition,
                "discount_amount": step.discount_amount,
                "discount_currency": step.discount_currency,
                "discount_prefix": step.discount_prefix,
                "discount_pool_id": pools.get(step.discount_pool) if step.discount_pool else None,
            },
        )
    removed = journey.steps.filter(position__gte=len(spec.steps))
    scheduled_send_cancel_for_steps(step_ids=list(removed.values_list("pk", flat=True)))
    removed.delete()
    return journey, created


DEMO_JOURNEYS = Path(__file__).resolve().parent.parent / "demo_journeys.json"


def demo_journeys_ensure() -> ImportSummary:
    """Load the three journeys the business asked for (idempotent: updates them in place)."""
    return journeys_import(data=json.loads(DEMO_JOURNEYS.read_text()))
