"""A chunk of stored events is applied with one read and one write per table; what it does
must be exactly what the same events do one by one: the same enrolments and sends, with the
same statuses, reasons, due times and chains."""

from __future__ import annotations

import random
from typing import Any

import pytest
from django.db import transaction

from journeys import services as journeys_services
from journeys.models import Enrollment, ScheduledSend
from journeys.services import demo_journeys_ensure
from marketing import services
from marketing.models import Event
from tests.journeys.test_engine import make_journey
from tests.marketing.test_event_batch_equivalence import random_batch, validated

pytestmark = pytest.mark.django_db

STEPS = [
    {"delay": "PT0S", "channel": "email", "template": {"subject": "Now", "body": "Hi"}},
    {
        "delay": "PT40M",
        "channel": "sms",
        "template": {"body": "{{ discount.code }}"},
        "discount": {"percent_off": 10},
    },
]


def journeys() -> None:
    """Every kind of decision: dedupe first / latest (capped) / every, re-entry once / per
    period / every, exits per customer and per cart, inactive journeys, stale steps."""
    demo_journeys_ensure()
    make_journey(slug="per-cart", dedupe="every", exit_scope="cart")
    make_journey(
        slug="latest-capped",
        dedupe="latest",
        max_wait="PT20M",
        reentry="period",
        reentry_period="PT30M",
        exit_on=["payment_finished", "user_updated"],
        max_lateness="PT30M",
        steps=STEPS,
    )
    make_journey(
        slug="first-per-cart",
        trigger="payment_finished",
        exit_on=["checkout_started"],
        exit_scope="cart",
        reentry="once",
        steps=STEPS,
    )
    make_journey(slug="inactive", trigger="user_updated", exit_on=["user_registered"])
    make_journey(slug="off", trigger="checkout_started", active=False)


def state() -> dict[str, Any]:
    def reason(text: str) -> str:  # "stale: 42 min late": how late depends on the clock
        return "stale" if text.startswith("stale:") else text

    return {
        "enrollments": sorted(
            Enrollment.objects.values_list(
                "journey__slug",
                "customer__external_id",
                "cart__external_id",
                "trigger_event__event_id",
                "trigger_occurred_at",
                "chain_started_at",
            )
        ),
        "sends": sorted(
            (*row[:-3], reason(row[-3]), row[-2] is not None, row[-1])
            for row in ScheduledSend.objects.values_list(
                "journey__slug",
                "step_position",
                "customer__external_id",
                "cart__external_id",
                "enrollment__trigger_event__event_id",
                "trigger_occurred_at",
                "due_at",
                "dedupe_key",
                "status",
                "reason",
                "discount_code",
                "discount_percent",
            )
        ),
        "unapplied": Event.objects.filter(applied_at__isnull=True).count(),
    }


def run(apply: Any) -> dict[str, Any]:
    with transaction.atomic():
        apply()
        applied = state()
        transaction.set_rollback(True)
    return applied


def store(rng: random.Random, size: int) -> None:
    for item in validated(random_batch(rng, size)):
        services.event_ingest_outcome(Event.Source.WEBHOOK, *item)


@pytest.mark.parametrize("seed", range(25))
def test_a_chunk_of_events_does_what_its_events_do_one_by_one(seed, settings):
    settings.NUDGE_EXTRA_EVENT_TYPES = ["user_updated"]
    rng = random.Random(seed)
    journeys()
    store(rng, 15)  # a history: enrolments, pending and cancelled sends
    journeys_services.events_apply_pending()
    store(rng, 40)
    ids = list(Event.objects.filter(applied_at__isnull=True).values_list("pk", flat=True))

    together = run(lambda: journeys_services.events_apply(event_ids=ids))
    one_by_one = run(lambda: [journeys_services.events_apply(event_ids=[pk]) for pk in sorted(ids)])

    assert together["unapplied"] == one_by_one["unapplied"] == 0
    assert together == one_by_one
    assert len({row[2] for row in together["sends"]}) > 1  # not a trivial case
