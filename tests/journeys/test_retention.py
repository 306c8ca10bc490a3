"""Retention (journeys.services.retention, manage.py nudge_purge, its daily schedule): old
event payloads and messages are purged in batches, what is still needed is not, and every
count stays."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Count, Sum
from django.db.models.functions import TruncDay
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import Schedule

from journeys import services, tasks
from journeys.models import ScheduledSend
from journeys.services.retention import (
    PURGE_SCHEDULE_NAME,
    PURGE_TASK,
    retention_purge,
    retention_schedule_ensure,
)
from marketing.models import Event, Payment
from marketing.services import event_ingest
from marketing.validation import event_validate
from tests.journeys.conftest import (
    dispatch_due,
    ingest,
    make_event,
    make_journey,
    minutes_ago,
    queued_tasks,
)
from tests.webhook_client import SECRET, post_signed

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status
LONG_AGO = timezone.now() - timedelta(days=100)


def _backdate(**filters: Any) -> None:
    Event.objects.filter(**filters).update(received_at=LONG_AGO)


@pytest.fixture
def history() -> dict[str, Any]:
    """Old: u_old's checkout and payment, applied, and their sent email; u_waits's checkout,
    whose send is still pending; u_later's checkout, not applied yet. Recent: u_new's
    checkout and sent email."""
    make_journey(exit_on=[])
    first = make_event("co_old", "checkout_started", user="u_old", at=minutes_ago(11), cart="c1")
    ingest(first)
    assert list(dispatch_due().values()) == [Status.SENT]
    ingest(make_event("pay_old", "payment_finished", user="u_old", at=minutes_ago(1), payment="p1"))
    ingest(make_event("co_waits", "checkout_started", user="u_waits", at=minutes_ago(1), cart="c3"))
    late = make_event("co_later", "checkout_started", user="u_later", at=minutes_ago(1), cart="c4")
    data, _ = event_validate(late)
    event_ingest(source=Event.Source.WEBHOOK, data=data, payload=late)  # not applied yet
    # the newest rows (ids grow with time, as the purge's walk expects); co_later stays unapplied
    new = make_event("co_new", "checkout_started", user="u_new", at=minutes_ago(11), cart="c2")
    data, _ = event_validate(new)
    stored = event_ingest(source=Event.Source.WEBHOOK, data=data, payload=new)
    services.events_apply(event_ids=[stored.event.pk])
    assert list(dispatch_due().values()) == [Status.SENT]
    assert Event.objects.get(event_id="co_later").applied_at is None
    _backdate(customer__external_id__in=["u_old", "u_waits", "u_later"])
    ScheduledSend.objects.exclude(customer__external_id="u_new").update(
        created_at=LONG_AGO, updated_at=LONG_AGO
    )
    return {
        "old_send": ScheduledSend.objects.get(customer__external_id="u_old"),
        "first_delivery": first,
    }


def _counts() -> dict[str, Any]:
    """The aggregates retention keeps: sends per journey, status, channel and day, events per
    type and day, revenue."""
    day = TruncDay("due_at")
    sends = ScheduledSend.objects.values("journey", "status", "channel", day=day).annotate(
        n=Count("id"), segments=Sum("segments")
    )
    events = Event.objects.values("type", "customer", day=TruncDay("occurred_at")).annotate(
        n=Count("id")
    )
    return {
        "sends": sorted(map(str, sends)),
        "events": sorted(map(str, events)),
        "revenue": Payment.objects.aggregate(total=Sum("amount"))["total"],
    }


def _payload(event_id: str) -> dict[str, Any]:
    return Event.objects.get(event_id=event_id).payload


def test_nudge_purge_purges_only_old_finished_rows_and_keeps_the_counts(history):
    counts = _counts()
    out = StringIO()

    call_command("nudge_purge", stdout=out)

    assert out.getvalue().startswith("purged 2 event payload(s), 1 message body(ies)")
    assert _payload("co_old") == {
        "id": "co_old",
        "type": "checkout_started",
        "occurred_at": _payload("co_old")["occurred_at"],
        "cart": {"id": "c1"},
        "purged": "retention",
    }
    assert _payload("pay_old")["payment"] == {"id": "p1"}  # the payment was about no cart
    # still needed: a pending send's customer's events, an unapplied event; and recent ones
    for kept in ("co_waits", "co_later", "co_new"):
        assert "user" in _payload(kept), kept
    old = ScheduledSend.objects.get(pk=history["old_send"].pk)
    assert (old.recipient, old.subject, old.body) == ("", "", "")
    assert old.status == Status.SENT and old.updated_at == LONG_AGO
    assert ScheduledSend.objects.get(customer__external_id="u_new").body != ""
    assert _counts() == counts


def test_a_dry_run_counts_and_changes_nothing(history):
    before = list(Event.objects.values_list("payload", flat=True).order_by("pk"))
    out = StringIO()

    call_command("nudge_purge", "--dry-run", stdout=out)

    assert out.getvalue().startswith("would purge 2 event payload(s), 1 message body(ies)")
    assert list(Event.objects.values_list("payload", flat=True).order_by("pk")) == before
    assert ScheduledSend.objects.get(pk=history["old_send"].pk).body != ""


def test_the_purge_goes_in_batches_and_a_cut_short_run_is_taken_up(history, settings):
    settings.NUDGE_RETENTION_BATCH = 1
    event_table = Event._meta.db_table

    with CaptureQueriesContext(connection) as queries:
        first = retention_purge(budget_seconds=0)  # out of time after the first batch

    assert not first.finished and first.event_payloads == 1
    updates = [q["sql"] for q in queries if q["sql"].lstrip().startswith("UPDATE")]
    assert len(updates) == 1 and event_table in updates[0]
    rest = retention_purge(event_after=first.event_after, send_after=first.send_after)
    assert rest.finished and (rest.event_payloads, rest.message_bodies) == (1, 1)
    assert retention_purge().event_payloads == 0  # nothing left: purged once


def test_a_repeat_of_a_purged_event_is_still_a_repeat(history, client, settings):
    """The stored body's hash stays: a redelivery is answered as a repeat (200), neither
    stored again nor a conflict, and brings no personal data back."""
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET]
    retention_purge()

    response = post_signed(client, "/api/events/", history["first_delivery"])

    assert response.status_code == 200
    assert Event.objects.filter(event_id="co_old").count() == 1
    assert "user" not in Event.objects.get(event_id="co_old").payload


def test_the_daily_schedule_exists_once_on_the_messaging_cluster(settings):
    retention_schedule_ensure()
    retention_schedule_ensure()

    (schedule,) = Schedule.objects.filter(name=PURGE_SCHEDULE_NAME)
    assert (schedule.func, schedule.schedule_type, schedule.cluster) == (
        PURGE_TASK,
        Schedule.DAILY,
        "messaging",
    )
    assert schedule.next_run > timezone.now()
    settings.NUDGE_RETENTION_EVENT_PAYLOAD_DAYS = settings.NUDGE_RETENTION_MESSAGE_BODY_DAYS = 0
    assert retention_schedule_ensure() is None
    assert not Schedule.objects.filter(name=PURGE_SCHEDULE_NAME).exists()


def test_the_schedule_s_task_purges(history):
    assert tasks.retention_purge().startswith("purged 2 event payload(s), 1 message body(ies)")


def test_the_task_out_of_time_hands_the_rest_to_a_new_task(history, settings):
    settings.Q_MESSAGING_TIMEOUT = 0  # out of time after the first batch
    settings.NUDGE_RETENTION_BATCH = 1
    queued_tasks()  # what the fixture's events left in the queue

    assert "out of time" in tasks.retention_purge()

    first = Event.objects.get(event_id="co_old")
    assert queued_tasks() == [(PURGE_TASK, [first.pk, 0])]
    assert first.payload["purged"] == "retention"
