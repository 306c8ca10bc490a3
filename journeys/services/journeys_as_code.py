"""Journeys as code: import (all or nothing) and the demo journeys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models.functions import Now

from journeys import selectors
from journeys.models import Journey, JourneyStep
from journeys.services.operators import scheduled_send_cancel_for_steps
from journeys.specs import JourneySpec, journey_spec_parse


class JourneyImportError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class ImportSummary:
    created: list[str]
    updated: list[str]
    deactivated: list[str]


@transaction.atomic
def journeys_import(*, data: Any, replace: bool = False, dry_run: bool = False) -> ImportSummary:
    """Create or update journeys from the journeys-as-code format, all or nothing.

    Every journey is validated before anything is written; errors name the journey and the
    field. With `replace`, active journeys absent from `data` are deactivated. With
    `dry_run`, everything is validated and reported, and nothing is kept.
    """
    if not isinstance(data, dict) or not isinstance(data.get("journeys"), list):
        raise JourneyImportError(['the file must be an object {"journeys": [...]}'])
    known = selectors.known_event_types()
    specs: list[JourneySpec] = []
    errors: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(data["journeys"]):
        label = f"journeys[{index}]"
        if isinstance(raw, dict) and isinstance(raw.get("slug"), str):
            label += f" ({raw['slug']})"
        spec, problems = journey_spec_parse(raw, known_types=known)
        errors.extend(f"{label}: {problem}" for problem in problems)
        if spec is not None:
            if spec.slug in seen:
                errors.append(f"{label}: slug: appears twice in the file")
            seen.add(spec.slug)
            specs.append(spec)
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
    if dry_run:
        transaction.set_rollback(True)
    return ImportSummary(created=created, updated=updated, deactivated=deactivated)


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
            "holdout_percent": spec.holdout_percent,
            "conversion_window": spec.conversion_window,
        },
    )
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
