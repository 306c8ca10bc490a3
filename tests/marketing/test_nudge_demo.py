"""`manage.py nudge_demo`: demo data and a marketer login, the same however often it runs."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from marketing.models import Cart, Customer, Event, Payment

pytestmark = pytest.mark.django_db


def run_demo(django_capture_on_commit_callbacks, **options) -> str:
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("nudge_demo", stdout=out, **options)
    return out.getvalue()


def snapshot():
    return (
        sorted(Customer.objects.values_list("external_id", flat=True)),
        Cart.objects.count(),
        Payment.objects.count(),
        sorted(Event.objects.values_list("event_id", flat=True)),
    )


def test_demo_loads_customers_carts_payments_their_events_and_a_marketer_login(
    django_capture_on_commit_callbacks, monkeypatch
):
    monkeypatch.setenv("NUDGE_DEMO_PASSWORD", "first-demo-password")

    out = run_demo(django_capture_on_commit_callbacks)

    customers, carts, payments, _events = snapshot()
    assert customers == ["demo_u_ana", "demo_u_ben", "demo_u_chloe"]
    assert (carts, payments) == (2, 1)
    assert sorted(Event.objects.values_list("type", flat=True)) == [
        "checkout_started",
        "checkout_started",
        "payment_finished",
        "user_registered",
        "user_registered",
        "user_registered",
    ]
    marketer = User.objects.get(username="marketer")
    assert marketer.is_staff
    assert not marketer.is_superuser
    assert list(marketer.groups.values_list("name", flat=True)) == ["Marketer"]
    assert marketer.check_password("first-demo-password")
    assert "marketer / first-demo-password" in out
    assert "http://127.0.0.1:8000/admin/" in out


def test_demo_is_idempotent_on_rerun(django_capture_on_commit_callbacks, monkeypatch):
    monkeypatch.setenv("NUDGE_DEMO_PASSWORD", "first-demo-password")
    run_demo(django_capture_on_commit_callbacks)
    first = snapshot()

    run_demo(django_capture_on_commit_callbacks)

    assert snapshot() == first
    assert User.objects.filter(username="marketer").count() == 1


def test_demo_rerun_takes_a_changed_password_and_port(
    django_capture_on_commit_callbacks, monkeypatch
):
    monkeypatch.setenv("NUDGE_DEMO_PASSWORD", "first-demo-password")
    run_demo(django_capture_on_commit_callbacks)
    monkeypatch.setenv("NUDGE_DEMO_PASSWORD", "second-demo-password")
    monkeypatch.setenv("PORT", "8123")

    out = run_demo(django_capture_on_commit_callbacks)

    assert User.objects.get(username="marketer").check_password("second-demo-password")
    assert "http://127.0.0.1:8123/admin/" in out


def test_demo_without_a_password_keeps_the_existing_one(
    django_capture_on_commit_callbacks, monkeypatch
):
    monkeypatch.setenv("NUDGE_DEMO_PASSWORD", "first-demo-password")
    run_demo(django_capture_on_commit_callbacks)
    monkeypatch.delenv("NUDGE_DEMO_PASSWORD")

    out = run_demo(django_capture_on_commit_callbacks)

    assert User.objects.get(username="marketer").check_password("first-demo-password")
    assert "unchanged" in out


def test_a_rerun_leaves_a_marketers_edits_and_reset_restores_the_data_as_shipped(
    django_capture_on_commit_callbacks,
):
    out = run_demo(django_capture_on_commit_callbacks)
    assert "Demo data: created 3 customers, 2 carts, 1 payment, and their events." in out
    first = snapshot()
    # what a marketer may do in the admin: correct contact details and consent
    Customer.objects.filter(external_id="demo_u_ben").update(
        email="ben@shop.example", sms_consent="revoked"
    )
    Cart.objects.filter(external_id="demo_c_ben").update(total="99.00")

    out = run_demo(django_capture_on_commit_callbacks)

    assert "Demo data: already there, left as it is (use --reset" in out
    ben = Customer.objects.get(external_id="demo_u_ben")
    assert (ben.email, ben.sms_consent) == ("ben@shop.example", "revoked")
    assert str(Cart.objects.get(external_id="demo_c_ben").total) == "99.00"
    assert snapshot() == first

    out = run_demo(django_capture_on_commit_callbacks, reset=True)

    assert "Demo data: restored as shipped: 3 customers, 2 carts, 1 payment" in out
    ben.refresh_from_db()
    assert (ben.email, ben.sms_consent, ben.sms_consent_source) == (
        "ben@example.com",
        "granted",
        "demo",
    )
    assert str(Cart.objects.get(external_id="demo_c_ben").total) == "45.50"
    assert snapshot() == first  # no new object, no new event


def test_the_demo_creates_only_the_objects_that_are_missing(django_capture_on_commit_callbacks):
    Customer.objects.create(external_id="demo_u_ana", first_name="Ana (the shop's own)")

    out = run_demo(django_capture_on_commit_callbacks)

    assert "Demo data: created 5 missing object(s); the rest is already there" in out
    assert Customer.objects.get(external_id="demo_u_ana").first_name == "Ana (the shop's own)"
    assert snapshot()[:3] == (["demo_u_ana", "demo_u_ben", "demo_u_chloe"], 2, 1)
