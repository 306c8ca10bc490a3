"""Step conditions at dispatch, and the opens and clicks they read from the ESP's tracking
webhook (django-anymail, Postmark's documented Open and Click JSON)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from journeys import services
from journeys.models import JourneyStep, ScheduledSend
from tests.journeys.conftest import (
    dispatch_due,
    ingest,
    make_event,
    make_journey,
    minutes_ago,
    sends,
)

# the tracking webhook's URL, credentials and settings, as the feedback tests post to it
from tests.journeys.test_feedback import URL, _anymail, _basic  # noqa: F401

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status
Delivery = ScheduledSend.DeliveryStatus


def _post(payload: dict[str, Any]) -> Any:
    return Client().post(URL, data=json.dumps(payload), content_type="application/json", **_basic())


def _open(send: ScheduledSend, at: str = "2026-12-02T16:40:00Z") -> dict[str, Any]:
    """Postmark's Open webhook, as its docs show it."""
    return {
        "RecordType": "Open",
        "MessageStream": "outbound",
        "FirstOpen": True,
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X"},
        "Platform": "WebMail",
        "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5)",
        "ReadSeconds": 5,
        "Geo": {"CountryISOCode": "DE", "Country": "Germany", "City": "Berlin"},
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"nudge_send_id": str(send.pk)},
        "ReceivedAt": at,
        "Tag": "cart",
        "Recipient": send.recipient,
    }


def _click(send: ScheduledSend, at: str = "2026-12-02T16:45:00Z") -> dict[str, Any]:
    """Postmark's Click webhook, as its docs show it."""
    return {
        "RecordType": "Click",
        "MessageStream": "outbound",
        "ClickLocation": "HTML",
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X"},
        "Platform": "Desktop",
        "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5)",
        "OriginalLink": "https://shop.example/checkout/c_1",
        "Geo": {"CountryISOCode": "DE", "Country": "Germany", "City": "Berlin"},
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"nudge_send_id": str(send.pk)},
        "ReceivedAt": at,
        "Tag": "cart",
        "Recipient": send.recipient,
    }


def _delivery(send: ScheduledSend) -> dict[str, Any]:
    return {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Recipient": send.recipient,
        "DeliveredAt": "2026-12-02T16:33:54Z",
        "Details": "Test delivery webhook details",
        "Metadata": {"nudge_send_id": str(send.pk)},
    }


def _email_then_sms(condition: dict[str, Any]) -> None:
    """An email 10 minutes after the checkout, then an SMS 20 minutes after it, with a
    condition."""
    make_journey(
        steps=[
            {
                "delay": "PT10M",
                "channel": "email",
                "template": {"subject": "Your cart", "body": "{{ cart.checkout_url }}"},
            },
            {
                "delay": "PT20M",
                "channel": "sms",
                "template": {"body": "Still there? {{ cart.checkout_url }}"},
                "condition": condition,
            },
        ]
    )


def _emails_sent(*users: str) -> dict[str, ScheduledSend]:
    for user in users:
        ingest(
            make_event(f"co_{user}", "checkout_started", user=user, at=minutes_ago(11), cart=user)
        )
    assert set(dispatch_due().values()) == {Status.SENT}
    return {s.customer.external_id: s for s in sends(channel="email")}


def _sms_due_now() -> None:
    ScheduledSend.objects.filter(channel="sms").update(due_at=timezone.now() - timedelta(minutes=1))


def test_an_open_through_the_tracking_webhook_skips_the_sms_and_says_why():
    _email_then_sms({"step": 0, "was": "not opened"})
    emails = _emails_sent("u_open", "u_closed")
    opened = emails["u_open"]

    assert _post(_delivery(opened)).status_code == 200
    assert _post(_open(opened)).status_code == 200

    opened.refresh_from_db()
    assert opened.opened_at == datetime(2026, 12, 2, 16, 40, tzinfo=UTC)
    assert opened.clicked_at is None
    assert opened.delivery_status == Delivery.DELIVERED  # an open is no delivery status
    _sms_due_now()
    dispatch_due()
    outcome = {s.customer.external_id: (s.status, s.reason) for s in sends(channel="sms")}
    assert outcome == {
        "u_open": (Status.SKIPPED, "condition: step 0 (Email) not opened false"),
        "u_closed": (Status.SENT, ""),
    }


def test_a_click_counts_as_an_open_and_the_first_of_each_is_kept():
    _email_then_sms({"step": 0, "was": "clicked"})
    email = _emails_sent("u_1")["u_1"]

    assert _post(_click(email, at="2026-12-02T16:45:00Z")).status_code == 200
    assert _post(_open(email, at="2026-12-02T16:50:00Z")).status_code == 200  # later: kept
    assert _post(_open(email, at="2026-12-02T16:41:00Z")).status_code == 200  # earlier: wins

    email.refresh_from_db()
    assert email.clicked_at == datetime(2026, 12, 2, 16, 45, tzinfo=UTC)
    assert email.opened_at == datetime(2026, 12, 2, 16, 41, tzinfo=UTC)
    assert email.delivery_status == ""  # no delivery reported: none made up
    _sms_due_now()
    assert list(dispatch_due().values()) == [Status.SENT]


def test_a_bounce_stays_a_bounce_after_an_open():
    _email_then_sms({"step": 0, "was": "opened"})
    email = _emails_sent("u_1")["u_1"]
    services.send_delivery_record(
        provider="anymail.postmark",
        provider_message_id="",
        status="bounced",
        detail="hard",
        occurred_at=timezone.now(),
        send_id=email.pk,
    )

    services.send_engagement_record(
        provider="anymail.postmark",
        provider_message_id="",
        engagement="opened",
        occurred_at=timezone.now(),
        send_id=email.pk,
    )

    email.refresh_from_db()
    assert (email.delivery_status, email.opened_at is not None) == (Delivery.BOUNCED, True)


def test_an_engagement_for_an_unknown_message_is_answered_and_changes_nothing(caplog):
    assert (
        services.send_engagement_record(
            provider="anymail.postmark",
            provider_message_id="nope",
            engagement="clicked",
            occurred_at=timezone.now(),
        )
        is None
    )
    assert "engagement feedback for an unknown message" in caplog.text
    with pytest.raises(ValueError, match="unknown engagement 'read'"):
        services.send_engagement_record(
            provider="x", provider_message_id="", engagement="read", occurred_at=timezone.now()
        )


@pytest.mark.parametrize(
    ("was", "opened", "expected"),
    [
        ("sent", False, Status.SENT),
        ("not sent", False, Status.SKIPPED),
        ("opened", False, Status.SKIPPED),
        ("opened", True, Status.SENT),
        ("not opened", True, Status.SKIPPED),
        ("not clicked", True, Status.SENT),
    ],
)
def test_each_state_of_an_earlier_step(was, opened, expected):
    _email_then_sms({"step": 0, "was": was})
    email = _emails_sent("u_1")["u_1"]
    if opened:
        _post(_open(email))
    _sms_due_now()

    assert list(dispatch_due().values()) == [expected]


def test_conditions_on_the_customer_and_cart_combine_with_steps():
    _email_then_sms(
        {
            "any": [
                {"step": 0, "was": "clicked"},
                {"field": "cart.total", "op": ">=", "value": 500},
            ]
        }
    )
    _emails_sent("u_1")
    _sms_due_now()

    dispatch_due()

    (sms,) = sends(channel="sms")
    assert (sms.status, sms.reason) == (
        Status.SKIPPED,
        "condition: step 0 (Email) clicked or cart total ≥ 500 false",
    )


def test_a_take_reads_the_earlier_steps_once_whatever_its_size(settings):
    settings.NUDGE_DISPATCH_CHUNK = 100
    settings.NUDGE_DISPATCH_INFLIGHT = 100
    _email_then_sms({"step": 0, "was": "not opened"})
    users = [f"u_{n}" for n in range(12)]
    emails = _emails_sent(*users)
    for user in users[:5]:
        _post(_open(emails[user]))
    _sms_due_now()
    claimed = services.scheduled_sends_claim_due(limit=100)

    with CaptureQueriesContext(connection) as queries:
        outcomes = services.scheduled_sends_dispatch(send_ids=claimed)

    lookups = [q["sql"] for q in queries if '"enrollment_id" IN' in q["sql"]]
    assert len(lookups) == 1, lookups
    assert sorted(outcomes.values()) == [Status.SENT] * 7 + [Status.SKIPPED] * 5


def test_a_take_without_step_conditions_reads_nothing_more():
    make_journey()
    ingest(make_event("co_1", "checkout_started", at=minutes_ago(11), cart="c_1"))
    claimed = services.scheduled_sends_claim_due(limit=10)

    with CaptureQueriesContext(connection) as queries:
        assert services.scheduled_sends_dispatch(send_ids=claimed) == {claimed[0]: Status.SENT}

    assert not [q for q in queries if '"enrollment_id" IN' in q["sql"]]


def test_a_step_condition_saved_past_validation_skips_the_send_and_says_why():
    _email_then_sms({"step": 0, "was": "opened"})
    # the SMS step's condition, broken by a raw UPDATE
    JourneyStep.objects.filter(position=1).update(
        condition={"step": 5, "was": "opened"}, updated_at=timezone.now()
    )
    _emails_sent("u_1")
    _sms_due_now()

    assert list(dispatch_due().values()) == [Status.SKIPPED]
    (sms,) = sends(channel="sms")
    assert sms.reason == (
        "condition invalid: conditions.step: 5 is not an earlier step of this journey (earlier: 0)"
    )
