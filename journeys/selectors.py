"""Reads shared by services, the API and the admin."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from journeys.durations import format_iso_duration
from journeys.models import Journey, ScheduledSend
from marketing.models import Event, EventType


def journeys_triggered_by(event_type: str) -> list[Journey]:
    return list(Journey.objects.filter(active=True, trigger=event_type).prefetch_related("steps"))


def journeys_exited_by(event_type: str) -> list[Journey]:
    """Journeys (active or not: deactivating must not resurrect sends) that `event_type` exits."""
    return [
        j for j in Journey.objects.only("id", "exit_on", "exit_scope") if event_type in j.exit_on
    ]


def known_event_types() -> set[str]:
    """Types a journey may use: built-in, configured, and any type already received."""
    seen = Event.objects.values_list("type", flat=True).distinct()
    return set(EventType.values) | set(settings.NUDGE_EXTRA_EVENT_TYPES) | set(seen)


def exit_event_since(
    *,
    customer_id: int,
    exit_types: Iterable[str],
    since: datetime,
    cart_external_id: str | None = None,
    exclude_event_id: int | None = None,
) -> Event | None:
    """The earliest exit event of the customer that occurred at or after `since`."""
    types = list(exit_types)
    if not types:
        return None
    events = Event.objects.filter(customer_id=customer_id, type__in=types, occurred_at__gte=since)
    if cart_external_id is not None:
        events = events.filter(payload__payment__cart_id=cart_external_id)
    if exclude_event_id is not None:
        events = events.exclude(pk=exclude_event_id)
    return events.order_by("occurred_at").first()


def scheduled_sends(
    *, customer: str | None = None, journey: str | None = None, status: str | None = None
) -> QuerySet[ScheduledSend]:
    sends = ScheduledSend.objects.select_related("journey", "customer", "cart").order_by("-id")
    if customer:
        sends = sends.filter(customer__external_id=customer)
    if journey:
        sends = sends.filter(journey__slug=journey)
    if status:
        sends = sends.filter(status=status)
    return sends


def journey_spec(journey: Journey) -> dict[str, Any]:
    """One journey in the journeys-as-code format (journeys_export / journeys_import)."""
    spec: dict[str, Any] = {
        "slug": journey.slug,
        "name": journey.name,
        "trigger": journey.trigger,
        "exit_on": list(journey.exit_on),
        "exit_scope": journey.exit_scope,
        "dedupe": journey.dedupe,
        "max_wait": format_iso_duration(journey.max_wait) if journey.max_wait else None,
        "reentry": journey.reentry,
        "reentry_period": (
            format_iso_duration(journey.reentry_period) if journey.reentry_period else None
        ),
        "max_lateness": format_iso_duration(journey.max_lateness),
        "active": journey.active,
        "steps": [],
    }
    for step in journey.steps.order_by("position"):
        spec["steps"].append(
            {
                "delay": format_iso_duration(step.delay),
                "channel": step.channel,
                "template": {"subject": step.subject or None, "body": step.body},
                "discount": (
                    {
                        "percent_off": step.discount_percent,
                        "valid_for": (
                            format_iso_duration(step.discount_valid_for)
                            if step.discount_valid_for
                            else None
                        ),
                    }
                    if step.discount_percent
                    else None
                ),
            }
        )
    return spec


def journeys_export() -> dict[str, Any]:
    return {"journeys": [journey_spec(j) for j in Journey.objects.order_by("slug")]}
