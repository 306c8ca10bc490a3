"""The three journeys the business asked for, end to end through the services."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from journeys import services
from journeys.models import ScheduledSend
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago, sends

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("demo_journeys")]
Status = ScheduledSend.Status


def test_registration_schedules_welcome_email_and_sms_30_minutes_after_it_occurred():
    registered_at = minutes_ago(5)
    ingest(make_event("evt_1", "user_registered", at=registered_at))

    scheduled = sends()
    assert {s.journey.slug for s in scheduled} == {"welcome-email", "signup-no-purchase-sms"}
    for send in scheduled:
        assert send.status == Status.PENDING
        assert send.due_at == registered_at + timedelta(minutes=30)
    assert dispatch_due() == {}  # not due yet


def test_due_welcome_email_is_sent_once_with_rendered_message():
    ingest(make_event("evt_1", "user_registered", at=minutes_ago(31), first_name="Ana"))

    outcomes = dispatch_due()

    assert sorted(outcomes.values()) == ["sent", "sent"]
    email = sends(journey__slug="welcome-email")[0]
    assert email.status == Status.SENT
    assert email.recipient == "u_1@example.com"
    assert email.subject == "Welcome to the shop, Ana"
    assert "Hi Ana," in email.body
    assert email.sent_at is not None
    assert dispatch_due() == {}  # nothing goes out twice


def test_signup_sms_carries_a_unique_discount_code_per_send():
    for n in range(5):
        ingest(make_event(f"evt_{n}", "user_registered", user=f"u_{n}", at=minutes_ago(31)))

    dispatch_due()

    sms = sends(journey__slug="signup-no-purchase-sms")
    codes = {s.discount_code for s in sms}
    assert len(sms) == 5 and len(codes) == 5
    for send in sms:
        assert send.status == Status.SENT
        assert send.recipient == "+14155550101"
        assert send.discount_code and send.discount_code in send.body
        assert "10% off" in send.body
        assert send.discount_expires_at is not None
        valid_for = send.discount_expires_at - send.sent_at
        assert abs(valid_for - timedelta(days=7)) < timedelta(seconds=5)


def test_payment_before_due_cancels_pending_sends_with_reason():
    ingest(make_event("evt_1", "user_registered", at=minutes_ago(20)))
    ingest(make_event("evt_2", "payment_finished", at=minutes_ago(10), cart="c_1", payment="p_9"))

    for send in sends():
        assert send.status == Status.CANCELLED
        assert send.reason == "cancelled by payment p_9"
    assert dispatch_due() == {}


def test_payment_that_arrives_first_but_occurred_after_registration_prevents_sends():
    ingest(make_event("evt_2", "payment_finished", at=minutes_ago(10), cart="c_1", payment="p_9"))
    ingest(make_event("evt_1", "user_registered", at=minutes_ago(31)))

    scheduled = sends()
    assert len(scheduled) == 2
    assert {s.status for s in scheduled} == {Status.CANCELLED}
    assert {s.reason for s in scheduled} == {"cancelled by payment p_9"}
    assert dispatch_due() == {}


def test_payment_that_occurred_before_the_trigger_does_not_exit():
    ingest(make_event("evt_0", "payment_finished", at=minutes_ago(50), cart="c_0", payment="p_0"))
    ingest(make_event("evt_1", "checkout_started", at=minutes_ago(21), cart="c_1"))

    assert list(dispatch_due().values()) == ["sent"]


def test_payment_between_due_and_a_late_dispatch_still_stops_the_send():
    ingest(make_event("evt_1", "user_registered", at=minutes_ago(40)))
    claimed = services.scheduled_sends_claim_due(limit=10)  # due 10 min ago, handed out
    assert len(claimed) == 2
    # the payment occurred after the due time, and commits before any worker ran
    ingest(make_event("evt_2", "payment_finished", at=minutes_ago(1), cart="c_1", payment="p_1"))

    assert [services.scheduled_send_dispatch(send_id=pk) for pk in claimed] == ["noop", "noop"]
    assert dispatch_due() == {}
    assert {s.status for s in sends()} == {Status.CANCELLED}
    assert {s.reason for s in sends()} == {"cancelled by payment p_1"}


def test_several_checkouts_produce_one_reminder_about_the_latest_cart():
    ingest(make_event("evt_1", "checkout_started", at=minutes_ago(26), cart="c_1"))
    ingest(make_event("evt_2", "checkout_started", at=minutes_ago(24), cart="c_2"))
    ingest(make_event("evt_3", "checkout_started", at=minutes_ago(21), cart="c_3"))

    outcomes = dispatch_due()

    assert list(outcomes.values()) == ["sent"]
    reminders = sends(journey__slug="abandoned-checkout")
    assert [(s.cart.external_id, s.status) for s in reminders] == [
        ("c_1", Status.CANCELLED),
        ("c_2", Status.CANCELLED),
        ("c_3", Status.SENT),
    ]
    assert reminders[0].reason == "superseded by checkout c_2"
    assert reminders[1].reason == "superseded by checkout c_3"
    # the cart's own columns reach the template (a Decimal total, not a string)
    assert "(120.00 EUR) is waiting: https://shop.example/checkout/c_3\n" in reminders[2].body


def test_latest_checkout_postpones_the_reminder_to_20_minutes_after_it():
    ingest(make_event("evt_1", "checkout_started", at=minutes_ago(25), cart="c_1"))
    latest_at = minutes_ago(10)
    ingest(make_event("evt_2", "checkout_started", at=latest_at, cart="c_2"))

    pending = sends(status=Status.PENDING)
    assert len(pending) == 1
    assert pending[0].due_at == latest_at + timedelta(minutes=20)
    assert dispatch_due() == {}


def test_an_older_checkout_arriving_late_does_not_replace_the_newer_one():
    ingest(make_event("evt_2", "checkout_started", at=minutes_ago(22), cart="c_2"))
    ingest(make_event("evt_1", "checkout_started", at=minutes_ago(23), cart="c_1"))

    (reminder,) = sends(journey__slug="abandoned-checkout")
    assert reminder.cart.external_id == "c_2"


def test_duplicate_deliveries_produce_one_send_each():
    registered = make_event("evt_1", "user_registered", at=minutes_ago(31))
    checkout = make_event("evt_2", "checkout_started", at=minutes_ago(21), cart="c_1")
    for _ in range(3):
        ingest(registered)
        ingest(checkout)

    assert len(sends()) == 3
    assert sorted(dispatch_due().values()) == ["sent", "sent", "sent"]


def test_second_registration_of_the_same_customer_does_not_enrol_again():
    ingest(make_event("evt_1", "user_registered", at=minutes_ago(40)))
    dispatch_due()
    ingest(make_event("evt_2", "user_registered", at=minutes_ago(31)))

    assert len(sends()) == 2  # re-entry "once"


def test_send_later_than_max_lateness_is_skipped_as_stale():
    ingest(make_event("evt_1", "user_registered", at=timezone.now() - timedelta(hours=1)))
    ScheduledSend.objects.update(due_at=timezone.now() - timedelta(hours=2, minutes=5))

    assert set(dispatch_due().values()) == {"skipped"}
    assert {s.reason for s in sends()} == {"stale: 2 h 5 min late"}


def test_event_arriving_after_max_lateness_is_recorded_as_skipped():
    ingest(make_event("evt_1", "user_registered", at=timezone.now() - timedelta(hours=3)))

    scheduled = sends()
    assert {s.status for s in scheduled} == {Status.SKIPPED}
    assert all(s.reason.startswith("stale: 2 h 30 min late") for s in scheduled)


def test_customer_who_opted_out_of_sms_gets_no_sms_but_the_email():
    ingest(make_event("evt_1", "user_registered", at=minutes_ago(31), consent={"sms": False}))

    dispatch_due()

    by_journey = {s.journey.slug: s for s in sends()}
    assert by_journey["signup-no-purchase-sms"].status == Status.SKIPPED
    assert by_journey["signup-no-purchase-sms"].reason.startswith(
        "no consent: SMS consent revoked (event:evt_1, "
    )
    assert by_journey["welcome-email"].status == Status.SENT
