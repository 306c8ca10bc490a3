"""Email through an ESP with django-anymail, against a local fake of the ESP's HTTP API
(Postmark's /email endpoint on loopback): anymail's real backend builds and posts each
message, and the send row records the ESP's message id, or its error."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.utils import timezone

from journeys import services
from journeys.channels import get_channel
from journeys.models import ScheduledSend
from tests.journeys.conftest import dispatch_due, sends
from tests.journeys.test_email_channel import _checkout, _email_journey

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status


class FakePostmark:
    """Postmark's POST /email: answers in its format; `answers` queues non-default replies
    (status, body) for the next requests, and `accepted` keeps what it accepted."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, Any]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "token": self.headers.get(
                    "X-Postmark-Server-Token"), "body": body})  # fmt: skip
                if fake.answers:
                    status, answer = fake.answers.pop(0)
                else:
                    fake.accepted.append(body)
                    status, answer = (
                        200,
                        {
                            "To": body["To"],
                            "SubmittedAt": timezone.now().isoformat(),
                            "MessageID": f"pm-{len(fake.accepted)}",
                            "ErrorCode": 0,
                            "Message": "OK",
                        },
                    )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def postmark(settings) -> Iterator[FakePostmark]:
    fake = FakePostmark()
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "server-token", "POSTMARK_API_URL": fake.url}
    settings.NUDGE_EMAIL_FROM = "Shop <hello@shop.example>"
    settings.NUDGE_PUBLIC_URL = "https://shop.example"
    settings.NUDGE_CHANNELS = {
        **settings.NUDGE_CHANNELS,
        "email": "journeys.channels.email.EmailChannel",
    }
    get_channel.cache_clear()
    yield fake
    fake.close()
    get_channel.cache_clear()


def _retry_now() -> dict[int, str]:
    ScheduledSend.objects.update(claimed_at=timezone.now() - timedelta(hours=1))
    recovered = services.scheduled_sends_recover(lease=timedelta(minutes=2), limit=10)
    return services.scheduled_sends_dispatch(send_ids=recovered)


def test_an_email_goes_to_the_esp_as_text_and_html_with_one_click_unsubscribe(postmark):
    _email_journey()
    _checkout("u_1")

    assert list(dispatch_due().values()) == ["sent"]

    (request,) = postmark.requests
    assert request["path"] == "/email"
    assert request["token"] == "server-token"
    body = request["body"]
    assert body["From"] == "Shop <hello@shop.example>"
    assert body["To"] == "u_1@example.com"
    assert body["Subject"] == "Your cart, Tom"
    assert "Hello Tom & co," in body["TextBody"]
    assert "<p>Hello Tom &amp; co,<br>your cart &lt;is&gt; waiting:</p>" in body["HtmlBody"]
    headers = {h["Name"]: h["Value"] for h in body["Headers"]}
    assert headers["List-Unsubscribe"].startswith("<https://shop.example/")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    (send,) = sends()
    assert (send.status, send.provider, send.provider_message_id) == (
        Status.SENT,
        "anymail.postmark",
        "pm-1",
    )


def test_an_esp_error_500_is_retried_and_the_email_is_accepted_once(postmark):
    _email_journey()
    _checkout("u_1")
    postmark.answers.append((500, {"ErrorCode": 0, "Message": "Internal Server Error"}))

    assert list(dispatch_due().values()) == ["sending"]
    (send,) = sends()
    assert send.reason.startswith("retrying after provider error: ESP error:")
    assert send.attempts == 1

    assert list(_retry_now().values()) == ["sent"]
    assert len(postmark.requests) == 2
    assert len(postmark.accepted) == 1
    (send,) = sends()
    assert (send.status, send.attempts, send.provider_message_id) == (Status.SENT, 2, "pm-1")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        # anymail reads the address: AnymailRecipientsRefused
        ("Invalid 'To' address: 'u_1@example.com'.", "ESP refused the recipient"),
        # it cannot, and returns without raising: the status code still says no
        ("Invalid 'To' address", "ESP error: HTTP 422: "),
    ],
)
def test_an_esp_refusal_422_fails_the_send_at_once_with_the_esps_reason(postmark, message, reason):
    _email_journey()
    _checkout("u_1")
    postmark.answers.append((422, {"ErrorCode": 300, "Message": message}))

    assert list(dispatch_due().values()) == ["failed"]
    (send,) = sends()
    assert send.status == Status.FAILED
    assert reason in send.reason
    assert send.attempts == 1
    assert not postmark.accepted
