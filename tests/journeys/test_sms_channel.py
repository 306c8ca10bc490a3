"""The SMS channel (journeys.channels.sms) against a real HTTP server on loopback that speaks
Twilio's Messages API and the generic JSON protocol; phone numbers; segment counts."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from journeys import services
from journeys.channels import ChannelError, OutgoingMessage, get_channel
from journeys.channels.sms import SmsChannel, phone_normalise, sms_segments
from journeys.models import ScheduledSend
from journeys.selectors import known_event_types
from journeys.specs import journey_spec_parse
from marketing.models import Customer
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago, sends

Status = ScheduledSend.Status
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SID, TOKEN = "AC0123456789abcdef0123456789abcdef", "token123"


# --- the fake provider ----------------------------------------------------------------------


class FakeProvider:
    """One loopback HTTP server for both protocols. Each request is recorded; the answer is
    the next scripted one, else acceptance (201 and a Twilio message for Messages.json,
    200 {"id": …} for anything else)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str], Any]] = []
        self.delay = 0.0
        self.accepted = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                provider.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                time.sleep(provider.delay)
                status, headers, payload = (
                    provider.answers.pop(0)
                    if provider.answers
                    else provider.accept(self.path, body)
                )
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accept(self, path: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        self.accepted += 1
        n = self.accepted
        if path.endswith("/Messages.json"):
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            return 201, {}, twilio_message(f"SM{n:032d}", form)
        return 200, {}, {"id": f"msg_{n}"}

    def answer(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.answers.append((status, headers or {}, payload))


def twilio_message(sid: str, form: dict[str, str]) -> dict[str, Any]:
    return {
        "sid": sid,
        "account_sid": SID,
        "to": form.get("To"),
        "from": form.get("From"),
        "messaging_service_sid": form.get("MessagingServiceSid"),
        "body": form.get("Body"),
        "status": "queued",
        "num_segments": "1",
        "direction": "outbound-api",
        "date_created": format_datetime(datetime.now(tz=UTC), usegmt=True),
        "uri": f"/2010-04-01/Accounts/{SID}/Messages/{sid}.json",
    }


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def sms_url(settings: Any) -> Iterator[Any]:
    """Set NUDGE_SMS_URL (and the generic backend's secret) for this test's channel."""

    def use(url: str) -> None:
        settings.NUDGE_SMS_URL = url
        settings.NUDGE_SMS_HTTP_SECRET = SECRET
        get_channel.cache_clear()

    settings.NUDGE_CHANNELS = {**settings.NUDGE_CHANNELS, "sms": "journeys.channels.sms.SmsChannel"}
    yield use
    get_channel.cache_clear()


def sms_journey(body: str = "Your cart: {{ cart.checkout_url }}") -> None:
    spec = {
        "slug": "sms",
        "name": "SMS",
        "trigger": "checkout_started",
        "exit_on": ["payment_finished"],
        "dedupe": "first",
        "reentry": "every",
        "max_lateness": "PT2H",
        "steps": [{"delay": "PT10M", "channel": "sms", "template": {"body": body}}],
    }
    parsed, errors = journey_spec_parse(spec, known_types=known_event_types())
    assert not errors
    services.journey_save_spec(spec=parsed)


def due_sms(user: str = "u_1") -> None:
    ingest(make_event(f"e_{user}", "checkout_started", user=user, at=minutes_ago(11), cart=user))


def redispatch_after_lease() -> dict[int, str]:
    """What recovery does once the lease is over: hand the in-flight sends out again."""
    ScheduledSend.objects.filter(status=Status.SENDING).update(
        claimed_at=timezone.now() - timedelta(hours=1)
    )
    recovered = services.scheduled_sends_recover(lease=timedelta(minutes=2), limit=100)
    return {pk: services.scheduled_send_dispatch(send_id=pk) for pk in recovered}


def message(body: str = "hello", recipient: str = "+14155550101") -> OutgoingMessage:
    return OutgoingMessage(send_id=7, channel="sms", recipient=recipient, subject="", body=body)


# --- the generic JSON backend ---------------------------------------------------------------


@pytest.mark.django_db
def test_generic_backend_posts_a_signed_json_sms_with_an_idempotency_key(provider, sms_url):
    sms_url(f"http://{provider.host}/sms")
    sms_journey()
    due_sms()

    assert list(dispatch_due().values()) == ["sent"]

    (request,) = provider.requests
    send = sends()[0]
    assert request["path"] == "/sms"
    payload = Webhook(SECRET).verify(request["body"].decode(), request["headers"])
    assert payload == {
        "to": "+14155550101",
        "body": "Your cart: https://shop.example/checkout/u_1",
        "send_id": send.pk,
        "idempotency_key": f"nudge-send-{send.pk}",
    }
    assert request["headers"]["idempotency-key"] == f"nudge-send-{send.pk}"
    assert (send.status, send.provider_message_id, send.recipient) == (
        Status.SENT,
        "msg_1",
        "+14155550101",
    )
    assert send.segments == 1


@pytest.mark.django_db
def test_generic_backend_transient_503_then_accepted_sends_one_message(provider, sms_url):
    sms_url(f"http://{provider.host}/sms")
    sms_journey()
    due_sms()
    provider.answer(503, {"message": "try later"}, {"Retry-After": "7"})

    dispatch_due()
    send = sends()[0]
    assert send.status == Status.SENDING
    assert send.reason.startswith(
        "retrying after provider error: SMS provider answered 503: try later (next try at "
    )
    assert (send.provider, send.last_error) == ("http", "SMS provider answered 503: try later")
    assert redispatch_after_lease() == {send.pk: "sent"}

    first, second = provider.requests
    assert first["headers"]["idempotency-key"] == second["headers"]["idempotency-key"]
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert sends()[0].provider_message_id == "msg_1"  # the only accepted request


@pytest.mark.django_db
def test_a_retry_after_longer_than_the_lease_holds_the_send_back_that_long(
    provider, sms_url, settings
):
    settings.NUDGE_SEND_LEASE_SECONDS = 120
    sms_url(f"http://{provider.host}/sms")
    sms_journey()
    due_sms()
    provider.answer(429, {"error": "slow down"}, {"Retry-After": "600"})
    before = timezone.now()

    dispatch_due()
    send = sends()[0]
    assert send.status == Status.SENDING
    # recovery takes sends claimed a lease ago: this one is claimed 600 - 120 s ahead
    assert timedelta(seconds=470) < send.claimed_at - before < timedelta(seconds=490)
    lease = timedelta(seconds=settings.NUDGE_SEND_LEASE_SECONDS)
    assert services.scheduled_sends_recover(lease=lease, limit=100) == []
    assert len(provider.requests) == 1


@pytest.mark.django_db
def test_a_retry_after_shorter_than_the_lease_is_the_next_try(provider, sms_url, settings):
    settings.NUDGE_SEND_LEASE_SECONDS = 120
    settings.NUDGE_SEND_RETRY_BASE_SECONDS = 1  # the backoff's jitter stays under 7 s
    sms_url(f"http://{provider.host}/sms")
    sms_journey()
    due_sms()
    provider.answer(503, {"message": "try later"}, {"Retry-After": "7"})
    before = timezone.now()

    dispatch_due()
    # the lease ends (and recovery hands it out) at the provider's Retry-After
    retry_at = sends()[0].claimed_at + timedelta(seconds=settings.NUDGE_SEND_LEASE_SECONDS)
    assert timedelta(seconds=6.5) < retry_at - before < timedelta(seconds=8)


@pytest.mark.django_db
def test_transient_failures_back_off_exponentially_with_full_jitter(provider, sms_url, settings):
    settings.NUDGE_SEND_RETRY_BASE_SECONDS = 10
    settings.NUDGE_SEND_RETRY_MAX_SECONDS = 25
    settings.NUDGE_SEND_MAX_ATTEMPTS = 10
    lease = timedelta(seconds=settings.NUDGE_SEND_LEASE_SECONDS)
    sms_url(f"http://{provider.host}/sms")
    sms_journey()
    due_sms()
    delays = []
    for attempt in range(4):
        provider.answer(503, {"message": "down"})
        before = timezone.now()
        if attempt == 0:
            dispatch_due()
        else:  # the retry is due: recovery hands it out
            ScheduledSend.objects.update(claimed_at=timezone.now() - lease - timedelta(seconds=1))
            recovered = services.scheduled_sends_recover(lease=lease, limit=10)
            services.scheduled_sends_dispatch(send_ids=recovered)
        delays.append((sends()[0].claimed_at + lease - before).total_seconds())
    # attempt n waits a random time up to min(25, 10 * 2**(n - 1)) seconds
    for ceiling, delay in zip([10, 20, 25, 25], delays, strict=True):
        assert -0.5 < delay < ceiling + 0.5
    assert len(provider.requests) == 4
    assert sends()[0].attempts == 4
    assert len(sends()[0].attempt_log) == 4


@pytest.mark.django_db
def test_a_retry_later_than_the_max_lateness_fails_now(provider, sms_url, settings):
    sms_url(f"http://{provider.host}/sms")
    sms_journey()
    due_sms()  # the journey's max lateness is 2 h
    provider.answer(429, {"error": "slow down"}, {"Retry-After": str(3 * 3600)})

    dispatch_due()
    send = sends()[0]
    assert send.status == Status.FAILED
    assert send.reason == (
        "failed: provider error: SMS provider answered 429: slow down; "
        "a retry would be later than the step's max lateness"
    )


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_generic_backend_transient_statuses_carry_retry_after(provider, sms_url, status):
    sms_url(f"http://{provider.host}/sms")
    later = format_datetime(datetime.now(tz=UTC) + timedelta(seconds=120), usegmt=True)
    provider.answer(status, {"error": "slow down"}, {"Retry-After": "30"})
    provider.answer(status, {"error": "slow down"}, {"Retry-After": later})
    provider.answer(status, b"")

    retry_afters = []
    for _ in range(3):
        with pytest.raises(ChannelError) as caught:
            SmsChannel().send(message())
        assert caught.value.retryable
        retry_afters.append(caught.value.retry_after)

    assert retry_afters[0] == 30
    assert 100 < retry_afters[1] <= 120
    assert retry_afters[2] is None


@pytest.mark.django_db
def test_generic_backend_permanent_400_fails_at_once_with_the_providers_message(provider, sms_url):
    sms_url(f"http://{provider.host}/sms")
    sms_journey()
    due_sms()
    provider.answer(400, {"message": "number is on the carrier's block list"})

    assert list(dispatch_due().values()) == ["failed"]

    send = sends()[0]
    assert send.reason == (
        "failed: provider error: SMS provider answered 400: number is on the carrier's block list"
    )
    assert redispatch_after_lease() == {}
    assert len(provider.requests) == 1


def test_generic_backend_2xx_without_an_id_is_transient(provider, sms_url):
    sms_url(f"http://{provider.host}/sms")
    provider.answer(202, {"status": "queued"})

    with pytest.raises(ChannelError, match="answered 202 without an id") as caught:
        SmsChannel().send(message())
    assert caught.value.retryable


def test_generic_backend_timeout_and_refused_connection_are_transient(provider, sms_url):
    sms_url(f"http://{provider.host}/sms?timeout=0.2")
    provider.delay = 1.0
    with pytest.raises(ChannelError, match="timed out") as caught:
        SmsChannel().send(message())
    assert caught.value.retryable

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    sms_url(f"http://127.0.0.1:{port}/sms")
    with pytest.raises(ChannelError, match="unreachable") as caught:
        SmsChannel().send(message())
    assert caught.value.retryable


# --- Twilio ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_twilio_backend_posts_from_to_body_with_basic_auth(provider, sms_url):
    sms_url(f"twilio://{SID}:{TOKEN}@{provider.host}?from=+14155550100&scheme=http")
    sms_journey()
    due_sms()

    assert list(dispatch_due().values()) == ["sent"]

    (request,) = provider.requests
    assert request["path"] == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert request["headers"]["authorization"] == (
        "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    )
    form = {k: v[0] for k, v in parse_qs(request["body"].decode()).items()}
    assert form == {
        "From": "+14155550100",
        "To": "+14155550101",
        "Body": "Your cart: https://shop.example/checkout/u_1",
    }
    send = sends()[0]
    assert (send.status, send.provider_message_id) == (Status.SENT, f"SM{1:032d}")


def test_twilio_backend_sends_through_a_messaging_service(provider, sms_url):
    sms_url(f"twilio://{SID}:{TOKEN}@{provider.host}?messaging_service=MG123&scheme=http")

    assert SmsChannel().send(message()) == f"SM{1:032d}"

    form = {k: v[0] for k, v in parse_qs(provider.requests[0]["body"].decode()).items()}
    assert form["MessagingServiceSid"] == "MG123"
    assert "From" not in form


@pytest.mark.django_db
def test_twilio_backend_transient_then_accepted_and_permanent_21211(provider, sms_url):
    sms_url(f"twilio://{SID}:{TOKEN}@{provider.host}?from=%2B14155550100&scheme=http")
    sms_journey()
    due_sms("u_1")
    due_sms("u_2")
    provider.answer(503, {"code": 20500, "message": "Internal Server Error", "status": 503})
    provider.answer(
        400,
        {
            "code": 21211,
            "message": "The 'To' number +14155550102 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400,
        },
    )

    first, second = sends()
    assert dispatch_due() == {first.pk: "sending", second.pk: "failed"}
    assert sends()[1].reason == (
        "failed: provider error: Twilio 400 (code 21211): "
        "The 'To' number +14155550102 is not a valid phone number."
    )
    assert redispatch_after_lease() == {first.pk: "sent"}
    assert len(provider.requests) == 3


def test_twilio_backend_429_is_retryable(provider, sms_url):
    sms_url(f"twilio://{SID}:{TOKEN}@{provider.host}?from=+14155550100&scheme=http")
    provider.answer(429, {"code": 20429, "message": "Too Many Requests", "status": 429})

    with pytest.raises(ChannelError, match="Too Many Requests") as caught:
        SmsChannel().send(message())
    assert caught.value.retryable


# --- phone numbers --------------------------------------------------------------------------


@pytest.mark.django_db
def test_invalid_phone_numbers_are_skipped_with_the_reason_and_never_sent(provider, sms_url):
    sms_url(f"http://{provider.host}/sms")
    sms_journey()
    for user in ("u_1", "u_2", "u_3"):
        due_sms(user)
    Customer.objects.filter(external_id="u_1").update(phone="+1234567")
    Customer.objects.filter(external_id="u_2").update(phone="+447700900123")

    assert sorted(dispatch_due().values()) == ["sent", "skipped", "skipped"]

    assert [(s.status, s.reason) for s in sends()] == [
        (Status.SKIPPED, "invalid phone number: +1234567 (too short)"),
        (Status.SKIPPED, "invalid phone number: +447700900123 (not a number in use)"),
        (Status.SENT, ""),
    ]
    assert [json.loads(r["body"])["to"] for r in provider.requests] == ["+14155550101"]
    assert redispatch_after_lease() == {}


def test_phone_normalise_gives_e164_or_says_why_not():
    assert phone_normalise("+14155550101") == "+14155550101"
    assert phone_normalise("+1 (415) 555-0101") == "+14155550101"
    assert phone_normalise("+33 6 12 34 56 78") == "+33612345678"
    for raw in ("+1234567", "+447700900123", "not a phone", "14155550101", "+999123456789"):
        with pytest.raises(ValueError, match=raw.replace("+", r"\+")):
            phone_normalise(raw)


# --- segments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 0),
        ("Hi Ana, your cart is waiting", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("é@£$¥ÄÖÑÜ§¿" * 10, 1),  # GSM-7's own accented letters: 110 septets
        ("€" * 80, 1),  # extension characters take two septets: 160
        ("€" * 81, 2),
        ("{}" * 40 + "a", 2),
        # an escape pair is not split across segments: 306 septets, 2 segments by count,
        # but 152 | 2 + 151 | 1
        ("a" * 152 + "€" + "a" * 152, 3),
        ("a" * 152 + "€" + "a" * 151, 2),
        ("ç", 1),  # not in GSM-7 (only Ç is): UCS-2
        ("ç" * 70, 1),
        ("ç" * 71, 2),
        ("Привет, " * 20, 3),  # 160 UCS-2 units, 67 per segment
        ("😀" * 35, 1),  # an emoji is two UTF-16 units: 70
        ("😀" * 36, 2),
        # a surrogate pair is not split: 66 + (2 + 65) + 1
        ("a" * 66 + "😀" + "a" * 66, 3),
    ],
)
def test_sms_segments(text, segments):
    assert sms_segments(text) == segments


@pytest.mark.django_db
def test_segments_are_recorded_on_the_send(provider, sms_url):
    sms_url(f"http://{provider.host}/sms")
    sms_journey(body="{{ customer.first_name }}, 😀 " + "x" * 100)
    due_sms()

    dispatch_due()

    assert sends()[0].segments == 2


# --- development backends -------------------------------------------------------------------


@pytest.mark.django_db
def test_file_backend_appends_one_json_line_per_sms(sms_url, tmp_path: Path):
    sms_url(f"file://{tmp_path}/outbox")
    sms_journey()
    due_sms("u_1")
    due_sms("u_2")

    assert list(dispatch_due().values()) == ["sent", "sent"]

    lines = [
        json.loads(line) for line in (tmp_path / "outbox" / "sms.jsonl").read_text().splitlines()
    ]
    first, second = sends()
    assert [(line["send_id"], line["to"], line["segments"]) for line in lines] == [
        (first.pk, "+14155550101", 1),
        (second.pk, "+14155550101", 1),
    ]
    assert lines[0]["body"] == "Your cart: https://shop.example/checkout/u_1"
    assert (first.provider_message_id, first.body) == (f"file:{first.pk}", lines[0]["body"])


@pytest.mark.django_db
def test_console_backend_prints_the_sms(sms_url, capsys):
    sms_url("console:")
    sms_journey()
    due_sms()

    dispatch_due()

    send = sends()[0]
    out = capsys.readouterr().out
    assert f"SMS to +14155550101 (send {send.pk}, 1 segment(s))" in out
    assert "Your cart: https://shop.example/checkout/u_1" in out
    assert send.provider_message_id == f"console:{send.pk}"


def test_console_is_the_default(settings):
    from nudge.conf import DEFAULTS

    assert DEFAULTS["NUDGE_SMS_URL"] == "console:"
    assert DEFAULTS["NUDGE_CHANNELS"]["sms"] == "journeys.channels.sms.SmsChannel"


# --- the system check -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "smtp://example.com",
        "sms-console",
        "file://relative/dir",
        "twilio://api.twilio.com?from=+14155550100",
        f"twilio://{SID}:{TOKEN}@api.twilio.com",
        f"twilio://{SID}:{TOKEN}@api.twilio.com?from=+14155550100&messaging_service=MG1",
        "https://sms.example/send?timeout=soon",
    ],
)
def test_a_bad_sms_url_is_a_system_check_error_naming_the_accepted_forms(settings, url):
    settings.NUDGE_SMS_URL = url
    settings.NUDGE_SMS_HTTP_SECRET = SECRET

    errors = [e for e in run_checks() if e.id == "nudge.E120"]

    assert len(errors) == 1
    assert "console:, file:///dir, twilio://" in errors[0].msg
    with pytest.raises(SystemCheckError, match=r"nudge\.E120"):
        call_command("check")


def test_the_check_error_does_not_show_the_twilio_auth_token(settings):
    settings.NUDGE_SMS_URL = f"twilio://{SID}:{TOKEN}@api.twilio.com"

    (error,) = [e for e in run_checks() if e.id == "nudge.E120"]

    assert TOKEN not in error.msg
    assert f"twilio://{SID}:***@api.twilio.com" in error.msg


@pytest.mark.parametrize("secret", ["", "whsec_not-base64!"])
def test_the_generic_backend_needs_its_secret(settings, secret):
    settings.NUDGE_SMS_URL = "https://sms.example/send"
    settings.NUDGE_SMS_HTTP_SECRET = secret

    assert [e.id for e in run_checks() if e.id.startswith("nudge.E12")] == ["nudge.E121"]


@pytest.mark.parametrize(
    "url",
    [
        "console:",
        "file:///var/tmp/sms",
        f"twilio://{SID}:{TOKEN}@api.twilio.com?from=+14155550100",
        f"twilio://{SID}:{TOKEN}@api.twilio.com?messaging_service=MG1",
        "https://sms.example/send?timeout=10&connect_timeout=2",
    ],
)
def test_the_accepted_sms_urls_pass_the_check(settings, url):
    settings.NUDGE_SMS_URL = url
    settings.NUDGE_SMS_HTTP_SECRET = SECRET

    assert [e.id for e in run_checks() if e.id.startswith("nudge.E12")] == []
