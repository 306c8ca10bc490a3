"""One-click unsubscribe (RFC 8058): the signed link every marketing email carries, its page,
the opt-out it records, and the sends it stops from its answer on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import pytest
from django.core import mail, signing
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from journeys import services as services_journeys
from journeys.channels import OutgoingMessage, get_channel
from journeys.models import ScheduledSend
from marketing import services
from marketing.models import Customer, OptOutSource
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago, sends
from tests.journeys.test_engine import make_journey
from tests.journeys.test_race import _someone_waits_for_a_row_lock
from tests.marketing.test_profiles import BASE, BODIES, event

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture(autouse=True)
def _email_channel(settings) -> Iterator[None]:
    """The real email channel (EmailChannel over the tests' locmem backend), with a public URL."""
    settings.NUDGE_PUBLIC_URL = "https://shop.example"
    get_channel.cache_clear()
    yield
    get_channel.cache_clear()


@pytest.fixture
def browserless() -> Client:
    """A mail provider's one-click POST: no cookie, no session, and CSRF checks enforced."""
    return Client(enforce_csrf_checks=True)


def _pending_email(user: str = "u_1") -> Customer:
    """A customer with an email due now (a checkout 11 minutes ago, a step after 10)."""
    make_journey(
        steps=[
            {
                "delay": "PT10M",
                "channel": "email",
                "template": {
                    "subject": "Your cart",
                    "body": "{{ cart.checkout_url }}\nUnsubscribe: {{ unsubscribe_url }}",
                },
            }
        ]
    )
    ingest(make_event(f"co_{user}", "checkout_started", user=user, at=minutes_ago(11), cart="c_1"))
    return Customer.objects.get(external_id=user)


def _path(customer: Customer) -> str:
    return urlparse(services.unsubscribe_url(customer_id=customer.pk)).path


def test_a_one_click_post_with_no_cookie_opts_out_and_the_pending_email_is_skipped(
    browserless,
):
    customer = _pending_email()
    assert browserless.cookies == {}  # nothing to authenticate with but the token

    response = browserless.post(_path(customer), ONE_CLICK)

    assert response.status_code == 200
    customer.refresh_from_db()
    assert customer.email_consent == "revoked"
    assert customer.email_opted_out_at is not None
    assert customer.email_opted_out_via == OptOutSource.UNSUBSCRIBE_LINK
    assert list(dispatch_due().values()) == [Status.SKIPPED]
    (send,) = sends()
    assert send.reason == "opted out of email (unsubscribe link)"
    assert mail.outbox == []


def test_the_dispatched_email_carries_both_headers_and_its_link_unsubscribes(browserless):
    customer = _pending_email()

    assert list(dispatch_due().values()) == [Status.SENT]

    (email,) = mail.outbox
    message = email.message()
    url = services.unsubscribe_url(customer_id=customer.pk)
    assert url.startswith("https://shop.example/api/unsubscribe/")
    assert message["List-Unsubscribe"] == f"<{url}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert f"Unsubscribe: {url}" in email.body  # the templates' {{ unsubscribe_url }}
    link = message["List-Unsubscribe"].strip("<>")
    assert browserless.post(urlparse(link).path, ONE_CLICK).status_code == 200
    customer.refresh_from_db()
    assert customer.email_consent == "revoked"


def test_the_page_confirms_then_offers_to_subscribe_again(browserless):
    customer = _pending_email()
    path = _path(customer)

    page = browserless.get(path)
    assert page.status_code == 200
    assert b"Unsubscribe" in page.content and b"u_1@example.com" in page.content
    customer.refresh_from_db()
    assert customer.email_consent == "granted"  # a GET (a link scanner, say) changes nothing

    done = browserless.post(path, {"action": "unsubscribe"})
    assert done.status_code == 200 and b"Subscribe again" in done.content
    customer.refresh_from_db()
    assert customer.email_consent == "revoked"

    again = browserless.post(path, {"action": "resubscribe"})
    assert again.status_code == 200 and b"subscribed again" in again.content
    customer.refresh_from_db()
    assert customer.email_consent == "granted"
    assert customer.email_opted_out_at is None and customer.email_opted_out_via == ""
    assert list(dispatch_due().values()) == [Status.SENT]


def _forged(customer: Customer) -> list[str]:
    token = services.unsubscribe_token(customer_id=customer.pk)
    value, _, signature = token.rpartition(":")
    other = signing.dumps({"c": customer.pk, "ch": "email"}, salt="another.salt")
    return [
        f"{value}:{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",  # altered signature
        signing.dumps({"c": customer.pk + 1, "ch": "email"}, salt="x") + "x",  # forged
        other,  # signed for another purpose
        f"{signing.dumps({'c': customer.pk + 1, 'ch': 'email'})[:-3]}:{signature}",  # spliced
        "not-a-token",
    ]


@pytest.mark.parametrize("method", ["get", "post"])
def test_a_forged_or_altered_token_is_refused_and_changes_nothing(browserless, method):
    customer = _pending_email()

    for token in _forged(customer):
        path = reverse("nudge:unsubscribe", args=[token])
        response = getattr(browserless, method)(path, ONE_CLICK)
        assert response.status_code == 400, token
        assert b"not valid" in response.content

    customer.refresh_from_db()
    assert customer.email_consent == "granted" and customer.email_opted_out_at is None
    assert list(dispatch_due().values()) == [Status.SENT]


def test_a_valid_token_of_no_customer_answers_404(browserless):
    token = services.unsubscribe_token(customer_id=10**9)
    path = reverse("nudge:unsubscribe", args=[token])

    assert browserless.post(path, ONE_CLICK).status_code == 404
    assert browserless.get(path).status_code == 404


def _opted_out_by_link(external_id: str) -> None:
    customer = Customer.objects.get(external_id=external_id)
    services.customer_unsubscribe(
        customer_id=customer.pk, channel="email", source=OptOutSource.UNSUBSCRIBE_LINK
    )


@pytest.mark.parametrize("body", list(BODIES))
def test_a_later_event_with_email_consent_does_not_undo_the_link(body):
    """Every body that writes a profile from events (services.profiles) keeps an opt-out
    through the link: the customer's own word wins over the shop's later consent=true. Other
    fields still change, and a re-subscribe through the page lets events decide again."""
    apply = BODIES[body]
    apply([event(1, {"id": "u_1", "consent": {"email": True}}, 0)])
    _opted_out_by_link("u_1")
    later = {"id": "u_1", "first_name": "Ana", "consent": {"email": True, "sms": False}}
    assert apply([event(2, later, 10)]) == ["stored"]

    customer = Customer.objects.get(external_id="u_1")
    assert customer.email_consent == "revoked"
    assert customer.first_name == "Ana" and customer.sms_consent == "revoked"

    services.customer_resubscribe(customer_id=customer.pk, channel="email")
    # an event that occurred before the re-subscribe does not undo it (consent is ordered by
    # time); events after it decide again
    apply([event(3, {"id": "u_1", "consent": {"email": False}}, 20)])
    assert Customer.objects.get(external_id="u_1").email_consent == "granted"
    # a minute or two after the re-subscribe (BASE, fixed when the module was imported, is
    # about a day ago)
    a_day_later = int((timezone.now() - BASE).total_seconds() // 60) + 2
    apply([event(4, {"id": "u_1", "consent": {"email": False}}, a_day_later)])
    customer = Customer.objects.get(external_id="u_1")
    assert (customer.email_consent, customer.email_consent_source) == ("revoked", "event:e_4")
    apply([event(5, {"id": "u_1", "consent": {"email": True}}, a_day_later + 1)])
    assert Customer.objects.get(external_id="u_1").email_consent == "granted"


def test_unsubscribing_twice_keeps_the_first_time():
    customer = _pending_email()
    first = services.customer_unsubscribe(
        customer_id=customer.pk, channel="email", source=OptOutSource.UNSUBSCRIBE_LINK
    )
    again = services.customer_unsubscribe(
        customer_id=customer.pk, channel="email", source=OptOutSource.UNSUBSCRIBE_LINK
    )
    assert again.email_opted_out_at == first.email_opted_out_at


def test_only_email_has_an_unsubscribe_link():
    customer = _pending_email()
    with pytest.raises(ValueError, match="only email"):
        services.customer_unsubscribe(
            customer_id=customer.pk, channel="sms", source=OptOutSource.UNSUBSCRIBE_LINK
        )


def test_an_empty_public_url_is_warned_about(settings):
    from marketing.checks import public_url_check

    assert public_url_check(None) == []
    settings.NUDGE_PUBLIC_URL = ""
    (warning,) = public_url_check(None)
    assert warning.id == "nudge.W002"


class HeldChannel:
    """A provider call that lasts until the test releases it."""

    in_call = threading.Event()
    release = threading.Event()
    returned_at: list[float] = []

    def send(self, message: OutgoingMessage) -> str:
        HeldChannel.in_call.set()
        assert HeldChannel.release.wait(timeout=20)
        HeldChannel.returned_at.append(time.monotonic())
        return "held"


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL")
def test_the_opt_out_answers_after_the_call_in_flight_and_later_sends_are_skipped(settings):
    """A one-click POST while a chunk calls the provider for this customer waits for that
    call and answers after it; from the answer on, the customer's sends are skipped."""
    settings.NUDGE_CHANNELS = {**settings.NUDGE_CHANNELS, "email": f"{__name__}.HeldChannel"}
    get_channel.cache_clear()
    HeldChannel.in_call.clear()
    HeldChannel.release.clear()
    HeldChannel.returned_at = []
    customer = _pending_email()
    (send_id,) = services_journeys.scheduled_sends_claim_due(limit=10)
    answered: list[tuple[int, float]] = []
    errors: list[BaseException] = []

    def in_thread(work: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # surfaced below
                errors.append(exc)
            finally:
                connections.close_all()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def unsubscribe() -> None:
        response = Client(enforce_csrf_checks=True).post(_path(customer), ONE_CLICK)
        answered.append((response.status_code, time.monotonic()))

    dispatcher = in_thread(lambda: services_journeys.scheduled_send_dispatch(send_id=send_id))
    assert HeldChannel.in_call.wait(timeout=10)
    clicker = in_thread(unsubscribe)
    deadline = time.monotonic() + 10
    while not _someone_waits_for_a_row_lock():
        assert not errors and not answered, (errors, answered)
        assert time.monotonic() < deadline, "the opt-out never waited for the chunk"
        time.sleep(0.05)
    HeldChannel.release.set()
    dispatcher.join(timeout=30)
    clicker.join(timeout=30)

    assert not errors, errors
    ((status, answered_at),) = answered
    assert status == 200
    assert HeldChannel.returned_at[0] < answered_at
    assert ScheduledSend.objects.get(pk=send_id).status == Status.SENT
    ingest(make_event("co_again", "checkout_started", at=minutes_ago(11), cart="c_2"))
    assert list(dispatch_due().values()) == [Status.SKIPPED]
    assert ScheduledSend.objects.exclude(pk=send_id).get().reason == (
        "opted out of email (unsubscribe link)"
    )
    get_channel.cache_clear()


def test_the_fast_url_and_token_are_what_reverse_and_signing_dumps_give(settings):
    """unsubscribe_url() reverses once and reuses one signer (dispatch builds one per email):
    what it gives must stay what reverse() and signing.dumps()/loads() give."""
    settings.NUDGE_PUBLIC_URL = "https://shop.example/"
    url = services.unsubscribe_url(customer_id=42)
    token = urlparse(url).path.rstrip("/").rpartition("/")[2]
    assert url == "https://shop.example" + reverse("nudge:unsubscribe", args=[token])
    assert signing.loads(token, salt="nudge.unsubscribe") == {"c": 42, "ch": "email"}
    assert services.unsubscribe_token_read(token) == (42, "email")
    settings.SECRET_KEY = "another-key-" + "x" * 50  # a new key signs with a new signer
    other = services.unsubscribe_token(customer_id=42)
    with pytest.raises(signing.BadSignature):
        signing.loads(token, salt="nudge.unsubscribe")
    assert signing.loads(other, salt="nudge.unsubscribe") == {"c": 42, "ch": "email"}
