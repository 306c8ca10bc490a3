"""ESP delivery feedback through django-anymail's tracking webhook (Postmark's documented
JSON, with anymail's basic auth): the send's delivery status, suppression on a hard bounce,
and the sends that suppression stops."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from journeys.channels import get_channel
from journeys.models import ScheduledSend
from journeys.services.feedback import send_delivery_record
from marketing.models import Customer, OptOutSource, Suppression
from marketing.services.suppression import address_digest
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago, sends
from tests.journeys.test_engine import make_journey

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status
URL = "/api/anymail/postmark/tracking/"
AUTH = "hook:s3cret"


@pytest.fixture(autouse=True)
def _anymail(settings: Any) -> Iterator[None]:
    settings.ANYMAIL = {"WEBHOOK_SECRET": AUTH}
    settings.NUDGE_PUBLIC_URL = "https://shop.example"
    get_channel.cache_clear()
    yield
    get_channel.cache_clear()


def _basic(auth: str = AUTH) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(auth.encode()).decode()}


def _post(payload: dict[str, Any], auth: str = AUTH) -> Any:
    return Client().post(
        URL, data=json.dumps(payload), content_type="application/json", **_basic(auth)
    )


def _sent_email(user: str = "u_1", email: str = "ana@example.com") -> ScheduledSend:
    make_journey()
    ingest(
        make_event(
            f"co_{user}", "checkout_started", user=user, at=minutes_ago(11), cart=user, email=email
        )
    )
    dispatch_due()
    (send,) = sends(customer__external_id=user)
    assert send.status == Status.SENT
    return send


def _delivery(send: ScheduledSend, **extra: Any) -> dict[str, Any]:
    """Postmark's Delivery webhook, as its docs show it."""
    return {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Recipient": send.recipient,
        "Tag": "welcome-email",
        "DeliveredAt": "2026-12-02T16:33:54.9070259Z",
        "Details": "Test delivery webhook details",
        "Metadata": {"nudge_send_id": str(send.pk)},
        **extra,
    }


def _bounce(send: ScheduledSend, **extra: Any) -> dict[str, Any]:
    """Postmark's Bounce webhook (a hard bounce), as its docs show it."""
    return {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": 4323372036854775807,
        "Type": "HardBounce",
        "TypeCode": 1,
        "Name": "Hard bounce",
        "Tag": "Invitation",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"nudge_send_id": str(send.pk)},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": send.recipient,
        "From": "nudge@shop.example",
        "BouncedAt": "2026-12-02T16:40:00.000Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Hi",
        **extra,
    }


def test_a_postmark_delivery_webhook_marks_the_send_delivered():
    send = _sent_email()

    response = _post(_delivery(send))

    assert response.status_code == 200
    send.refresh_from_db()
    assert send.delivery_status == ScheduledSend.DeliveryStatus.DELIVERED
    assert send.delivery_updated_at is not None
    assert send.delivery_detail == "Test delivery webhook details"  # Postmark's Details


def test_without_the_send_id_the_send_is_found_by_provider_and_message_id():
    send = _sent_email()
    ScheduledSend.objects.filter(pk=send.pk).update(
        provider="anymail.postmark", provider_message_id="883953f4-6105-42a2-a16a-77a8eac79483"
    )

    assert _post(_delivery(send, Metadata={})).status_code == 200

    send.refresh_from_db()
    assert send.delivery_status == ScheduledSend.DeliveryStatus.DELIVERED


def test_a_hard_bounce_suppresses_the_address_for_every_customer_who_holds_it():
    send = _sent_email()

    assert _post(_bounce(send)).status_code == 200

    send.refresh_from_db()
    assert send.delivery_status == ScheduledSend.DeliveryStatus.BOUNCED
    (suppression,) = Suppression.objects.all()
    assert (suppression.channel, suppression.address, suppression.reason) == (
        "email",
        address_digest("email", "ana@example.com"),  # stored hashed, never as written
        Suppression.Reason.BOUNCED,
    )
    assert suppression.source == "provider:anymail.postmark"
    # the same customer again, and another customer with the same address
    for user, event_id in (("u_1", "co_again"), ("u_2", "co_u_2")):
        ingest(
            make_event(
                event_id,
                "checkout_started",
                user=user,
                at=minutes_ago(11),
                cart=f"{user}_2",
                email="ANA@example.com",
            )
        )
    assert sorted(dispatch_due().values()) == [Status.SKIPPED, Status.SKIPPED]
    reasons = {s.reason for s in sends(status=Status.SKIPPED)}
    assert reasons == {
        "suppressed: hard bounce "
        "(The server was unable to deliver your message (ex: unknown user).)"
    }
    # a second bounce changes nothing
    assert _post(_bounce(send)).status_code == 200
    assert Suppression.objects.count() == 1


def test_a_late_delivered_after_a_bounce_keeps_the_bounce():
    send = _sent_email()
    _post(_bounce(send))

    _post(_delivery(send, DeliveredAt="2026-12-02T17:00:00Z"))

    send.refresh_from_db()
    assert send.delivery_status == ScheduledSend.DeliveryStatus.BOUNCED


def test_an_older_event_does_not_replace_a_newer_one():
    send = _sent_email()
    occurred = send.sent_at
    send_delivery_record(
        provider="x",
        provider_message_id="",
        status="delivered",
        detail="",
        occurred_at=occurred,
        send_id=send.pk,
    )
    send_delivery_record(
        provider="x",
        provider_message_id="",
        status="failed",
        detail="old",
        occurred_at=occurred.replace(year=2020),
        send_id=send.pk,
    )
    send.refresh_from_db()
    assert send.delivery_status == "delivered"


def test_a_spam_complaint_suppresses_with_its_reason():
    send = _sent_email()
    complaint = _bounce(send, RecordType="SpamComplaint", Type="SpamComplaint", Description="")

    assert _post(complaint).status_code == 200

    send.refresh_from_db()
    assert send.delivery_status == ScheduledSend.DeliveryStatus.COMPLAINED
    assert Suppression.objects.get().reason == Suppression.Reason.COMPLAINED


def test_an_unsubscribe_at_the_esp_opts_the_customer_out_of_email():
    send = _sent_email()
    change = {
        "RecordType": "SubscriptionChange",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "ServerID": 23,
        "MessageStream": "outbound",
        "ChangedAt": "2026-12-02T16:50:00Z",
        "Recipient": send.recipient,
        "Origin": "Recipient",
        "SuppressSending": True,
        "SuppressionReason": "ManualSuppression",
        "Tag": "welcome-email",
        "Metadata": {"nudge_send_id": str(send.pk)},
    }

    assert _post(change).status_code == 200

    customer = Customer.objects.get(pk=send.customer_id)
    assert customer.email_consent == "revoked"
    assert customer.email_opted_out_via == OptOutSource.ESP_UNSUBSCRIBE


@pytest.mark.parametrize("auth", ["hook:wrong", None])
def test_wrong_or_missing_basic_auth_is_refused_and_writes_nothing(auth):
    send = _sent_email()
    payload = json.dumps(_bounce(send))
    client = Client()
    headers = _basic(auth) if auth else {}

    response = client.post(URL, data=payload, content_type="application/json", **headers)

    assert response.status_code == 400  # anymail: AnymailWebhookValidationFailure
    send.refresh_from_db()
    assert send.delivery_status == ""
    assert not Suppression.objects.exists()


def test_an_unknown_message_id_answers_200_and_changes_nothing():
    send = _sent_email()

    response = _post(_bounce(send, Metadata={}, MessageID="not-ours"))

    assert response.status_code == 200
    send.refresh_from_db()
    assert send.delivery_status == ""
    assert not Suppression.objects.exists()


def test_dispatch_reads_the_suppressions_of_a_chunk_in_one_query():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from journeys import services
    from marketing.services import address_suppress

    make_journey()
    for n in range(5):
        ingest(
            make_event(
                f"co_{n}", "checkout_started", user=f"u_{n}", at=minutes_ago(11), cart=f"c_{n}"
            )
        )
    address_suppress(channel="email", address="U_3@example.com", reason="complained")
    claimed = services.scheduled_sends_claim_due(limit=100)

    with CaptureQueriesContext(connection) as queries:
        statuses = services.scheduled_sends_dispatch(send_ids=claimed)

    assert sorted(statuses.values()) == [Status.SENT] * 4 + [Status.SKIPPED]
    suppression_queries = [q for q in queries if Suppression._meta.db_table in q["sql"]]
    assert len(suppression_queries) == 1
    (skipped,) = sends(status=Status.SKIPPED)
    assert (skipped.customer.external_id, skipped.reason) == ("u_3", "suppressed: spam complaint")
