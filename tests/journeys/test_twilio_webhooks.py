"""Twilio's webhooks: status callbacks move a send's delivery status, and STOP/START replies
opt the number out of SMS and back in (issue 13, case 9). Signed as Twilio signs them, with
twilio.request_validator."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest
from django.test import Client
from twilio.request_validator import RequestValidator

from journeys.models import ScheduledSend
from marketing.models import Customer, OptOutSource
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago, sends
from tests.journeys.test_sms_channel import (  # noqa: F401 (fixtures)
    SID,
    TOKEN,
    due_sms,
    provider,
    sms_journey,
    sms_url,
)

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status
PUBLIC = "https://shop.example"
STATUS_PATH = "/api/twilio/status/"
INBOUND_PATH = "/api/twilio/inbound/"


@pytest.fixture
def twilio(provider, sms_url, settings):  # noqa: F811
    settings.NUDGE_PUBLIC_URL = PUBLIC
    sms_url(f"twilio://{SID}:{TOKEN}@{provider.host}?from=+14155550100&scheme=http")
    return provider


def _post(path: str, params: dict[str, str], *, token: str = TOKEN, sign: bool = True) -> Any:
    headers = {}
    if sign:
        signature = RequestValidator(token).compute_signature(PUBLIC + path, params)
        headers["HTTP_X_TWILIO_SIGNATURE"] = signature
    return Client().post(path, params, **headers)


def _sent_sms() -> ScheduledSend:
    sms_journey()
    due_sms()
    assert list(dispatch_due().values()) == [Status.SENT]
    return sends()[0]


def _status(send: ScheduledSend, status: str, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": send.provider_message_id,
        "SmsSid": send.provider_message_id,
        "AccountSid": SID,
        "From": "+14155550100",
        "To": send.recipient,
        "MessageStatus": status,
        "SmsStatus": status,
        "ApiVersion": "2010-04-01",
        **extra,
    }


def test_each_message_asks_for_status_callbacks_on_the_public_url(twilio):
    _sent_sms()

    form = {k: v[0] for k, v in parse_qs(twilio.requests[0]["body"].decode()).items()}
    assert form["StatusCallback"] == PUBLIC + STATUS_PATH


def test_a_delivered_callback_with_a_valid_signature_marks_the_send_delivered(twilio):
    send = _sent_sms()

    response = _post(STATUS_PATH, _status(send, "delivered"))

    assert response.status_code == 200
    send.refresh_from_db()
    assert send.delivery_status == ScheduledSend.DeliveryStatus.DELIVERED


def test_an_undelivered_callback_records_the_error_code(twilio):
    send = _sent_sms()

    assert _post(STATUS_PATH, _status(send, "undelivered", ErrorCode="30003")).status_code == 200

    send.refresh_from_db()
    assert (send.delivery_status, send.delivery_detail) == ("undelivered", "Twilio error 30003")


@pytest.mark.parametrize("how", ["forged", "missing", "altered"])
def test_a_forged_or_missing_signature_is_403_and_writes_nothing(twilio, how):
    send = _sent_sms()
    params = _status(send, "delivered")
    if how == "forged":
        response = _post(STATUS_PATH, params, token="not-the-token")
    elif how == "missing":
        response = _post(STATUS_PATH, params, sign=False)
    else:
        signature = RequestValidator(TOKEN).compute_signature(PUBLIC + STATUS_PATH, params)
        response = Client().post(
            STATUS_PATH, {**params, "MessageStatus": "failed"}, HTTP_X_TWILIO_SIGNATURE=signature
        )

    assert response.status_code == 403
    send.refresh_from_db()
    assert send.delivery_status == ""


def test_an_unknown_message_sid_answers_200_and_changes_nothing(twilio):
    send = _sent_sms()

    params = {**_status(send, "delivered"), "MessageSid": "SM" + "f" * 32}
    assert _post(STATUS_PATH, params).status_code == 200

    send.refresh_from_db()
    assert send.delivery_status == ""


def _reply(body: str, sender: str = "+14155550101") -> Any:
    return _post(
        INBOUND_PATH,
        {
            "MessageSid": "SM" + "1" * 32,
            "AccountSid": SID,
            "From": sender,
            "To": "+14155550100",
            "Body": body,
        },
    )


def test_stop_then_start(twilio):
    sms_journey()
    due_sms("u_1")

    response = _reply(" stop ")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/xml")
    assert b"<Response/>" in response.content
    customer = Customer.objects.get(external_id="u_1")
    assert customer.sms_consent == "revoked"
    assert customer.sms_opted_out_via == OptOutSource.SMS_REPLY
    assert list(dispatch_due().values()) == [Status.SKIPPED]
    assert sends()[0].reason == "opted out of SMS (SMS reply)"
    assert twilio.requests == []

    assert _reply("START").status_code == 200

    customer.refresh_from_db()
    assert customer.sms_consent == "granted"
    # a new checkout of the same customer: its send goes out
    ingest(make_event("e_again", "checkout_started", user="u_1", at=minutes_ago(11), cart="c_2"))
    assert list(dispatch_due().values()) == [Status.SENT]
    assert len(twilio.requests) == 1


def test_an_event_with_sms_consent_does_not_undo_a_stop(twilio):
    sms_journey()
    due_sms("u_1")
    _reply("STOPALL")

    ingest(
        make_event(
            "e_consent",
            "user_registered",
            user="u_1",
            at=minutes_ago(1),
            consent={"email": True, "sms": True},
        )
    )

    assert Customer.objects.get(external_id="u_1").sms_consent == "revoked"


def test_other_replies_are_ignored(twilio):
    sms_journey()
    due_sms("u_1")

    assert _reply("stop please").status_code == 200

    assert Customer.objects.get(external_id="u_1").sms_consent == "granted"
