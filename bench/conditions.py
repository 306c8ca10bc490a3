"""The apply_conditions scenario of `make bench` (issue 15): events applied per second with 10
journeys of 3 entry conditions each, against the same 10 journeys without conditions, both
measured in this run.

What is timed is the apply path itself, in this process: `services.events_apply` over the
stored events in chunks of NUDGE_APPLY_CHUNK, one transaction each, as a messaging worker
runs it (the ticker and the cluster add the same hand-off cost to both sides, and are left
out so the comparison is the conditions' cost and nothing else).

Both sides exist at once: 10 journeys on one trigger type without conditions, and 10 on
another with three conditions each. Each side's N events (N new customers, each with a
payment 10 days earlier, so the history condition's query finds rows to count) are stored
first (not timed), then applied chunk by chunk, a chunk of one side and then one of the
other (which one first alternates): a machine whose load drifts (this one is shared) slows
both sides alike. The three conditions hold for every event (a cart total, the customer's
time zone, a payment count over 30 days): both sides write the same enrolments and sends, and
the difference is the conditions' reads and evaluation alone, the case least favourable to
them. Rates are events over the time spent in their own chunks, per round (--repeat
rounds); the medians are reported.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bench.run import BenchFailure, fmt, log

JOURNEYS = 10
CONDITIONS = 3
# types of their own: the demo journeys do not take part, and each side enrols only its own
TRIGGERS = {False: "bench_cart_plain", True: "bench_cart_conditional"}
STORE_BATCH = 500


@dataclass(frozen=True)
class ApplyConditionsFigures:
    events: int
    per_s: float  # with conditions, median
    baseline_per_s: float  # the same journeys without conditions, median

    @property
    def ratio(self) -> float:
        return self.per_s / self.baseline_per_s


def conditions_for(index: int) -> dict[str, Any]:
    return {
        "all": [
            {"field": "cart.total", "op": ">=", "value": 50 + index},
            {"field": "customer.timezone", "op": "starts with", "value": "Europe/"},
            {
                "history": {
                    "event": "payment_finished",
                    "within": "P30D",
                    "op": "<=",
                    "count": 1,
                }
            },
        ]
    }


def _journeys_ensure(*, with_conditions: bool) -> None:
    from journeys import selectors, services
    from journeys.specs import journey_spec_parse

    trigger = TRIGGERS[with_conditions]
    known = selectors.known_event_types() | {trigger}
    side = "with" if with_conditions else "without"
    for index in range(JOURNEYS):
        raw = {
            "slug": f"bench-conditions-{side}-{index}",
            "name": f"Bench, {side} conditions, {index}",
            "trigger": trigger,
            "exit_on": ["payment_finished"],
            "dedupe": "latest",
            "reentry": "every",
            "max_lateness": "PT2H",
            "conditions": conditions_for(index) if with_conditions else {},
            "steps": [
                {
                    "delay": "PT1H",
                    "channel": "email",
                    "template": {"subject": "Your cart", "body": "{{ cart.checkout_url }}"},
                }
            ],
        }
        spec, errors = journey_spec_parse(raw, known_types=known)
        if spec is None:
            raise BenchFailure(f"bench journey refused: {errors}")
        services.journey_save_spec(spec=spec)


def _payload(event_id: str, user: str, kind: str, at: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": event_id,
        "type": kind,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "user": {
            "id": user,
            "email": f"{user}@example.com",
            "first_name": "Ana",
            "timezone": "Europe/Berlin",
        },
    }
    if kind in TRIGGERS.values():
        cart = f"cart-{user}"
        payload["cart"] = {
            "id": cart,
            "total": "120.00",
            "currency": "EUR",
            "checkout_url": f"https://shop.example/checkout/{cart}",
            "items": [{"sku": "tee", "qty": 1}],
        }
    else:
        payload["payment"] = {
            "id": f"pay-{user}",
            "cart_id": None,
            "amount": "30.00",
            "currency": "EUR",
        }
    return payload


def _store(events: int, tag: str, trigger: str) -> list[int]:
    """Store a side's events (not timed); returns the trigger events' ids, to apply."""
    from django.utils import timezone

    from marketing.models import Event
    from marketing.services import events_ingest_batch
    from marketing.validation import event_validate

    now = timezone.now()
    payloads = []
    for n in range(events):
        user = f"{tag}-{n}"
        payloads.append(_payload(f"{user}-pay", user, "payment_finished", now - timedelta(days=10)))
        payloads.append(_payload(f"{user}-cart", user, trigger, now - timedelta(seconds=30)))
    for start in range(0, len(payloads), STORE_BATCH):
        items = []
        for payload in payloads[start : start + STORE_BATCH]:
            data, errors = event_validate(payload)
            if data is None:
                raise BenchFailure(f"bench event refused: {errors}")
            items.append((data, payload))
        events_ingest_batch(source=Event.Source.WEBHOOK, items=items)
    mine = Event.objects.filter(event_id__startswith=f"{tag}-", applied_at__isnull=True)
    # the payments are history, not work of the timed apply
    mine.filter(type="payment_finished").update(applied_at=now)
    return sorted(mine.filter(type=trigger).values_list("pk", flat=True))


def _apply_interleaved(ids: dict[bool, list[int]]) -> dict[bool, float]:
    """Apply both sides' events chunk by chunk, alternately; events/s of each side over the
    time spent in its own chunks."""
    from django.conf import settings

    from journeys import services

    size = settings.NUDGE_APPLY_CHUNK
    seconds = {False: 0.0, True: 0.0}
    applied = {False: 0, True: 0}
    chunks = max(len(side_ids) for side_ids in ids.values())
    for n, start in enumerate(range(0, chunks, size)):
        for side in (False, True) if n % 2 == 0 else (True, False):
            chunk = ids[side][start : start + size]
            if not chunk:
                continue
            started = time.perf_counter()
            applied[side] += services.events_apply(event_ids=chunk)
            seconds[side] += time.perf_counter() - started
    for side, side_ids in ids.items():
        if applied[side] != len(side_ids):
            raise BenchFailure(f"applied {applied[side]} of {len(side_ids)} events")
    return {side: applied[side] / seconds[side] for side in ids}


def _check_enrolled(ids: list[int]) -> None:
    """Both sides must enrol every event in every journey: the same writes."""
    from journeys.models import Enrollment

    enrolled = Enrollment.objects.filter(trigger_event_id__in=ids).count()
    if enrolled != len(ids) * JOURNEYS:
        raise BenchFailure(f"{enrolled} enrolments for {len(ids)} events x {JOURNEYS} journeys")


def run(args: Any, tag: str) -> ApplyConditionsFigures:
    from journeys import services
    from journeys.models import Journey

    events = args.apply_conditions_events
    for side in (False, True):
        _journeys_ensure(with_conditions=side)
    rates: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.repeat):
        ids = {
            side: _store(events, f"{tag}{round_}{'c' if side else 'p'}", TRIGGERS[side])
            for side in (False, True)
        }
        rate = _apply_interleaved(ids)
        for side in (False, True):
            _check_enrolled(ids[side])
            rates[side].append(rate[side])
        log(
            f"  apply_conditions round {round_}: {rate[True]:.0f} events/s with conditions, "
            f"{rate[False]:.0f} without"
        )
    bench_journeys = Journey.objects.filter(slug__startswith="bench-conditions-")
    services.journeys_deactivate(journey_ids=list(bench_journeys.values_list("pk", flat=True)))
    return ApplyConditionsFigures(
        events=events,
        per_s=statistics.median(rates[True]),
        baseline_per_s=statistics.median(rates[False]),
    )


def bench_line(figures: ApplyConditionsFigures | None, events: int) -> str:
    """The scenario's machine-readable line (nan when it was skipped)."""
    nan = float("nan")
    per_s, baseline, ratio = (
        (figures.per_s, figures.baseline_per_s, figures.ratio) if figures else (nan, nan, nan)
    )
    return (
        f"BENCH apply_conditions journeys={JOURNEYS} conditions={CONDITIONS} events={events} "
        f"per_s={fmt(per_s)} baseline_per_s={fmt(baseline)} ratio={fmt(ratio)}"
    )
