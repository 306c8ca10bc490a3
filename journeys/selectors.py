"""Reads shared by services, the API and the admin."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q, QuerySet

from journeys.codes import code_normalise
from journeys.conditions import condition_renumber
from journeys.durations import format_iso_duration
from journeys.models import (
    DiscountCodePool,
    FrequencyCap,
    Journey,
    JourneyStep,
    ScheduledSend,
    SendWindowMode,
)
from journeys.sqlnames import sql
from marketing import selectors as marketing_selectors
from marketing.models import EventType

# Every event asks which journeys it triggers and exits. Journeys change rarely, so each
# process keeps them (with their steps) and re-reads them only when this one cheap query says
# they changed: it also sees changes made by other processes, and rolled-back ones.
_JOURNEYS_VERSION_SQL = sql("""
SELECT (SELECT count(*) FROM {journey}), (SELECT max(updated_at) FROM {journey}),
       (SELECT sum(id) FROM {journey} WHERE active),
       (SELECT count(*) FROM {step}), (SELECT max(id) FROM {step}),
       (SELECT max(updated_at) FROM {step})
""")


@dataclass
class _JourneyCache:
    version: tuple[Any, ...] | None = None
    loaded_at: float = 0.0
    checked_at: float = 0.0
    journeys: list[Journey] = field(default_factory=list)
    journeys_by_id: dict[int, Journey] = field(default_factory=dict)
    steps_by_id: dict[int, JourneyStep] = field(default_factory=dict)


_journey_cache = _JourneyCache()


def journeys_all(*, recheck_after: float = 0.0) -> list[Journey]:
    """Every journey, active or not, with its steps prefetched; treat them as read-only.

    Cached per process while the version query above is unchanged (a journey or step saved,
    added or deleted anywhere changes it, and so does switching a journey on or off, even by
    `QuerySet.update()`), and re-read at least every NUDGE_JOURNEY_CACHE_SECONDS all the
    same (other changes made by `update()`, which sets no `updated_at`, or on a machine whose
    clock is behind). With `recheck_after`, the version query itself runs at most that often
    (seconds); a journey or step saved in this process is seen at once all the same.
    """
    return _journeys_cached(recheck_after).journeys


def journeys_and_steps_by_id() -> tuple[dict[int, Journey], dict[int, JourneyStep]]:
    """journeys_all() by id, and their steps by id (dispatch: the version query every time,
    so a journey deactivated or a step edited before a chunk is locked is seen by it)."""
    cache = _journeys_cached(0.0)
    return cache.journeys_by_id, cache.steps_by_id


def _journeys_cached(recheck_after: float) -> _JourneyCache:
    cache = _journey_cache
    now = time.monotonic()
    if cache.version is not None and now - cache.checked_at < recheck_after:
        return cache
    with connection.cursor() as cursor:
        cursor.execute(_JOURNEYS_VERSION_SQL)
        version = tuple(cursor.fetchone() or ())
    stale = now - cache.loaded_at > settings.NUDGE_JOURNEY_CACHE_SECONDS
    if version != cache.version or stale:
        cache.journeys = list(Journey.objects.prefetch_related("steps"))
        cache.journeys_by_id = {journey.pk: journey for journey in cache.journeys}
        cache.steps_by_id = {
            step.pk: step for journey in cache.journeys for step in journey.steps.all()
        }
        cache.version, cache.loaded_at = version, now
    cache.checked_at = now
    return cache


def journeys_forget() -> None:
    """Drop this process's copy of the journeys (one was saved or deleted here)."""
    _journey_cache.version = None


def known_event_types() -> set[str]:
    """Types a journey may use: built-in, configured, and any type already received."""
    received = marketing_selectors.event_types_received()
    return set(EventType.values) | set(settings.NUDGE_EXTRA_EVENT_TYPES) | set(received)


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
        "priority": journey.priority,
        "transactional": journey.transactional,
        "send_window": _send_window_spec(journey),
        "conditions": journey.conditions or {},
        # a number, as written: 10 or 2.5 (journeys.services.holdout)
        "holdout_percent": _number(journey.holdout_percent),
        "conversion_window": format_iso_duration(journey.conversion_window),
        "steps": [],
    }
    steps = list(journey.steps.select_related("discount_pool").order_by("position"))
    # journeys-as-code numbers steps by their index: step conditions follow
    indexes = {step.position: index for index, step in enumerate(steps)}
    for step in steps:
        spec["steps"].append(
            {
                "delay": format_iso_duration(step.delay),
                "channel": step.channel,
                "template": {"subject": step.subject or None, "body": step.body},
                "discount": _discount_spec(step),
                "condition": condition_renumber(step.condition, indexes) or None,
            }
        )
    return spec


def _send_window_spec(journey: Journey) -> Any:
    if journey.send_window == SendWindowMode.ALWAYS:
        return None
    if journey.send_window == SendWindowMode.CUSTOM and journey.send_window_start is not None:
        assert journey.send_window_end is not None
        return {
            "start": f"{journey.send_window_start:%H:%M}",
            "end": f"{journey.send_window_end:%H:%M}",
            "weekdays_only": journey.send_weekdays_only,
        }
    return SendWindowMode.SITE.value


def caps_spec() -> list[dict[str, Any]]:
    """The site's frequency caps in the journeys-as-code format (its top-level "caps")."""
    return [
        {
            "channel": cap.channel,
            "max_sends": cap.max_sends,
            "period": format_iso_duration(cap.period),
            "active": cap.active,
        }
        for cap in FrequencyCap.objects.order_by("channel", "period")
    ]


def _discount_spec(step: JourneyStep) -> dict[str, Any] | None:
    """A step's discount rule in the journeys-as-code format (only the keys it uses, but
    percent_off and valid_for always, as before amounts and pools existed)."""
    if step.discount_percent is None and step.discount_amount is None:
        return None
    spec: dict[str, Any] = {}
    if step.discount_amount is not None:
        spec["amount_off"] = f"{step.discount_amount:.2f}"
        spec["currency"] = step.discount_currency
    else:
        spec["percent_off"] = step.discount_percent
    spec["valid_for"] = (
        format_iso_duration(step.discount_valid_for) if step.discount_valid_for else None
    )
    if step.discount_prefix:
        spec["prefix"] = step.discount_prefix
    if step.discount_pool is not None:
        spec["pool"] = step.discount_pool.name
    return spec


def discount_pool_names() -> set[str]:
    return set(DiscountCodePool.objects.values_list("name", flat=True))


def discount_pools_with_stock() -> QuerySet[DiscountCodePool]:
    """The pools, each with `remaining` (codes not handed out yet) and `taken`: one
    aggregate over the pools' codes."""
    return DiscountCodePool.objects.annotate(
        remaining=Count("codes", filter=Q(codes__send=None)),
        taken=Count("codes", filter=Q(codes__send__isnull=False)),
    )


def discount_pools_low() -> list[DiscountCodePool]:
    """Pools with fewer codes left than their low-stock threshold (used by steps or not)."""
    return [
        pool
        for pool in discount_pools_with_stock().order_by("name")
        if pool.remaining < pool.low_stock_threshold  # type: ignore[attr-defined]
    ]


def discount_code_send(code: str) -> ScheduledSend | None:
    """The send that holds `code` (compared upper-case), with its journey and the payment
    that redeemed it; None when no send does."""
    return (
        ScheduledSend.objects.filter(discount_code=code_normalise(code))
        .select_related("journey", "discount_payment")
        .first()
    )


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def journeys_export() -> dict[str, Any]:
    return {
        "journeys": [journey_spec(j) for j in Journey.objects.order_by("slug")],
        "caps": caps_spec(),
    }
