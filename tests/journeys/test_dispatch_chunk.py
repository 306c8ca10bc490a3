"""A dispatch task handles a chunk of sends with set-based queries; each row keeps its own
outcome, exactly as if it had been dispatched alone."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from journeys import services, tasks, ticker
from journeys.channels import OutgoingMessage, get_channel
from journeys.models import Journey, JourneyStep, ScheduledSend
from marketing.models import Customer, Event
from tests.journeys.conftest import ingest, make_event, minutes_ago, queued_tasks, sends
from tests.journeys.test_engine import make_journey

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status


class BrokenForOneChannel:
    """Fails with an unexpected error (not a ChannelError) for one recipient."""

    calls: list[OutgoingMessage] = []

    def send(self, message: OutgoingMessage) -> str:
        if message.recipient.startswith("broken"):
            raise RuntimeError("provider SDK bug")
        BrokenForOneChannel.calls.append(message)
        return f"ok-{message.send_id}"


@pytest.fixture
def broken_channel(settings):
    settings.NUDGE_CHANNELS = {
        **settings.NUDGE_CHANNELS,
        "email": "tests.journeys.test_dispatch_chunk.BrokenForOneChannel",
    }
    get_channel.cache_clear()
    BrokenForOneChannel.calls = []
    yield BrokenForOneChannel
    get_channel.cache_clear()


def _checkout(user: str, minutes: float = 11) -> None:
    ingest(make_event(f"co_{user}", "checkout_started", user=user, at=minutes_ago(minutes),
                      cart=f"c_{user}"))  # fmt: skip


def test_a_chunk_records_each_sends_own_outcome():
    make_journey()
    for user in ("sent", "paid", "optout", "cancelled"):
        _checkout(user)
    claimed = services.scheduled_sends_claim_due(limit=10)
    assert len(claimed) == 4
    # recorded without its effects (as if its cancellation had not run): dispatch must see it
    Event.objects.create(
        source=Event.Source.WEBHOOK, event_id="pay", type="payment_finished",
        customer=Customer.objects.get(external_id="paid"), occurred_at=minutes_ago(1),
        payload={"payment": {"id": "p_1"}}, body_sha256="-",
    )  # fmt: skip
    Customer.objects.filter(external_id="optout").update(
        email_consent="revoked", email_consent_source="admin:ops", email_consent_at=minutes_ago(2)
    )
    send = ScheduledSend.objects.get(customer__external_id="cancelled")
    services.scheduled_send_cancel(send_id=send.pk, reason="cancelled by an operator")

    outcome = services.scheduled_sends_dispatch(send_ids=claimed)

    by_customer = {s.customer.external_id: (s.status, s.reason) for s in sends()}
    assert by_customer == {
        "sent": (Status.SENT, ""),
        "paid": (Status.CANCELLED, "cancelled by payment p_1"),
        "optout": (Status.SKIPPED, by_customer["optout"][1]),
        "cancelled": (Status.CANCELLED, "cancelled by an operator"),
    }
    assert by_customer["optout"][1].startswith("no consent: email consent revoked (admin:ops, ")
    # the operator's cancellation came first: that row was not this task's to decide
    assert sorted(outcome.values()) == ["cancelled", "sent", "skipped"]
    assert send.pk not in outcome
    (sent,) = sends(status=Status.SENT)
    assert sent.body == "https://shop.example/checkout/c_sent"
    assert sent.sent_at is not None


def test_an_unexpected_error_on_one_send_keeps_the_others_sent(broken_channel):
    make_journey()
    _checkout("ok_1")
    _checkout("broken", minutes=11.5)
    _checkout("ok_2", minutes=12)
    claimed = services.scheduled_sends_claim_due(limit=10)

    services.scheduled_sends_dispatch(send_ids=claimed)

    by_customer = {s.customer.external_id: s for s in sends()}
    assert by_customer["ok_1"].status == by_customer["ok_2"].status == Status.SENT
    broken = by_customer["broken"]
    assert broken.status == Status.SENDING  # left in flight: recovery hands it out again
    assert broken.reason.startswith("retrying after unexpected error: RuntimeError")
    assert len(broken_channel.calls) == 2


@pytest.fixture
def two_claimed(settings):
    """Two claimed sends of one journey; the journeys' time limit out of the way, so only
    the version query can tell this process that another one changed them."""
    settings.NUDGE_JOURNEY_CACHE_SECONDS = 3600
    journey = make_journey()
    _checkout("a")
    _checkout("b")
    first, second = sorted(services.scheduled_sends_claim_due(limit=10))
    assert services.scheduled_sends_dispatch(send_ids=[first]) == {first: Status.SENT}
    return journey, ScheduledSend.objects.get(pk=first), second


def test_dispatch_renders_a_step_edited_by_another_process(two_claimed):
    journey, first, second = two_claimed
    # as another process's save does: no post_save reaches this process
    JourneyStep.objects.filter(journey=journey).update(
        body="Still there? {{ cart.checkout_url }}", updated_at=timezone.now()
    )
    services.scheduled_sends_dispatch(send_ids=[second])
    assert first.body == "https://shop.example/checkout/c_a"  # the step as it was cached
    assert not first.body.startswith("Still there?")
    assert ScheduledSend.objects.get(pk=second).body.startswith("Still there? ")


def test_dispatch_sees_a_journey_deactivated_by_another_process(two_claimed):
    journey, _, second = two_claimed
    Journey.objects.filter(pk=journey.pk).update(active=False)  # even without updated_at
    assert services.scheduled_sends_dispatch(send_ids=[second]) == {second: Status.CANCELLED}
    assert ScheduledSend.objects.get(pk=second).reason == "cancelled: journey deactivated"


def test_dispatch_reads_the_journeys_only_when_they_changed(two_claimed):
    _, _, second = two_claimed
    with CaptureQueriesContext(connection) as queries:
        services.scheduled_sends_dispatch(send_ids=[second])
    journey_reads = [q["sql"] for q in queries if "journeys_journey" in q["sql"]]
    assert len(journey_reads) == 1 and "count(*)" in journey_reads[0]  # the version query


@pytest.fixture
def five_claimed(settings):
    settings.NUDGE_DISPATCH_CHUNK = 2
    make_journey()
    for user in "abcde":
        _checkout(user)
    claimed = sorted(services.scheduled_sends_claim_due(limit=10))
    assert len(claimed) == 5
    return claimed


def test_a_task_dispatches_its_sends_one_chunk_per_transaction(five_claimed):
    with CaptureQueriesContext(connection) as queries:
        outcomes, left = services.scheduled_sends_dispatch_chunks(
            send_ids=five_claimed, budget_seconds=60
        )
    assert outcomes == {Status.SENT: 5} and left == []
    # the chunk's locking read (FOR UPDATE on PostgreSQL; SQLite locks the whole database)
    locks = [q["sql"] for q in queries if "LEFT JOIN marketing_cart k" in q["sql"]]
    assert len(locks) == 3  # 2 + 2 + 1


def test_a_task_out_of_time_hands_the_rest_to_a_new_task(five_claimed, settings):
    settings.Q_MESSAGING_TIMEOUT = 0  # no time left after the first chunk
    assert tasks.scheduled_sends_dispatch(five_claimed) == {Status.SENT: 2}
    assert [s.status for s in ScheduledSend.objects.order_by("pk")] == [Status.SENT] * 2 + [
        Status.SENDING
    ] * 3  # still claimed: nobody else takes them
    assert queued_tasks() == [(ticker.DISPATCH_TASK, [five_claimed[2:]])]
    assert tasks.scheduled_sends_dispatch(five_claimed[2:]) == {Status.SENT: 2}
