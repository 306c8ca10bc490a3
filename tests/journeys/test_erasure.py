"""A customer's erasure (journeys.services.erasure, manage.py customer_erase, the customer
list's admin action): every trace of their personal data goes, their pending sends are
cancelled, and no later event, for their id or with their email or phone, messages them."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.contrib.messages import get_messages
from django.core import mail, serializers
from django.core.management import CommandError, call_command
from django.test import Client

from journeys import services
from journeys.models import Enrollment, ProviderState, ScheduledSend
from journeys.services.enrolment import enrolment_plan_apply
from journeys.services.erasure import customer_erase
from journeys.services.feedback import send_delivery_record
from marketing.models import Cart, Customer, Event, Payment, Suppression
from marketing.services import marketer_user_ensure
from tests.journeys.conftest import dispatch_due, ingest, make_event, make_journey, minutes_ago
from tests.webhook_client import SECRET, post_signed

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status

USER = "shopper-7781"
EMAIL = "Zeb.Quill@Example.org"
PHONE = "+14155550199"
NAME = "Zebediah"
CART = "cart-4711"
# every personal value the customer gave, as it may be stored (an email lower-cased too)
PERSONAL = [USER, EMAIL, EMAIL.lower(), PHONE, NAME, f"https://shop.example/checkout/{CART}"]
TABLES = [
    Customer,
    Event,
    Cart,
    Payment,
    Enrollment,
    ScheduledSend,
    Suppression,
    LogEntry,
    ProviderState,
]


def everything() -> str:
    """Every row of every table that may hold personal data, as text."""
    return "\n".join(
        serializers.serialize("json", model._default_manager.all()) for model in TABLES
    )


def traces(text: str | None = None) -> list[str]:
    text = everything() if text is None else text
    return [value for value in PERSONAL if value in text]


@pytest.fixture(autouse=True)
def _signed_events(settings: Any) -> None:
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET]
    settings.NUDGE_PUBLIC_URL = "https://shop.example"


def _journeys() -> None:
    """One email now (10 min after checkout), and a second one an hour later; payments exit."""
    make_journey(
        steps=[
            {
                "delay": "PT10M",
                "channel": "email",
                "template": {
                    "subject": "{{ customer.first_name }}, your cart",
                    "body": "Hi {{ customer.first_name }}: {{ cart.checkout_url }}",
                },
            },
            {
                "delay": "PT1H",
                "channel": "email",
                "template": {"subject": "Still there?", "body": "{{ cart.checkout_url }}"},
            },
        ]
    )


def _checkout(user: str = USER, *, email: str = EMAIL, phone: str = PHONE, event_id: str = "evt-a"):
    return ingest(
        make_event(
            event_id,
            "checkout_started",
            user=user,
            at=minutes_ago(11),
            cart=CART if user == USER else f"cart-{user}",
            email=email,
            phone=phone,
            first_name=NAME,
        )
    )


@pytest.fixture
def customer_with_history() -> Customer:
    """A customer with a sent email (with delivery feedback naming their address), a pending
    one, a payment-free cart, a (hashed) suppression of their address and an admin history."""
    _journeys()
    _checkout()
    ingest(
        make_event(
            "evt-b",
            "user_registered",
            user=USER,
            at=minutes_ago(5),
            email=EMAIL,
            phone=PHONE,
            first_name=NAME,
        )
    )
    assert list(dispatch_due().values()) == [Status.SENT]
    sent = ScheduledSend.objects.get(status=Status.SENT)
    assert NAME in sent.body and sent.recipient == EMAIL
    send_delivery_record(
        provider="anymail.postmark",
        provider_message_id="m-1",
        status="bounced",
        detail=f"550 5.1.1 <{EMAIL}>: user unknown",
        occurred_at=sent.sent_at,
        send_id=sent.pk,
    )
    ProviderState.objects.create(name="anymail.postmark", last_error=f"422 bad address {EMAIL}")
    customer = Customer.objects.get(external_id=USER)
    LogEntry.objects.log_actions(
        user_id=User.objects.create_superuser("root", password="x").pk,
        queryset=[customer],
        action_flag=CHANGE,
        change_message="[]",
        single_object=True,
    )
    mail.outbox.clear()
    # the suppression list never held the address: its keyed hash, a detail without it
    (bounce,) = Suppression.objects.all()
    assert bounce.address.startswith("hmac-sha256:") and EMAIL.lower() not in bounce.detail
    assert set(traces()) == set(PERSONAL) - {EMAIL.lower()}
    return customer


def test_erasure_removes_every_trace_and_cancels_what_was_still_to_send(customer_with_history):
    out = StringIO()

    call_command("customer_erase", USER, stdout=out)

    assert traces() == []
    assert out.getvalue().strip() == (
        f"{USER}: erased customers 1, events 2, carts 1, "
        "suppressions added 4, admin log 1, sends 2 (1 cancelled), provider errors 1"
    )
    sends = {s.status: s for s in ScheduledSend.objects.all()}
    assert sends[Status.CANCELLED].reason == "cancelled: customer erased"
    sent = sends[Status.SENT]
    assert (sent.recipient, sent.subject, sent.body, sent.delivery_detail) == ("", "", "", "")
    assert sent.delivery_status == "bounced" and sent.attempt_log[0]["outcome"] == "sent"
    customer = Customer.objects.get()
    assert customer.external_id == f"erased:{customer.pk}" and customer.erased_at is not None
    # the events keep what the counts and the exit rule read, not who
    event = Event.objects.get(event_id="evt-a")
    assert event.payload == {
        "id": "evt-a",
        "type": "checkout_started",
        "occurred_at": event.payload["occurred_at"],
        "cart": {"id": CART},
        "purged": "erasure",
    }
    assert Cart.objects.get().total == 120
    # the hashed entries: no value, only keyed hashes
    entries = list(Suppression.objects.values_list("reason", "address"))
    # the erasure's four (the id on both channels, the email, the phone) and the bounce's
    assert sorted(reason for reason, _ in entries) == ["bounced", *["erased"] * 4]
    assert all(a.startswith("hmac-sha256:") and len(a) == 12 + 64 for _, a in entries)


def test_a_claimed_send_is_not_sent_after_the_erasure(customer_with_history):
    ScheduledSend.objects.filter(status=Status.PENDING).update(due_at=minutes_ago(1))
    (claimed,) = services.scheduled_sends_claim_due(limit=10)

    customer_erase(external_id=USER)

    assert services.scheduled_sends_dispatch(send_ids=[claimed]) == {}
    assert ScheduledSend.objects.get(pk=claimed).status == Status.CANCELLED
    assert mail.outbox == []


def test_a_late_event_for_the_erased_id_is_never_messaged(customer_with_history, client):
    customer_erase(external_id=USER)
    late = make_event(
        "evt-late",
        "checkout_started",
        user=USER,
        at=minutes_ago(11),
        cart="cart-late",
        email="new.address@example.org",
        first_name=NAME,
    )

    assert post_signed(client, "/api/events/", late).status_code == 202
    services.events_apply_pending()
    dispatch_due()

    assert mail.outbox == []
    assert ScheduledSend.objects.filter(status=Status.SENT).count() == 1  # the one from before
    assert not ScheduledSend.objects.filter(status=Status.PENDING).exists()
    # the late event's customer was erased in turn: no trace of them either
    assert traces() == []
    assert "new.address@example.org" not in everything()
    assert Customer.objects.filter(erased_at__isnull=True).count() == 0


@pytest.mark.parametrize("channel", ["email", "sms"])
def test_a_new_customer_with_the_erased_email_or_phone_is_skipped(customer_with_history, channel):
    customer_erase(external_id=USER)
    if channel == "sms":
        make_journey(
            slug="sms",
            steps=[{"delay": "PT10M", "channel": "sms", "template": {"body": "Come back"}}],
        )
    # another shop account, with the erased address (in other case) or number
    _checkout("someone-else", email=EMAIL.upper(), phone=PHONE, event_id="evt-other")

    dispatch_due()

    other = ScheduledSend.objects.filter(customer__external_id="someone-else", channel=channel)
    due = [s for s in other if s.status != Status.PENDING]
    assert due and {(s.status, s.reason) for s in due} == {
        (Status.SKIPPED, "suppressed: erased customer")
    }
    assert mail.outbox == []


def test_erasing_again_changes_nothing_and_says_so(customer_with_history):
    customer_erase(external_id=USER)
    before = everything()
    out = StringIO()

    call_command("customer_erase", USER, stdout=out)

    assert out.getvalue().strip() == f"{USER}: already erased, nothing left to erase"
    assert everything() == before


def test_a_dry_run_changes_nothing(customer_with_history):
    before = everything()
    out = StringIO()

    call_command("customer_erase", USER, "--dry-run", stdout=out)

    assert out.getvalue().startswith(f"{USER}: would erase customers 1, events 2, carts 1")
    assert everything() == before


def test_an_unknown_id_is_an_error():
    with pytest.raises(CommandError, match="no customer with the external id"):
        call_command("customer_erase", "nobody", stdout=StringIO(), stderr=StringIO())


# --- the admin action --------------------------------------------------------------------

CHANGELIST = "/admin/marketing/customer/"


def _staff(*perms: str) -> Client:
    user = User.objects.create_user("privacy", password="unused-password", is_staff=True)
    for codename in perms:
        user.user_permissions.add(
            Permission.objects.get(
                content_type=ContentType.objects.get_for_model(Customer), codename=codename
            )
        )
    client = Client()
    client.force_login(user)
    return client


def _action(client: Client, customer: Customer, **extra: str) -> Any:
    return client.post(
        CHANGELIST, {"action": "erase_customers", "_selected_action": [customer.pk], **extra}
    )


def test_the_erase_action_needs_its_own_permission(customer_with_history):
    marketer = Client()
    marketer.force_login(marketer_user_ensure(username="marketer", password=None))
    form = marketer.get(CHANGELIST).context["action_form"]  # None: no action offered
    assert form is None or "erase_customers" not in dict(form.fields["action"].choices)

    refused = _action(marketer, customer_with_history, post="yes")

    assert refused.status_code in {200, 403}  # 403 with nudge.admin.GuardedActionsAdmin
    assert set(traces()) == set(PERSONAL) - {EMAIL.lower()}  # as customer_with_history left it


def test_the_erase_action_confirms_then_erases(customer_with_history):
    client = _staff("view_customer", "erase_customer")
    before = everything()

    confirmation = _action(client, customer_with_history)

    assert confirmation.status_code == 200
    assert confirmation.templates[0].name == "admin/journeys/customer_erase_confirmation.html"
    page = confirmation.content.decode()
    assert f"{USER}: would erase customers 1, events 2" in page and "Yes, I\u2019m sure" in page
    assert everything() == before

    done = _action(client, customer_with_history, post="yes")

    assert done.status_code == 302
    assert traces() == []
    said = [str(m) for m in get_messages(done.wsgi_request)]
    assert said[0] == "Erased the personal data of 1 customer(s)."


def test_dispatch_alone_skips_a_send_to_an_erased_external_id(customer_with_history):
    """Event application erases a late event's customer again; were a send made for an
    erased id some other way, dispatch would still skip it."""
    customer_erase(external_id=USER)
    again = Customer.objects.create(
        external_id=USER, email="fresh@example.org", email_consent="granted"
    )
    event = Event.objects.create(
        source=Event.Source.WEBHOOK,
        event_id="evt-direct",
        type="checkout_started",
        customer=again,
        occurred_at=minutes_ago(11),
        payload={},
        body_sha256="0" * 64,
    )
    enrolment_plan_apply(events=[event])  # not through services.applying

    dispatch_due()

    (first, *_) = ScheduledSend.objects.filter(customer=again).order_by("step_position")
    assert (first.status, first.reason) == (Status.SKIPPED, "suppressed: erased customer")
    assert mail.outbox == []
