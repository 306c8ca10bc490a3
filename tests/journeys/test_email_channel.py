"""The email channel against a real SMTP server (aiosmtpd on loopback): the dispatch path end to
end, one connection per chunk, permanent and transient SMTP failures, and the layout template."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import environ
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from django.core import mail
from django.utils import timezone

from journeys import services
from journeys.channels import OutgoingMessage, get_channel
from journeys.channels.email import EmailChannel, email_html
from journeys.models import ScheduledSend
from marketing.models import Customer
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago, sends
from tests.journeys.test_engine import make_journey

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status

BODY = "Hello {{ customer.first_name }} & co,\nyour cart <is> waiting:\n\n{{ cart.checkout_url }}"


class RecordingHandler:
    """Accepts every message except to addresses starting with "unknown"."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("unknown"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CountingController(Controller):
    """aiosmtpd makes one SMTP protocol object per TCP connection: counts them."""

    connections = 0

    def factory(self) -> SMTP:
        self.connections += 1
        return super().factory()


class SMTPServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.handler = RecordingHandler()
        self.connections = 0
        self._controller: CountingController | None = None

    def start(self) -> None:
        self._controller = CountingController(self.handler, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        self._controller.connections = 0  # start() made one to check that the server is up

    def stop(self) -> None:
        if self._controller is not None:
            self.connections += self._controller.connections
            self._controller.stop()
            self._controller = None

    def connections_made(self) -> int:
        running = self._controller.connections if self._controller is not None else 0
        return self.connections + running


@pytest.fixture
def smtp(settings) -> Iterator[SMTPServer]:
    """A running SMTP server, and the settings EMAIL_URL=smtp://127.0.0.1:<port> gives."""
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command
    server = SMTPServer(_free_port())
    for name, value in environ.Env.email_url_config(f"smtp://127.0.0.1:{server.port}").items():
        if name.startswith("EMAIL_"):
            setattr(settings, name, value)
    settings.EMAIL_TIMEOUT = 5
    settings.NUDGE_EMAIL_FROM = "Shop <hello@shop.example>"
    settings.NUDGE_CHANNELS = {
        **settings.NUDGE_CHANNELS,
        "email": "journeys.channels.email.EmailChannel",
    }
    get_channel.cache_clear()
    server.start()
    yield server
    server.stop()
    get_channel.cache_clear()


def _email_journey() -> None:
    make_journey(
        steps=[
            {
                "delay": "PT10M",
                "channel": "email",
                "template": {"subject": "Your cart, {{ customer.first_name }}", "body": BODY},
            }
        ]
    )


def _checkout(user: str, **user_fields: Any) -> None:
    ingest(
        make_event(
            f"co_{user}", "checkout_started", user=user, at=minutes_ago(11), cart=f"c_{user}",
            first_name="Tom", **user_fields,
        )
    )  # fmt: skip


def test_a_due_email_arrives_once_as_text_and_html_from_the_nudge_sender(smtp):
    _email_journey()
    _checkout("u_1")

    assert list(dispatch_due().values()) == ["sent"]

    (message,) = smtp.handler.messages
    assert smtp.handler.envelopes == [("hello@shop.example", ["u_1@example.com"])]
    assert message["From"] == "Shop <hello@shop.example>"
    assert message["To"] == "u_1@example.com"
    assert message["Subject"] == "Your cart, Tom"
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content().replace("\r\n", "\n").rstrip("\n") == (
        "Hello Tom & co,\nyour cart <is> waiting:\n\nhttps://shop.example/checkout/c_u_1"
    )
    assert html.get_content_type() == "text/html"
    html_text = html.get_content()
    assert "<p>Hello Tom &amp; co,<br>your cart &lt;is&gt; waiting:</p>" in html_text
    assert '<a href="https://shop.example/checkout/c_u_1"' in html_text
    assert "<title>Your cart, Tom</title>" in html_text

    (send,) = sends()
    assert send.status == Status.SENT
    assert send.provider_message_id == message["Message-ID"].strip()  # unfolded
    assert send.provider_message_id.endswith("@shop.example>")
    assert f"nudge-send-{send.pk}" in send.provider_message_id


def test_a_task_of_emails_reuses_its_smtp_connections(smtp, settings):
    settings.NUDGE_EMAIL_MAX_CONNECTIONS = 1
    _email_journey()
    users = [f"u_{n}" for n in range(5)]
    for user in users:
        _checkout(user)
    claimed = services.scheduled_sends_claim_due(limit=10)

    outcome = services.scheduled_sends_dispatch(send_ids=claimed)

    assert sorted(outcome.values()) == ["sent"] * 5
    assert sorted(rcpt for _, (rcpt,) in smtp.handler.envelopes) == sorted(
        f"{user}@example.com" for user in users
    )
    assert smtp.connections_made() == 1
    assert len({s.provider_message_id for s in sends()}) == 5


def test_emails_in_flight_at_once_open_no_more_connections_than_allowed(smtp, settings):
    settings.NUDGE_EMAIL_MAX_CONNECTIONS = 3
    _email_journey()
    users = [f"u_{n}" for n in range(12)]
    for user in users:
        _checkout(user)
    claimed = services.scheduled_sends_claim_due(limit=20)

    outcome = services.scheduled_sends_dispatch(send_ids=claimed)

    assert sorted(outcome.values()) == ["sent"] * 12
    assert len(smtp.handler.envelopes) == 12
    assert 1 <= smtp.connections_made() <= 3


def test_a_chunk_with_no_email_to_send_opens_no_connection(smtp):
    _email_journey()
    _checkout("u_1")
    Customer.objects.update(email_consent="revoked")
    claimed = services.scheduled_sends_claim_due(limit=10)

    assert list(services.scheduled_sends_dispatch(send_ids=claimed).values()) == ["skipped"]
    assert smtp.connections_made() == 0


def test_a_recipient_refused_for_good_fails_at_once_with_the_servers_reason(smtp, settings):
    settings.NUDGE_EMAIL_MAX_CONNECTIONS = 1
    _email_journey()
    _checkout("unknown", email="unknown@example.com")
    _checkout("u_2")
    claimed = services.scheduled_sends_claim_due(limit=10)

    outcome = services.scheduled_sends_dispatch(send_ids=claimed)

    refused, delivered = sends()
    assert outcome == {refused.pk: "failed", delivered.pk: "sent"}
    assert refused.attempts == 1
    assert refused.reason == (
        "failed: provider error: SMTP recipient refused: unknown@example.com: "
        "550 5.1.1 <unknown@example.com>: Recipient address rejected: User unknown"
    )
    # the same connection carried on with the next email of the chunk
    assert [rcpts for _, rcpts in smtp.handler.envelopes] == [["u_2@example.com"]]
    assert smtp.connections_made() == 1
    assert services.scheduled_sends_recover(lease=timedelta(0), limit=10) == []


def test_a_mail_server_that_is_down_leaves_the_sends_in_flight_until_it_is_back(smtp, settings):
    settings.NUDGE_EMAIL_MAX_CONNECTIONS = 1
    _email_journey()
    _checkout("u_1")
    _checkout("u_2")
    smtp.stop()

    assert sorted(dispatch_due().values()) == ["sending", "sending"]
    for send in sends():
        assert send.status == Status.SENDING
        assert send.reason.startswith(
            f"retrying after provider error: mail server unreachable (127.0.0.1:{smtp.port}): "
        )

    smtp.start()
    ScheduledSend.objects.update(claimed_at=timezone.now() - timedelta(hours=1))
    recovered = services.scheduled_sends_recover(lease=timedelta(minutes=2), limit=10)
    assert sorted(services.scheduled_sends_dispatch(send_ids=recovered).values()) == [
        "sent",
        "sent",
    ]

    assert sorted(rcpt for _, (rcpt,) in smtp.handler.envelopes) == [
        "u_1@example.com",
        "u_2@example.com",
    ]
    assert [(s.status, s.attempts) for s in sends()] == [(Status.SENT, 2), (Status.SENT, 2)]
    assert smtp.connections_made() == 1


def test_a_send_outside_a_chunk_opens_and_closes_its_own_connection(smtp):
    channel = EmailChannel()
    message = OutgoingMessage(
        send_id=7, channel="email", recipient="a@example.com", subject="Hi", body="One"
    )

    first, second = channel.send(message), channel.send(message)

    assert len(smtp.handler.messages) == 2
    assert smtp.connections_made() == 2
    assert first != second  # a new Message-ID for each attempt, both carrying the send's key
    assert "nudge-send-7" in first


def test_the_default_email_channel_sends_through_email_backend(settings):
    """The settings' default channel for email is EmailChannel (tests use the locmem
    backend: the email lands in django.core.mail.outbox)."""
    assert settings.NUDGE_CHANNELS["email"] == "journeys.channels.email.EmailChannel"
    get_channel.cache_clear()
    _email_journey()
    _checkout("u_1")

    assert list(dispatch_due().values()) == ["sent"]

    (email,) = mail.outbox
    assert email.to == ["u_1@example.com"]
    assert email.alternatives[0][1] == "text/html"
    get_channel.cache_clear()


def test_the_layout_template_wraps_the_escaped_body():
    html = email_html(subject="Tom & Jerry", body="a < b\nhttps://shop.example/x?a=1&b=2")

    assert html.startswith("<!DOCTYPE html>")
    assert "<title>Tom &amp; Jerry</title>" in html
    assert "<p>a &lt; b<br>" in html
    assert 'href="https://shop.example/x?a=1&amp;b=2"' in html


def test_a_shop_overrides_the_layout_template(settings, tmp_path):
    override = tmp_path / "nudge" / "email" / "layout.html"
    override.parent.mkdir(parents=True)
    override.write_text("<main data-shop>{{ subject }}|{{ body_html }}|{{ body }}</main>")
    settings.TEMPLATES = [
        {**settings.TEMPLATES[0], "DIRS": [tmp_path, *settings.TEMPLATES[0]["DIRS"]]}
    ]

    html = email_html(subject="S", body="one & two")

    assert html == "<main data-shop>S|<p>one &amp; two</p>|one &amp; two</main>"
