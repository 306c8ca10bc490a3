"""Journey policies and the dispatch state machine."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from journeys import services
from journeys.channels import ChannelError, OutgoingMessage
from journeys.models import Journey, ScheduledSend
from tests.journeys.conftest import (
    dispatch_due,
    ingest,
    make_event,
    make_journey,
    minutes_ago,
    sends,
)

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status


class FlakyChannel:
    calls: list[OutgoingMessage] = []
    failures = 0

    def send(self, message: OutgoingMessage) -> str:
        FlakyChannel.calls.append(message)
        if FlakyChannel.failures:
            FlakyChannel.failures -= 1
            raise ChannelError("provider timed out")
        return "prov-1"


@pytest.fixture
def flaky_channel(settings):
    from journeys.channels import get_channel

    settings.NUDGE_CHANNELS = {
        **settings.NUDGE_CHANNELS,
        "sms": "tests.journeys.test_engine.FlakyChannel",
    }
    get_channel.cache_clear()
    FlakyChannel.calls = []
    FlakyChannel.failures = 0
    yield FlakyChannel
    get_channel.cache_clear()


def test_a_second_delivery_of_the_same_dispatch_task_sends_nothing():
    make_journey()
    ingest(make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1"))
    (send_id,) = services.scheduled_sends_claim_due(limit=10)

    assert services.scheduled_send_dispatch(send_id=send_id) == "sent"
    assert services.scheduled_send_dispatch(send_id=send_id) == "noop"
    assert sends()[0].status == Status.SENT


def test_dedupe_every_schedules_one_send_per_trigger():
    make_journey(dedupe="every")
    ingest(make_event("e1", "checkout_started", at=minutes_ago(5), cart="c_1"))
    ingest(make_event("e2", "checkout_started", at=minutes_ago(4), cart="c_2"))

    assert [s.status for s in sends()] == [Status.PENDING, Status.PENDING]


def test_dedupe_first_ignores_later_triggers_while_pending():
    make_journey(dedupe="first")
    ingest(make_event("e1", "checkout_started", at=minutes_ago(5), cart="c_1"))
    ingest(make_event("e2", "checkout_started", at=minutes_ago(4), cart="c_2"))

    assert [s.cart.external_id for s in sends()] == ["c_1"]


def test_latest_with_max_wait_caps_how_far_triggers_postpone_the_send():
    make_journey(dedupe="latest", max_wait="PT15M")
    first = minutes_ago(30)
    ingest(make_event("e1", "checkout_started", at=first, cart="c_1"))
    ingest(make_event("e2", "checkout_started", at=minutes_ago(8), cart="c_2"))

    (pending,) = sends(status=Status.PENDING)
    assert pending.cart.external_id == "c_2"
    assert pending.due_at == first + timedelta(minutes=15) + timedelta(minutes=10)


def test_reentry_once_per_period():
    make_journey(reentry="period", reentry_period="P1D")
    ingest(make_event("e1", "checkout_started", at=minutes_ago(60), cart="c_1"))
    dispatch_due()
    ingest(make_event("e2", "checkout_started", at=minutes_ago(30), cart="c_2"))
    assert len(sends()) == 1
    ingest(make_event("e3", "checkout_started", at=minutes_ago(60 * 25 + 70), cart="c_0"))
    assert len(sends()) == 2


def test_exit_scope_cart_cancels_only_the_paid_cart():
    make_journey(dedupe="every", exit_scope="cart")
    ingest(make_event("e1", "checkout_started", at=minutes_ago(5), cart="c_1"))
    ingest(make_event("e2", "checkout_started", at=minutes_ago(4), cart="c_2"))
    ingest(make_event("e3", "payment_finished", at=minutes_ago(3), cart="c_1", payment="p_1"))

    assert [(s.cart.external_id, s.status, s.reason) for s in sends()] == [
        ("c_1", Status.CANCELLED, "cancelled by payment p_1"),
        ("c_2", Status.PENDING, ""),
    ]


def test_deactivated_journey_sends_nothing_and_says_why():
    journey = make_journey()
    ingest(make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1"))
    Journey.objects.filter(pk=journey.pk).update(active=False)

    assert list(dispatch_due().values()) == ["cancelled"]
    assert sends()[0].reason == "cancelled: journey deactivated"


def test_removing_a_step_cancels_its_pending_sends():
    make_journey(
        steps=[
            {"delay": "PT1M", "channel": "email", "template": {"subject": "a", "body": "a"}},
            {"delay": "PT1H", "channel": "email", "template": {"subject": "b", "body": "b"}},
        ]
    )
    ingest(make_event("e1", "checkout_started", at=minutes_ago(5), cart="c_1"))
    make_journey()  # the same slug, now with one step

    statuses = [(s.step_position, s.status, s.reason) for s in sends()]
    assert statuses == [
        (0, Status.PENDING, ""),
        (1, Status.CANCELLED, "cancelled: step removed from the journey"),
    ]


def test_provider_error_is_retried_with_the_same_discount_code(flaky_channel, settings):
    services.demo_journeys_ensure()
    flaky_channel.failures = 1
    ingest(make_event("e1", "user_registered", at=minutes_ago(31)))
    (sms,) = sends(journey__slug="signup-no-purchase-sms")
    code = sms.discount_code

    dispatch_due()
    sms.refresh_from_db()
    assert sms.status == Status.SENDING
    assert sms.reason.startswith("retrying after provider error: provider timed out (next try at ")
    assert sms.last_error == "provider timed out"
    assert [entry["outcome"] for entry in sms.attempt_log] == [
        "transient error: provider timed out"
    ]

    ScheduledSend.objects.filter(pk=sms.pk).update(claimed_at=timezone.now() - timedelta(hours=1))
    (recovered,) = services.scheduled_sends_recover(lease=timedelta(minutes=2), limit=10)
    assert services.scheduled_send_dispatch(send_id=recovered) == "sent"

    sms.refresh_from_db()
    assert sms.discount_code == code
    assert [code in m.body for m in flaky_channel.calls] == [True, True]


def test_send_out_of_attempts_fails_with_reason(settings):
    make_journey()
    ingest(make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1"))
    services.scheduled_sends_claim_due(limit=10)
    # its last provider call started and its worker died before recording the outcome
    ScheduledSend.objects.update(
        attempts=settings.NUDGE_SEND_MAX_ATTEMPTS,
        claimed_at=timezone.now() - timedelta(hours=1),
        call_started_at=timezone.now() - timedelta(hours=1),
    )

    assert services.scheduled_sends_recover(lease=timedelta(minutes=2), limit=10) == []
    send = sends()[0]
    assert send.status == Status.FAILED
    assert send.reason == (
        f"failed: no outcome recorded after {settings.NUDGE_SEND_MAX_ATTEMPTS} provider calls"
    )
    assert send.ambiguous_retries == 1


def test_a_send_whose_call_never_recorded_an_outcome_is_retried_and_counted(settings):
    make_journey()
    ingest(make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1"))
    (claimed,) = services.scheduled_sends_claim_due(limit=10)
    ScheduledSend.objects.update(
        attempts=1,
        claimed_at=timezone.now() - timedelta(hours=1),
        call_started_at=timezone.now() - timedelta(hours=1),
    )

    assert services.scheduled_sends_recover(lease=timedelta(minutes=2), limit=10) == [claimed]
    assert services.scheduled_send_dispatch(send_id=claimed) == "sent"
    send = sends()[0]
    assert (send.attempts, send.ambiguous_retries, send.call_started_at) == (2, 1, None)


def test_a_task_lost_before_its_call_costs_no_attempt(settings):
    make_journey()
    ingest(make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1"))
    (claimed,) = services.scheduled_sends_claim_due(limit=10)
    for _ in range(settings.NUDGE_SEND_MAX_ATTEMPTS + 2):  # lost again and again
        ScheduledSend.objects.update(claimed_at=timezone.now() - timedelta(hours=1))
        assert services.scheduled_sends_recover(lease=timedelta(minutes=2), limit=10) == [claimed]

    assert services.scheduled_send_dispatch(send_id=claimed) == "sent"
    send = sends()[0]
    assert (send.attempts, send.ambiguous_retries) == (1, 0)


def test_lost_queue_entry_is_handed_out_again_after_the_lease():
    make_journey()
    ingest(make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1"))
    (claimed,) = services.scheduled_sends_claim_due(limit=10)  # ...and the task is lost
    assert services.scheduled_sends_recover(lease=timedelta(minutes=2), limit=10) == []

    ScheduledSend.objects.update(claimed_at=timezone.now() - timedelta(minutes=3))

    assert services.scheduled_sends_recover(lease=timedelta(minutes=2), limit=10) == [claimed]
    assert services.scheduled_send_dispatch(send_id=claimed) == "sent"


def test_operator_cancel_refuses_a_send_that_already_went_out():
    make_journey()
    ingest(make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1"))
    (send,) = sends()
    cancelled = services.scheduled_send_cancel(send_id=send.pk, reason="campaign pulled")
    assert (cancelled.status, cancelled.reason) == (Status.CANCELLED, "campaign pulled")

    with pytest.raises(services.SendNotCancellable):
        services.scheduled_send_cancel(send_id=send.pk, reason="again")


def test_host_saved_payment_cancels_like_a_webhook(django_capture_on_commit_callbacks):
    from marketing.services import payment_upsert

    make_journey()
    ingest(make_event("e1", "checkout_started", at=minutes_ago(5), cart="c_1"))
    customer = sends()[0].customer

    with django_capture_on_commit_callbacks(execute=True):
        payment_upsert(customer=customer, external_id="p_host", amount=10, currency="EUR")

    assert sends()[0].reason == "cancelled by payment p_host"
