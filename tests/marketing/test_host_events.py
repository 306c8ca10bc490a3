"""Customers, carts and payments the host saves become the same events a webhook delivers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command

from marketing import services
from marketing.api.serializers import EventSerializer
from marketing.models import Customer, Event
from marketing.signals import events_stored
from tests.factories import CustomerFactory
from tests.webhook_client import event, post_signed

pytestmark = pytest.mark.django_db


@pytest.fixture
def recorded():
    collected: list[Event] = []

    def collect(sender, events: list[Event], **kwargs):
        collected.extend(events)

    events_stored.connect(collect, dispatch_uid="test-host-recorded", weak=False)
    yield collected
    events_stored.disconnect(dispatch_uid="test-host-recorded")


def key_shape(value):
    if isinstance(value, dict):
        return {key: key_shape(item) for key, item in value.items()}
    return type(value).__name__ if value is not None else "null"


def webhook_event_like_host(**extra):
    payload = event(**extra)
    payload["user"]["consent"] = {"email": True, "sms": True}
    return payload


def test_customer_saved_through_services_records_user_registered_like_the_webhook(
    client, django_capture_on_commit_callbacks, recorded
):
    with django_capture_on_commit_callbacks(execute=True):
        services.customer_upsert(
            external_id="u_host",
            email="u_host@example.com",
            phone="+14155550101",
            first_name="Ana",
            timezone_name="Europe/Berlin",
            consent_email=True,
            consent_sms=True,
            consent_source="import",
        )
    host = Event.objects.get(source=Event.Source.HOST)
    post_signed(client, "/api/events/", webhook_event_like_host(user_id="u_hook"))
    webhook = Event.objects.get(source=Event.Source.WEBHOOK)

    assert host.type == webhook.type == "user_registered"
    assert key_shape(host.payload) == key_shape(webhook.payload)
    assert host.payload["user"] == {
        **webhook.payload["user"],
        "id": "u_host",
        "email": "u_host@example.com",
    }
    assert EventSerializer(data=host.payload).is_valid(), EventSerializer(data=host.payload).errors
    assert host.customer is not None
    assert host.customer.external_id == "u_host"
    assert [e.event_id for e in recorded] == [host.event_id, "evt_01"]


def test_cart_saved_through_services_records_checkout_started_like_the_webhook(
    client, django_capture_on_commit_callbacks
):
    customer = CustomerFactory.create(external_id="u_host")
    cart: dict[str, Any] = {
        "id": "c_host",
        "total": "120.00",
        "currency": "EUR",
        "checkout_url": "https://shop.example/checkout/c_host",
        "items": [{"sku": "tea"}],
    }
    with django_capture_on_commit_callbacks(execute=True):
        services.cart_upsert(
            customer=customer,
            external_id="c_host",
            total=Decimal("120.00"),
            currency="EUR",
            checkout_url=cart["checkout_url"],
            items=cart["items"],
        )
    post_signed(
        client,
        "/api/events/",
        webhook_event_like_host(event_type="checkout_started", user_id="u_host", cart=cart),
    )

    host = Event.objects.get(source=Event.Source.HOST, type="checkout_started")
    webhook = Event.objects.get(source=Event.Source.WEBHOOK)
    assert host.payload["cart"] == webhook.payload["cart"] == cart
    assert key_shape(host.payload) == key_shape(webhook.payload)
    assert EventSerializer(data=host.payload).is_valid()


def test_payment_saved_through_services_records_payment_finished_with_its_cart(
    django_capture_on_commit_callbacks,
):
    customer = CustomerFactory.create(external_id="u_host")
    with django_capture_on_commit_callbacks(execute=True):
        services.cart_upsert(
            customer=customer, external_id="c_host", total=Decimal("5.00"), currency="EUR"
        )
        services.payment_upsert(
            customer=customer,
            external_id="p_host",
            amount=Decimal("5.00"),
            currency="EUR",
            cart_external_id="c_host",
            discount_code="WELCOME10",
        )

    host = Event.objects.get(source=Event.Source.HOST, type="payment_finished")
    assert host.payload["payment"] == {
        "id": "p_host",
        "cart_id": "c_host",
        "amount": "5.00",
        "currency": "EUR",
        "discount_code": "WELCOME10",
    }
    assert host.event_id == "payment:p_host:payment_finished"
    assert EventSerializer(data=host.payload).is_valid()


def test_host_events_wait_for_the_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.customer_upsert(external_id="u_host")

    assert len(callbacks) == 1
    assert not Event.objects.exists()


def test_updating_a_known_customer_records_no_new_event(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.customer_upsert(external_id="u_host", first_name="Ana")
    with django_capture_on_commit_callbacks(execute=True):
        services.customer_upsert(external_id="u_host", first_name="Anna")

    assert Event.objects.count() == 1


def test_host_event_is_recorded_once_however_often_it_is_asked_for(recorded):
    customer = CustomerFactory.create()

    first = services.event_record_host(event_type="user_registered", customer_id=customer.pk)
    second = services.event_record_host(event_type="user_registered", customer_id=customer.pk)

    assert (first.created, second.created) == (True, False)
    assert Event.objects.count() == 1
    assert len(recorded) == 1


def test_ingested_events_do_not_also_record_host_events(client, django_capture_on_commit_callbacks):
    payload = event(
        "evt_pay",
        "payment_finished",
        cart={"id": "c_1", "total": "1.00", "currency": "EUR"},
        payment={"id": "p_1", "cart_id": "c_1", "amount": "1.00", "currency": "EUR"},
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = post_signed(client, "/api/events/", payload)

    assert response.status_code == 202
    assert list(Event.objects.values_list("source", "event_id")) == [("webhook", "evt_pay")]


def test_fixture_loading_records_no_event(django_capture_on_commit_callbacks, tmp_path):
    """loaddata saves with raw=True: the adapter ignores it (backfills call services)."""
    fixture = tmp_path / "customers.json"
    fixture.write_text(
        '[{"model": "marketing.customer", "pk": 900, "fields": {"external_id": "u_fixture",'
        ' "created_at": "2026-11-28T12:00:00Z", "updated_at": "2026-11-28T12:00:00Z"}}]'
    )
    with django_capture_on_commit_callbacks(execute=True):
        call_command("loaddata", str(fixture), verbosity=0)

    assert Customer.objects.filter(external_id="u_fixture").exists()
    assert not Event.objects.exists()
