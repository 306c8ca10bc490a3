from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command

from journeys.models import Journey, JourneyStep, ScheduledSend
from journeys.services import DEMO_JOURNEYS, events_apply_pending, journeys_import

pytestmark = pytest.mark.django_db


def run_demo(capture, **options) -> str:
    out = StringIO()
    with capture(execute=True):
        call_command("nudge_demo", stdout=out, **options)
    # the test's transaction never commits: the host events were recorded only now, by the
    # captured on-commit callbacks, after the command applied what was stored before
    events_apply_pending()
    return out.getvalue()


def test_demo_loads_the_three_journeys_and_the_demo_customers_flow_through_them(
    django_capture_on_commit_callbacks,
):
    out = run_demo(django_capture_on_commit_callbacks)

    assert set(Journey.objects.values_list("slug", flat=True)) == {
        "welcome-email",
        "signup-no-purchase-sms",
        "abandoned-checkout",
    }
    assert "Demo journeys: " in out
    sends = {
        (s.customer.external_id, s.journey.slug): (s.status, s.reason)
        for s in ScheduledSend.objects.select_related("customer", "journey")
    }
    assert sends[("demo_u_chloe", "welcome-email")] == ("pending", "")
    assert sends[("demo_u_ben", "abandoned-checkout")] == ("pending", "")
    assert sends[("demo_u_ana", "welcome-email")] == (
        "cancelled",
        "cancelled by payment demo_p_ana",
    )
    assert sends[("demo_u_ana", "abandoned-checkout")] == (
        "cancelled",
        "cancelled by payment demo_p_ana",
    )

    run_demo(django_capture_on_commit_callbacks)
    assert ScheduledSend.objects.count() == len(sends)


def test_a_rerun_leaves_a_marketers_edits_and_reset_restores_the_journeys_as_shipped(
    django_capture_on_commit_callbacks,
):
    out = run_demo(django_capture_on_commit_callbacks)
    assert (
        "Demo journeys: created welcome-email, signup-no-purchase-sms, abandoned-checkout." in out
    )
    reminder = Journey.objects.get(slug="abandoned-checkout")
    shipped_step = reminder.steps.get()
    shipped = (reminder.name, reminder.max_wait, shipped_step.body, shipped_step.delay)
    # what a marketer does in the admin: switch one journey off, rewrite another, add a step
    Journey.objects.filter(slug="welcome-email").update(active=False)
    reminder.name, reminder.max_wait = "Checkout reminder (edited)", timedelta(hours=5)
    reminder.save()
    shipped_step.body, shipped_step.delay = "Edited: {{ cart.checkout_url }}", timedelta(hours=1)
    shipped_step.save()
    JourneyStep.objects.create(
        journey=reminder, position=1, delay=timedelta(days=1), channel="sms", body="Again?"
    )
    sends_before = ScheduledSend.objects.count()

    out = run_demo(django_capture_on_commit_callbacks)

    assert (
        "Demo journeys: welcome-email, signup-no-purchase-sms, abandoned-checkout already "
        "there, left as they are (use --reset to restore them as shipped)." in out
    )
    assert "Demo journeys: created" not in out
    reminder.refresh_from_db()
    assert not Journey.objects.get(slug="welcome-email").active
    assert (reminder.name, reminder.max_wait) == ("Checkout reminder (edited)", timedelta(hours=5))
    assert [(s.body, s.delay) for s in reminder.steps.order_by("position")] == [
        ("Edited: {{ cart.checkout_url }}", timedelta(hours=1)),
        ("Again?", timedelta(days=1)),
    ]
    assert ScheduledSend.objects.count() == sends_before

    out = run_demo(django_capture_on_commit_callbacks, reset=True)

    assert (
        "Demo journeys: restored as shipped: welcome-email, signup-no-purchase-sms, "
        "abandoned-checkout." in out
    )
    assert set(Journey.objects.values_list("active", flat=True)) == {True}
    reminder.refresh_from_db()
    step = reminder.steps.get()  # the added step is gone again
    assert (reminder.name, reminder.max_wait, step.body, step.delay) == shipped
    # the sends survive the reset; the step's removal cancelled the pending ones it had
    assert ScheduledSend.objects.count() == sends_before


def test_a_rerun_creates_only_the_demo_journeys_that_are_missing(
    django_capture_on_commit_callbacks,
):
    """E.g. a demo journey that a later version ships, or one deleted before it had sends."""
    shipped = json.loads(DEMO_JOURNEYS.read_text())["journeys"]
    welcome = {**shipped[0], "name": "Our welcome", "active": False}
    journeys_import(data={"journeys": [welcome]})

    out = run_demo(django_capture_on_commit_callbacks)

    assert "Demo journeys: created signup-no-purchase-sms, abandoned-checkout." in out
    assert "Demo journeys: welcome-email already there, left as they are" in out
    assert Journey.objects.filter(slug="welcome-email", name="Our welcome", active=False).exists()
    assert Journey.objects.filter(active=True).count() == 2
