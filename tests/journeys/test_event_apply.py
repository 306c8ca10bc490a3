"""Events are stored (with their exits and the customer's profile) by the webhook, and applied
to journeys (enrolments) afterwards by the messaging workers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_q.tasks import async_task

from journeys import services, ticker
from journeys.models import Enrollment, Journey, ScheduledSend
from journeys.services.enrolment import EnrolmentPlan
from marketing import services as marketing_services
from marketing.api.serializers import EventSerializer
from marketing.models import Customer, Event
from tests.journeys.conftest import (
    dispatch_due,
    ingest,
    make_event,
    minutes_ago,
    queued_tasks,
    sends,
)
from tests.journeys.test_engine import make_journey

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status
LEASE = timedelta(seconds=120)


def store(payload: dict[str, Any]) -> Event:
    """What the webhook does, and nothing after: the event is stored, not applied."""
    serializer = EventSerializer(data=payload)
    serializer.is_valid(raise_exception=True)
    result = marketing_services.event_ingest(
        source=Event.Source.WEBHOOK, data=serializer.validated_data, payload=payload
    )
    assert result.created
    return Event.objects.get(pk=result.event.pk)


def test_a_stored_event_enrols_once_it_is_applied_and_only_once():
    make_journey()
    event = store(make_event("e1", "checkout_started", at=minutes_ago(1), cart="c_1"))
    assert event.applied_at is None
    assert not Enrollment.objects.exists()

    assert marketing_services.events_claim_unapplied(limit=10, lease=LEASE) == [event.pk]
    assert marketing_services.events_claim_unapplied(limit=10, lease=LEASE) == []  # leased
    assert services.events_apply(event_ids=[event.pk]) == 1
    assert services.events_apply(event_ids=[event.pk]) == 0  # a repeated task

    event.refresh_from_db()
    assert event.applied_at is not None
    (send,) = sends()
    assert (send.status, send.cart.external_id) == (Status.PENDING, "c_1")
    assert marketing_services.events_claim_unapplied(limit=10, lease=LEASE) == []


def test_a_payment_cancels_the_pending_sends_before_its_answer():
    make_journey()
    ingest(make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1"))

    store(make_event("e2", "payment_finished", at=minutes_ago(1), cart="c_1", payment="p_1"))

    (send,) = sends()  # not applied yet, and already cancelled
    assert (send.status, send.reason) == (Status.CANCELLED, "cancelled by payment p_1")
    assert dispatch_due() == {}


def test_a_payment_stored_before_its_checkout_was_applied_still_prevents_the_send():
    make_journey()
    store(make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1"))
    store(make_event("e2", "payment_finished", at=minutes_ago(1), cart="c_1", payment="p_1"))

    assert services.events_apply_pending() == 2

    (send,) = sends()
    assert (send.status, send.reason) == (Status.CANCELLED, "cancelled by payment p_1")


def test_an_opt_out_holds_from_its_answer_on():
    make_journey(steps=[{"delay": "PT10M", "channel": "sms", "template": {"body": "Hi"}}])
    ingest(make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1"))

    opt_out = make_event("e2", "user_updated", at=minutes_ago(1))
    opt_out["user"]["consent"] = {"sms": False}
    store(opt_out)  # not applied: the customer's consent is part of what the answer commits

    assert Customer.objects.get().sms_consent == "revoked"
    assert list(dispatch_due().values()) == ["skipped"]
    assert sends()[0].reason.startswith("no consent: SMS consent revoked (event:e2, ")


def test_a_send_two_payments_of_a_batch_exit_is_cancelled_by_the_first():
    make_journey()
    ingest(make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1"))
    items = []
    for event_id, payment in (("e2", "p_2"), ("e3", "p_1")):  # p_1 after p_2, in batch order
        payload = make_event(event_id, "payment_finished", at=minutes_ago(1), payment=payment)
        serializer = EventSerializer(data=payload)
        serializer.is_valid(raise_exception=True)
        items.append((serializer.validated_data, payload))

    marketing_services.events_ingest_batch(source=Event.Source.WEBHOOK, items=items)

    (send,) = sends()
    assert (send.status, send.reason) == (Status.CANCELLED, "cancelled by payment p_2")


@pytest.fixture
def failing_receiver(monkeypatch):
    """Applying event e1 fails (its enrolment raises, as a template store that does not
    answer would) until the test says it is fixed."""
    failing = {"e1": True}
    enrol = EnrolmentPlan.enrol

    def enrol_or_fail(plan: EnrolmentPlan, journey: Journey, event: Event) -> str:
        if failing.get(event.event_id):
            raise RuntimeError("template store unreachable")
        return enrol(plan, journey, event)

    monkeypatch.setattr(EnrolmentPlan, "enrol", enrol_or_fail)
    return failing


def test_an_event_whose_application_fails_keeps_the_error_and_is_retried(failing_receiver):
    make_journey()
    bad = store(make_event("e1", "checkout_started", at=minutes_ago(1), cart="c_1", user="u_1"))
    good = store(make_event("e2", "checkout_started", at=minutes_ago(1), cart="c_2", user="u_2"))
    claimed = marketing_services.events_claim_unapplied(limit=10, lease=LEASE)
    assert claimed == [bad.pk, good.pk]

    assert services.events_apply(event_ids=claimed) == 1  # the other one goes on

    bad.refresh_from_db()
    assert (bad.applied_at, bad.apply_attempts) == (None, 1)
    assert bad.apply_error == "RuntimeError: template store unreachable"
    # the failed event's enrolment was rolled back with it
    assert [send.cart.external_id for send in sends()] == ["c_2"]

    assert marketing_services.events_claim_unapplied(limit=10, lease=LEASE) == []
    failing_receiver["e1"] = False  # the template store is back
    Event.objects.update(apply_claimed_at=timezone.now() - 2 * LEASE)  # its lease ran out
    assert marketing_services.events_claim_unapplied(limit=10, lease=LEASE) == [bad.pk]
    assert services.events_apply(event_ids=[bad.pk]) == 1
    bad.refresh_from_db()
    assert bad.applied_at is not None and bad.apply_error == ""
    assert sorted(send.cart.external_id for send in sends()) == ["c_1", "c_2"]


def test_an_event_that_failed_every_attempt_is_left_with_its_error(settings, failing_receiver):
    settings.NUDGE_SEND_MAX_ATTEMPTS = 1
    make_journey()
    bad = store(make_event("e1", "checkout_started", at=minutes_ago(1), cart="c_1"))

    assert services.events_apply(event_ids=[bad.pk]) == 0

    assert marketing_services.events_claim_unapplied(limit=10, lease=LEASE) == []
    bad.refresh_from_db()
    assert (bad.applied_at, bad.apply_attempts) == (None, 1)


def test_the_ticker_hands_stored_events_to_the_workers_while_they_keep_up(settings):
    settings.NUDGE_APPLY_QUEUE_LIMIT = 1
    make_journey()
    event = store(make_event("e1", "checkout_started", at=minutes_ago(1), cart="c_1"))
    async_task("math.floor", 1.5, cluster="messaging", save=False)  # a task nobody took yet

    assert ticker.tick() == 0  # the queue is full: the event waits in its table
    assert queued_tasks() == [("math.floor", [1.5])]

    assert ticker.tick() == 1
    assert queued_tasks() == [(ticker.APPLY_TASK, [[event.pk]])]
    assert ticker.tick() == 0  # claimed: not handed out twice


def test_a_broker_that_does_not_answer_leaves_the_events_in_their_table(monkeypatch):
    class Unreachable:
        def queue_size(self) -> int:
            raise ConnectionError("broker down")

    monkeypatch.setattr(ticker, "_messaging_broker", lambda: Unreachable())
    make_journey()
    event = store(make_event("e1", "checkout_started", at=minutes_ago(1), cart="c_1"))

    assert ticker.tick() == 0  # no crash, nothing claimed

    event.refresh_from_db()
    assert (event.apply_claimed_at, event.applied_at) == (None, None)
