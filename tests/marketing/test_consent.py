"""Consent per channel (unknown, granted, revoked, with source and time) as every body that
writes a profile records it, ordered by time; and the suppression list, stored as keyed
hashes, in the admin. Against PostgreSQL (the batch's set-based body runs there only)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.utils import timezone

from marketing import services
from marketing.models import Customer, Event, Suppression
from marketing.services.suppression import address_digest
from tests.factories import CustomerFactory
from tests.marketing.test_profiles import BASE, BODIES, event

pytestmark = pytest.mark.django_db


def _consent(external_id: str = "u_1") -> dict[str, tuple[str, str, object]]:
    customer = Customer.objects.get(external_id=external_id)
    return {
        "email": (customer.email_consent, customer.email_consent_source, customer.email_consent_at),
        "sms": (customer.sms_consent, customer.sms_consent_source, customer.sms_consent_at),
    }


@pytest.mark.parametrize("body", list(BODIES))
def test_an_events_consent_is_recorded_with_its_source_and_time(body):
    apply = BODIES[body]

    apply([event(1, {"id": "u_1", "consent": {"email": True}}, 0)])
    assert _consent() == {
        "email": ("granted", "event:e_1", BASE),
        "sms": ("unknown", "", None),
    }

    apply([event(2, {"id": "u_1", "consent": {"sms": False}}, 5)])
    assert _consent() == {
        "email": ("granted", "event:e_1", BASE),  # not mentioned: kept
        "sms": ("revoked", "event:e_2", BASE + timedelta(minutes=5)),
    }


@pytest.mark.parametrize("body", list(BODIES))
def test_a_late_older_event_does_not_overwrite_a_newer_consent(body):
    apply = BODIES[body]
    apply([event(1, {"id": "u_1", "consent": {"email": True, "sms": True}}, 10)])

    # older than the stored consent: nothing changes, whatever it says
    apply([event(2, {"id": "u_1", "consent": {"email": False, "sms": False}}, 5)])

    assert _consent()["email"] == ("granted", "event:e_1", BASE + timedelta(minutes=10))
    assert _consent()["sms"][:2] == ("granted", "event:e_1")


@pytest.mark.parametrize("body", list(BODIES))
def test_an_event_older_than_an_operators_consent_does_not_overwrite_it(body):
    apply = BODIES[body]
    apply([event(1, {"id": "u_1", "first_name": "Ana"}, 0)])
    customer = Customer.objects.get()
    services.customer_consent_set(
        customer_id=customer.pk, channel="email", granted=False, source="admin:ops"
    )

    # newer than the profile (its name is taken), older than the operator's word
    apply([event(2, {"id": "u_1", "first_name": "Anna", "consent": {"email": True}}, 30)])

    customer.refresh_from_db()
    assert customer.first_name == "Anna"
    assert (customer.email_consent, customer.email_consent_source) == ("revoked", "admin:ops")


@pytest.mark.parametrize("body", list(BODIES))
def test_a_late_sign_up_still_records_its_consent_behind_a_newer_event_without_any(body):
    """The checkout (no consent) arrived first; the sign-up that occurred before it, with
    the consent the customer gave, arrives late: its profile is older than the stored one and
    changes nothing, but the consent nobody had stated yet is recorded."""
    apply = BODIES[body]
    apply([event(2, {"id": "u_1", "first_name": "New"}, 10)])

    apply([event(1, {"id": "u_1", "first_name": "Old", "consent": {"email": True}}, 0)])

    customer = Customer.objects.get()
    assert customer.first_name == "New"
    assert customer.profile_as_of == BASE + timedelta(minutes=10)
    assert (customer.email_consent, customer.email_consent_source) == ("granted", "event:e_1")


def test_a_batch_records_each_customers_consent_with_its_own_event():
    outcomes = services.events_ingest_batch(
        source="webhook",
        items=[
            (data, data)
            for data in (
                _validated(event(1, {"id": "u_1", "consent": {"email": True}}, 0)),
                _validated(event(2, {"id": "u_2", "consent": {"email": False}}, 1)),
                _validated(event(3, {"id": "u_1", "consent": {"email": False}}, 2)),
            )
        ],
    )

    assert all(not isinstance(o, Exception) for o in outcomes)
    assert _consent("u_1")["email"] == ("revoked", "event:e_3", BASE + timedelta(minutes=2))
    assert _consent("u_2")["email"] == ("revoked", "event:e_2", BASE + timedelta(minutes=1))


def _validated(payload):
    from tests.marketing.test_profiles import validated

    return validated(payload)


def test_an_operator_cannot_grant_over_the_customers_own_opt_out():
    customer = CustomerFactory.create()
    services.customer_unsubscribe(customer_id=customer.pk)

    with pytest.raises(services.ConsentHeldByOptOut, match="opted out of email themselves"):
        services.customer_consent_set(
            customer_id=customer.pk, channel="email", granted=True, source="admin:ops"
        )

    customer.refresh_from_db()
    assert (customer.email_consent, customer.email_consent_source) == (
        "revoked",
        "unsubscribe_link",
    )


def test_a_consent_needs_its_source():
    with pytest.raises(ValueError, match="source"):
        services.customer_upsert(external_id="u_1", consent_email=True)
    with pytest.raises(ValueError, match="source"):
        services.customer_consent_set(
            customer_id=CustomerFactory.create().pk, channel="sms", granted=True, source=" "
        )


# --- the suppression list, hashed ---------------------------------------------------------


def _table_text() -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {Suppression._meta.db_table}")  # noqa: S608
        return repr(cursor.fetchall())


def test_no_plain_address_is_stored_by_any_feed():
    customer = CustomerFactory.create(email="Zoe.Quill@Example.org", phone="+14155550142")
    services.address_suppress(
        channel="email",
        address="zoe.quill@example.org",
        reason="bounced",
        source="provider:anymail.postmark",
        detail="550 5.1.1 <ZOE.QUILL@example.org>: user unknown",
    )
    services.customer_unsubscribe(customer_id=customer.pk)
    services.customer_sms_opt_out(phone="+14155550142")

    text = _table_text()
    reasons = sorted(Suppression.objects.values_list("reason", flat=True))
    assert reasons == ["bounced", "stopped", "unsubscribed"]
    for plain in ("zoe.quill", "Zoe.Quill", "ZOE.QUILL", "14155550142", "example.org"):
        assert plain not in text
    bounce = Suppression.objects.get(reason="bounced")
    assert bounce.detail == "550 5.1.1 <<address>>: user unknown"
    assert bounce.address == address_digest("email", " ZOE.quill@example.ORG ")


ADMIN = "/admin/marketing/suppression/"


def test_a_marketer_adds_a_suppression_by_typing_the_address(marketer_client):
    response = marketer_client.post(
        f"{ADMIN}add/",
        {"channel": "email", "typed_address": "Ana@Example.com", "detail": "asked by phone"},
    )

    assert response.status_code == 302, response.content
    (row,) = Suppression.objects.all()
    assert (row.channel, row.reason, row.source, row.detail) == (
        "email",
        "manual",
        "admin:marketer",
        "asked by phone",
    )
    assert row.address == address_digest("email", "ana@example.com")
    assert "ana@" not in _table_text().lower()
    assert all("ana@" not in entry.object_repr.lower() for entry in LogEntry.objects.all())


@pytest.mark.parametrize(
    ("channel", "typed", "error"),
    [
        ("email", "not-an-email", b"valid email"),
        ("sms", "0170 123", b"E.164"),
    ],
)
def test_a_mistyped_address_is_refused_and_nothing_stored(marketer_client, channel, typed, error):
    response = marketer_client.post(f"{ADMIN}add/", {"channel": channel, "typed_address": typed})

    assert response.status_code == 200
    assert error in response.content
    assert not Suppression.objects.exists()


def test_adding_the_same_address_twice_says_so(marketer_client):
    services.address_suppress(channel="sms", address="+14155550101", reason="manual")

    response = marketer_client.post(
        f"{ADMIN}add/", {"channel": "sms", "typed_address": "+14155550101"}
    )

    assert response.status_code == 200
    assert b"already suppressed" in response.content
    assert Suppression.objects.count() == 1


def test_the_list_shows_channel_reason_source_and_is_searched_by_typed_address(marketer_client):
    services.address_suppress(
        channel="email", address="ana@example.com", reason="bounced", source="provider:x"
    )
    services.address_suppress(channel="email", address="ben@example.com", reason="complained")
    services.address_suppress(channel="sms", address="+14155550101", reason="stopped")

    listing = marketer_client.get(ADMIN)
    by_email = marketer_client.get(ADMIN, {"q": " ANA@example.com"})
    by_phone = marketer_client.get(ADMIN, {"q": "+14155550101"})
    by_hash = marketer_client.get(ADMIN, {"q": address_digest("email", "ben@example.com")})
    nothing = marketer_client.get(ADMIN, {"q": "example.com"})  # no LIKE over hashes

    assert listing.status_code == 200
    page = listing.content.decode()
    assert "hard bounce" in page and "provider:x" in page and "SMS STOP" in page
    assert [s.reason for s in by_email.context["cl"].result_list] == ["bounced"]
    assert [s.reason for s in by_phone.context["cl"].result_list] == ["stopped"]
    assert [s.reason for s in by_hash.context["cl"].result_list] == ["complained"]
    assert list(nothing.context["cl"].result_list) == []


def test_deleting_a_suppression_unsuppresses_the_address(marketer_client):
    row = services.address_suppress(channel="email", address="ana@example.com", reason="bounced")

    page = marketer_client.get(f"{ADMIN}{row.pk}/delete/")
    deleted = marketer_client.post(f"{ADMIN}{row.pk}/delete/", {"post": "yes"})

    assert page.status_code == 200
    assert deleted.status_code == 302
    assert not Suppression.objects.exists()


def test_a_suppression_cannot_be_edited(marketer_client):
    row = services.address_suppress(channel="email", address="ana@example.com", reason="bounced")

    response = marketer_client.post(f"{ADMIN}{row.pk}/change/", {"reason": "manual"})

    assert response.status_code == 403
    assert Suppression.objects.get().reason == "bounced"


# --- the customer page ----------------------------------------------------------------------


def _customer_form(customer: Customer, **consent: str) -> dict[str, str]:
    return {
        "email": customer.email,
        "phone": customer.phone,
        "first_name": customer.first_name,
        "timezone": customer.timezone,
        "email_consent": customer.email_consent,
        "sms_consent": customer.sms_consent,
        **consent,
    }


def test_the_customer_page_shows_each_channels_consent_with_source_and_time(marketer_client):
    at = timezone.now().replace(month=12, day=3, hour=10, minute=2)
    customer = CustomerFactory.create(
        email_consent="granted", email_consent_source="event:e_7", email_consent_at=at
    )

    page = marketer_client.get(f"/admin/marketing/customer/{customer.pk}/change/")

    assert page.status_code == 200
    assert "granted (event:e_7, 3 Dec 10:02 UTC)" in page.content.decode()


def test_an_admin_edit_records_the_user_as_the_source(marketer_client):
    customer = CustomerFactory.create(email_consent="unknown", email_consent_source="")

    response = marketer_client.post(
        f"/admin/marketing/customer/{customer.pk}/change/",
        _customer_form(customer, email_consent="granted"),
    )

    assert response.status_code == 302, response.content
    customer.refresh_from_db()
    assert (customer.email_consent, customer.email_consent_source) == (
        "granted",
        "admin:marketer",
    )
    assert timezone.now() - customer.email_consent_at < timedelta(minutes=1)
    assert customer.sms_consent_source == "import"  # not changed, not recorded again


@pytest.mark.parametrize(
    ("setup", "wanted", "error"),
    [
        ("none", "unknown", b"cannot be set back to unknown"),
        ("opted out", "granted", b"only their own opt-in"),
    ],
)
def test_the_customer_page_refuses_what_consent_cannot_become(
    marketer_client, setup, wanted, error
):
    customer = CustomerFactory.create()
    if setup == "opted out":
        services.customer_unsubscribe(customer_id=customer.pk)
        customer.refresh_from_db()

    response = marketer_client.post(
        f"/admin/marketing/customer/{customer.pk}/change/",
        _customer_form(customer, email_consent=wanted),
    )

    assert response.status_code == 200
    assert error in response.content
    assert Customer.objects.get().email_consent == customer.email_consent


def test_the_customer_list_filters_by_consent(marketer_client):
    CustomerFactory.create(external_id="u_unknown", email_consent="unknown")
    CustomerFactory.create(external_id="u_granted")

    unknown = marketer_client.get("/admin/marketing/customer/", {"email_consent__exact": "unknown"})

    assert [c.external_id for c in unknown.context["cl"].result_list] == ["u_unknown"]


def test_a_host_event_states_only_a_known_consent(django_capture_on_commit_callbacks):
    """The host's save becomes an event like a webhook's: a consent nobody stated is left
    out (the absence of a statement), a recorded one is carried; and the event, which
    occurred when the customer was created, does not replace the consent recorded since."""
    with django_capture_on_commit_callbacks(execute=True):
        services.customer_upsert(external_id="u_unknown", email="a@example.com")
        services.customer_upsert(external_id="u_known", consent_sms=False, consent_source="import")

    payloads = {e.customer.external_id: e.payload for e in Event.objects.filter(source="host")}
    assert "consent" not in payloads["u_unknown"]["user"]
    assert payloads["u_known"]["user"]["consent"] == {"sms": False}
    assert _consent("u_known")["sms"][:2] == ("revoked", "import")
