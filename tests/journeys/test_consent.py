"""Consent at dispatch (journeys.services.consent), against PostgreSQL: what an unknown consent
means under NUDGE_CONSENT_DEFAULT, transactional journeys, a revoked consent or an opt-out
stopping every journey, and the suppression list shared by every customer holding an address."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from journeys import services
from journeys.models import Journey, ScheduledSend
from journeys.selectors import journeys_forget
from journeys.services.consent import consent_refusal
from marketing import services as marketing
from marketing.models import Customer, Suppression
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago, sends
from tests.journeys.test_engine import make_journey

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status


def _transactional(journey: Journey) -> None:
    Journey.objects.filter(pk=journey.pk).update(transactional=True, updated_at=timezone.now())
    journeys_forget()


def _checkout(user: str = "u_1", **user_fields: Any) -> None:
    ingest(
        make_event(
            f"co_{user}", "checkout_started", user=user, at=minutes_ago(11), cart=f"c_{user}",
            **user_fields,
        )
    )  # fmt: skip


def _outcome(user: str = "u_1") -> tuple[str, str]:
    (send,) = sends(customer__external_id=user)
    return send.status, send.reason


UNKNOWN_UNDER_DENY = "no consent: email consent unknown (NUDGE_CONSENT_DEFAULT=deny)"


@pytest.mark.parametrize(
    ("default", "transactional", "expected"),
    [
        ("deny", False, (Status.SKIPPED, UNKNOWN_UNDER_DENY)),
        ("allow", False, (Status.SENT, "")),
        ("deny", True, (Status.SENT, "")),
        ("allow", True, (Status.SENT, "")),
    ],
)  # fmt: skip
def test_an_unknown_consent_follows_the_default_for_marketing_and_sends_when_transactional(
    settings, default, transactional, expected
):
    settings.NUDGE_CONSENT_DEFAULT = default
    journey = make_journey()
    if transactional:
        _transactional(journey)
    _checkout(consent=None)  # the shop says nothing about consent
    assert Customer.objects.get().email_consent == "unknown"

    dispatch_due()

    assert _outcome() == expected


def test_granted_consent_sends_under_deny(settings):
    settings.NUDGE_CONSENT_DEFAULT = "deny"
    make_journey()
    _checkout(consent={"email": True, "sms": False})

    dispatch_due()

    assert _outcome() == (Status.SENT, "")


@pytest.mark.parametrize("default", ["deny", "allow"])
def test_a_revoked_consent_stops_a_transactional_journey_too(settings, default):
    settings.NUDGE_CONSENT_DEFAULT = default
    _transactional(make_journey())
    _checkout(consent={"email": False})

    dispatch_due()

    status, reason = _outcome()
    assert status == Status.SKIPPED
    assert reason.startswith("no consent: email consent revoked (event:co_u_1, ")
    assert reason.endswith(" UTC)")


def test_an_admin_revoke_is_named_in_the_reason():
    make_journey()
    _checkout()
    customer = Customer.objects.get()
    marketing.customer_consent_set(
        customer_id=customer.pk, channel="email", granted=False, source="admin:ana"
    )

    dispatch_due()

    assert _outcome()[1].startswith("no consent: email consent revoked (admin:ana, ")


def test_an_opt_out_stops_a_transactional_journey(settings):
    settings.NUDGE_PUBLIC_URL = "https://shop.example"
    _transactional(make_journey())
    _checkout()
    marketing.customer_unsubscribe(customer_id=Customer.objects.get().pk)

    dispatch_due()

    assert _outcome() == (Status.SKIPPED, "opted out of email (unsubscribe link)")


def test_a_suppression_stops_a_transactional_journey():
    _transactional(make_journey())
    _checkout()
    marketing.address_suppress(channel="email", address="U_1@example.com", reason="bounced")

    dispatch_due()

    assert _outcome() == (Status.SKIPPED, "suppressed: hard bounce")


def test_one_customers_unsubscribe_suppresses_the_address_for_another_who_shares_it():
    """Two customers (a shop's guest checkout and an account, say) with one email: the
    unsubscribe of one suppresses the address for both, and their re-subscribe lifts it."""
    make_journey(reentry="every")
    _checkout("u_guest", email="shared@example.com")
    dispatch_due()
    guest = Customer.objects.get(external_id="u_guest")
    marketing.customer_unsubscribe(customer_id=guest.pk)
    (row,) = Suppression.objects.all()
    assert (row.reason, row.source) == ("unsubscribed", "unsubscribe_link")
    assert "shared" not in row.address  # a keyed hash

    _checkout("u_account", email="SHARED@example.com")
    dispatch_due()
    assert _outcome("u_account") == (Status.SKIPPED, "suppressed: unsubscribed")

    marketing.customer_resubscribe(customer_id=guest.pk)
    assert not Suppression.objects.exists()
    ingest(make_event("co_again", "checkout_started", user="u_account", at=minutes_ago(11),
                      cart="c_again", email="shared@example.com"))  # fmt: skip
    dispatch_due()
    assert sends(customer__external_id="u_account")[-1].status == Status.SENT


def test_a_resubscribe_never_lifts_a_bounce():
    make_journey()
    _checkout()
    customer = Customer.objects.get()
    marketing.address_suppress(channel="email", address=customer.email, reason="bounced")
    marketing.customer_unsubscribe(customer_id=customer.pk)
    assert sorted(Suppression.objects.values_list("reason", flat=True)) == [
        "bounced",
        "unsubscribed",
    ]

    marketing.customer_resubscribe(customer_id=customer.pk)

    assert list(Suppression.objects.values_list("reason", flat=True)) == ["bounced"]
    customer.refresh_from_db()
    assert customer.email_consent == "granted"
    dispatch_due()
    assert _outcome() == (Status.SKIPPED, "suppressed: hard bounce")


def test_a_start_lifts_the_stop_suppression_of_that_number_only():
    make_journey(steps=[{"delay": "PT10M", "channel": "sms", "template": {"body": "Hi"}}])
    _checkout(phone="+14155550177")
    marketing.customer_sms_opt_out(phone="+14155550177")
    marketing.address_suppress(channel="sms", address="+14155550188", reason="stopped")
    assert Suppression.objects.filter(reason="stopped").count() == 2

    marketing.customer_sms_opt_in(phone="+14155550177")

    (left,) = Suppression.objects.all()
    assert left.address == marketing.address_digest("sms", "+14155550188")
    customer = Customer.objects.get()
    assert (customer.sms_consent, customer.sms_consent_source) == ("granted", "sms_reply")
    dispatch_due()
    assert _outcome() == (Status.SENT, "")


def test_a_stop_from_a_number_no_customer_has_yet_suppresses_it_for_later_customers():
    make_journey(steps=[{"delay": "PT10M", "channel": "sms", "template": {"body": "Hi"}}])
    assert marketing.customer_sms_opt_out(phone="+14155550166") == []

    _checkout(phone="+14155550166")
    dispatch_due()

    assert _outcome() == (Status.SKIPPED, "suppressed: SMS STOP")


def test_the_suppression_lookup_stays_one_query_per_take_with_hashed_recipients():
    make_journey()
    for n in range(6):
        _checkout(f"u_{n}", email=f"shared-{n % 2}@example.com")
    marketing.address_suppress(channel="email", address="shared-1@example.com", reason="manual")
    claimed = services.scheduled_sends_claim_due(limit=100)

    with CaptureQueriesContext(connection) as queries:
        statuses = services.scheduled_sends_dispatch(send_ids=claimed)

    assert sorted(statuses.values()) == [Status.SENT] * 3 + [Status.SKIPPED] * 3
    table = Suppression._meta.db_table
    assert len([q for q in queries if table in q["sql"]]) == 1
    skipped = sends(status=Status.SKIPPED)
    assert {s.reason for s in skipped} == {"suppressed: added by an operator"}


def test_consent_refusal_reads_the_setting_each_time(settings):
    customer = Customer(external_id="u_x")
    settings.NUDGE_CONSENT_DEFAULT = "allow"
    assert consent_refusal(customer, "sms", transactional=False, channel_label="SMS") is None
    settings.NUDGE_CONSENT_DEFAULT = "deny"
    assert consent_refusal(customer, "sms", transactional=False, channel_label="SMS") == (
        "no consent: SMS consent unknown (NUDGE_CONSENT_DEFAULT=deny)"
    )


@pytest.mark.parametrize("value", ["", "yes", "opt-in", "true"])
def test_an_unknown_consent_default_stops_the_start(settings, value):
    settings.NUDGE_CONSENT_DEFAULT = value

    with pytest.raises(SystemCheckError, match="NUDGE_CONSENT_DEFAULT is"):
        call_command("check")


@pytest.mark.parametrize("value", ["deny", "allow", "Allow"])
def test_the_consent_defaults_pass_the_checks(settings, value):
    settings.NUDGE_CONSENT_DEFAULT = value

    call_command("check")
