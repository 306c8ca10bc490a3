"""Email subjects are rendered header-safe: CR, LF and other control characters in a value
(a customer's first name from the shop's events) become spaces, so no header is injected."""

from __future__ import annotations

import pytest

from journeys.models import ScheduledSend
from journeys.rendering import header_safe, render_subject
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago, sends
from tests.journeys.test_email_channel import _email_journey, smtp  # noqa: F401 (a fixture)

INJECTION = "Tom\r\nBcc: victim@evil.example\r\nX-Injected: yes"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Your cart, Tom", "Your cart, Tom"),
        ("Tom\r\nBcc: x@evil.example", "Tom Bcc: x@evil.example"),
        ("a\rb\nc\td\x00e\x0bf\x1fg\x7fh\x85i\u2028j\u2029k", "a b c d e f g h i j k"),
        ("  many    spaces \n\n here  ", "many spaces here"),
        ("Straße, ½ price — 🎉", "Straße, ½ price — 🎉"),
    ],
)
def test_header_safe_leaves_one_clean_line(text, expected):
    assert header_safe(text) == expected


def test_a_rendered_subject_keeps_no_line_break_from_a_value():
    subject = render_subject(
        "Your cart, {{ customer.first_name }}", {"customer": {"first_name": INJECTION}}
    )

    assert subject == "Your cart, Tom Bcc: victim@evil.example X-Injected: yes"


@pytest.mark.django_db
def test_a_first_name_with_crlf_reaches_the_smtp_server_as_one_subject_header(smtp):  # noqa: F811
    _email_journey()
    ingest(
        make_event(
            "co_1", "checkout_started", user="u_1", at=minutes_ago(11), cart="c_1",
            first_name=INJECTION,
        )
    )  # fmt: skip

    assert list(dispatch_due().values()) == ["sent"]

    (message,) = smtp.handler.messages
    assert smtp.handler.envelopes == [("hello@shop.example", ["u_1@example.com"])]
    assert message.get_all("Subject") == ["Your cart, Tom Bcc: victim@evil.example X-Injected: yes"]
    assert message.get_all("Bcc") is None
    assert message.get_all("X-Injected") is None
    (send,) = sends()
    assert send.status == ScheduledSend.Status.SENT
    assert send.subject == "Your cart, Tom Bcc: victim@evil.example X-Injected: yes"
