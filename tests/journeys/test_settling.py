"""Arrival settling (NUDGE_SETTLE_SECONDS): a send never goes out sooner than that after its
trigger arrived, so late events that arrive in a burst collapse under dedupe "latest", and a
payment that arrives just behind a late trigger still cancels its sends. Real time, with a
one-second settle; the ticker's claim is run between the arrivals, as it would be."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from journeys.models import ScheduledSend
from marketing.models import Event
from tests.journeys.conftest import dispatch_due, ingest, make_event, make_journey, minutes_ago
from tests.journeys.conftest import sends as all_sends

# transaction=True: the claim compares with the database clock, now(), which inside one test
# transaction would stand still at its start
pytestmark = pytest.mark.django_db(transaction=True)
Status = ScheduledSend.Status


def _late_checkouts_in_a_burst() -> None:
    """Three checkouts that occurred 25, 24 and 23 minutes ago, posted one after the other."""
    make_journey(
        dedupe="latest",
        steps=[
            {
                "delay": "PT20M",
                "channel": "email",
                "template": {"subject": "Your cart", "body": "{{ cart.checkout_url }}"},
            }
        ],
    )
    for n, minutes in enumerate((25, 24, 23), start=1):
        ingest(make_event(f"co_{n}", "checkout_started", at=minutes_ago(minutes), cart=f"c_{n}"))
        dispatch_due()  # what the ticker does meanwhile
        time.sleep(0.2)


def test_a_burst_of_late_checkouts_gives_one_reminder_about_the_latest_cart(settings):
    settings.NUDGE_SETTLE_SECONDS = 1.0
    _late_checkouts_in_a_burst()
    assert not ScheduledSend.objects.filter(status=Status.SENT).exists()

    time.sleep(1.1)
    assert list(dispatch_due().values()) == ["sent"]
    statuses = sorted((s.cart.external_id, s.status) for s in all_sends())
    assert statuses == [("c_1", Status.CANCELLED), ("c_2", Status.CANCELLED), ("c_3", Status.SENT)]


def test_without_settling_each_late_checkout_of_the_burst_is_sent(settings):
    """What the issue found: each reminder is due already when its checkout arrives."""
    settings.NUDGE_SETTLE_SECONDS = 0
    _late_checkouts_in_a_burst()
    assert ScheduledSend.objects.filter(status=Status.SENT).count() == 3


def test_a_sends_due_time_is_its_triggers_arrival_plus_the_settle_when_that_is_later(settings):
    settings.NUDGE_SETTLE_SECONDS = 60
    make_journey()  # 10 minutes after checkout_started
    ingest(make_event("co_late", "checkout_started", at=minutes_ago(30), cart="c_late"))
    ingest(make_event("co_now", "checkout_started", user="u_2", at=minutes_ago(0), cart="c_now"))

    late, recent = all_sends()
    received = Event.objects.get(event_id="co_late").received_at
    assert late.due_at == received + timedelta(seconds=60)
    assert recent.due_at == recent.trigger_occurred_at + timedelta(minutes=10)


def test_a_payment_just_behind_a_late_sign_up_still_cancels_its_welcome(settings):
    settings.NUDGE_SETTLE_SECONDS = 1.0
    make_journey(
        trigger="user_registered",
        steps=[
            {
                "delay": "PT0S",
                "channel": "email",
                "template": {"subject": "Welcome", "body": "Hi {{ customer.first_name }}"},
            }
        ],
    )
    ingest(make_event("reg_1", "user_registered", at=minutes_ago(30)))
    assert dispatch_due() == {}
    ingest(make_event("pay_1", "payment_finished", at=minutes_ago(29), payment="p_1"))

    time.sleep(1.1)
    assert dispatch_due() == {}
    (send,) = all_sends()
    assert send.status == Status.CANCELLED
    assert "p_1" in send.reason


def test_settling_does_not_rescue_an_event_too_late_for_its_max_lateness(settings):
    settings.NUDGE_SETTLE_SECONDS = 60
    make_journey()  # due 10 minutes after the checkout; max lateness 2 hours
    ingest(make_event("co_old", "checkout_started", at=minutes_ago(3 * 60), cart="c_old"))
    (send,) = all_sends()
    assert send.status == Status.SKIPPED
    assert send.reason.startswith("stale: ")
