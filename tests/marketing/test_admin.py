"""The admin a marketer uses: lists with search and filters, a read-only event log, and the
Marketer group's permissions."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext

from marketing import services
from marketing.models import Customer, Event
from tests.factories import CartFactory, CustomerFactory, PaymentFactory

pytestmark = pytest.mark.django_db


def codenames(group: Group) -> set[str]:
    return {
        f"{p.content_type.app_label}.{p.codename}"
        for p in group.permissions.select_related("content_type")
    }


def test_marketer_group_exists_after_migrate_with_its_marketing_permissions():
    group = Group.objects.get(name="Marketer")

    assert {
        "marketing.view_customer",
        "marketing.change_customer",
        "marketing.view_cart",
        "marketing.view_payment",
        "marketing.view_event",
    } <= codenames(group)
    assert "marketing.delete_customer" not in codenames(group)
    assert not any(name.startswith("auth.") for name in codenames(group))


def test_marketers_deactivate_journeys_and_cannot_delete_them():
    """A journey's sends and enrolments are the record of what was promised and sent."""
    group = Group.objects.get(name="Marketer")

    assert {"journeys.add_journey", "journeys.change_journey", "journeys.view_journey"} <= (
        codenames(group)
    )
    assert "journeys.delete_journey" not in codenames(group)
    assert "journeys.delete_journeystep" in codenames(group)


def test_marketer_group_sync_skips_permissions_whose_model_does_not_exist(monkeypatch):
    monkeypatch.setitem(
        services.MARKETER_PERMISSIONS, "not_an_app", ["view_nothing", "change_nothing"]
    )

    group = services.marketer_group_sync()

    assert not any(name.startswith("not_an_app.") for name in codenames(group))


def test_marketer_group_sync_grants_a_later_apps_entries_and_is_idempotent(monkeypatch):
    monkeypatch.setitem(services.MARKETER_PERMISSIONS, "auth", ["view_user"])

    services.marketer_group_sync()
    group = services.marketer_group_sync()

    assert "auth.view_user" in codenames(group)
    assert Group.objects.filter(name="Marketer").count() == 1


def test_marketer_group_sync_removes_permissions_granted_by_hand():
    group = Group.objects.get(name="Marketer")
    group.permissions.add(Permission.objects.get(codename="delete_customer"))

    services.marketer_group_sync()

    assert "marketing.delete_customer" not in codenames(group)


@pytest.mark.parametrize("model", ["customer", "cart", "payment", "event"])
def test_marketer_sees_each_marketing_list(marketer_client, model):
    PaymentFactory.create(cart=CartFactory.create())

    response = marketer_client.get(f"/admin/marketing/{model}/")

    assert response.status_code == 200


def test_customer_list_searches_by_email_and_filters_by_consent(marketer_client):
    CustomerFactory.create(external_id="u_ana", email="ana@example.com", sms_consent="revoked")
    CustomerFactory.create(external_id="u_ben", email="ben@example.com", sms_consent="granted")

    found = marketer_client.get("/admin/marketing/customer/", {"q": "ana@example"})
    opted_out = marketer_client.get("/admin/marketing/customer/", {"sms_consent__exact": "revoked"})

    assert list(found.context["cl"].result_list) == [Customer.objects.get(external_id="u_ana")]
    assert [c.external_id for c in opted_out.context["cl"].result_list] == ["u_ana"]


def test_event_list_filters_by_type_and_searches_by_customer(
    marketer_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.customer_upsert(external_id="u_ana", email="ana@example.com")
        services.customer_upsert(external_id="u_ben", email="ben@example.com")

    by_type = marketer_client.get("/admin/marketing/event/", {"type": "user_registered"})
    by_customer = marketer_client.get("/admin/marketing/event/", {"q": "u_ben"})

    assert by_type.context["cl"].result_count == 2
    assert [e.customer.external_id for e in by_customer.context["cl"].result_list] == ["u_ben"]


def test_event_list_offers_the_types_received_without_reading_every_event(
    marketer_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        ana = services.customer_upsert(external_id="u_ana", email="ana@example.com")
        services.payment_upsert(
            customer=ana, external_id="p_1", amount=Decimal("9.00"), currency="EUR"
        )

    with CaptureQueriesContext(connection) as queries:
        listing = marketer_client.get("/admin/marketing/event/")

    distinct_types = [q["sql"] for q in queries if 'DISTINCT "marketing_event"."type"' in q["sql"]]
    assert distinct_types == []
    type_filter = next(f for f in listing.context["cl"].filter_specs if f.title == "type")
    assert [value for value, _ in type_filter.lookup_choices] == [
        "payment_finished",
        "user_registered",
    ]


def test_events_are_read_only_in_the_admin_even_for_a_superuser(admin_client):
    customer = CustomerFactory.create()
    event = Event.objects.create(
        source="webhook",
        event_id="evt_1",
        type="user_registered",
        customer=customer,
        occurred_at=customer.created_at,
        payload={"id": "evt_1"},
        body_sha256="0" * 64,
    )

    detail = admin_client.get(f"/admin/marketing/event/{event.pk}/change/")
    add = admin_client.get("/admin/marketing/event/add/")
    delete = admin_client.get(f"/admin/marketing/event/{event.pk}/delete/")
    change = admin_client.post(f"/admin/marketing/event/{event.pk}/change/", {"type": "x"})

    assert detail.status_code == 200
    assert b'name="_save"' not in detail.content
    assert b"&quot;id&quot;: &quot;evt_1&quot;" in detail.content  # the payload, shown
    assert (add.status_code, delete.status_code, change.status_code) == (403, 403, 403)
    assert Event.objects.get().type == "user_registered"


def test_marketer_can_correct_consent_but_not_add_or_delete_customers(marketer_client):
    customer = CustomerFactory.create(external_id="u_ana", sms_consent="granted")
    form = {
        "email": customer.email,
        "phone": customer.phone,
        "first_name": customer.first_name,
        "timezone": customer.timezone,
        "email_consent": "granted",
        "sms_consent": "revoked",
    }

    changed = marketer_client.post(f"/admin/marketing/customer/{customer.pk}/change/", form)
    add = marketer_client.get("/admin/marketing/customer/add/")
    delete = marketer_client.post(
        f"/admin/marketing/customer/{customer.pk}/delete/", {"post": "yes"}
    )

    assert changed.status_code == 302, changed.content
    customer.refresh_from_db()
    assert customer.sms_consent == "revoked"
    assert customer.sms_consent_source == "admin:marketer"
    assert customer.email_consent_source == "import"  # unchanged: not recorded again
    assert (add.status_code, delete.status_code) == (403, 403)


def test_marketer_cannot_change_payments(marketer_client):
    payment = PaymentFactory.create()

    response = marketer_client.post(
        f"/admin/marketing/payment/{payment.pk}/change/", {"amount": "0.01"}
    )

    assert response.status_code == 403


def test_customer_added_in_the_admin_records_the_webhooks_event(
    admin_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/marketing/customer/add/",
            {
                "external_id": "u_admin",
                "email": "admin.added@example.com",
                "phone": "+14155550101",
                "first_name": "Ada",
                "timezone": "UTC",
                "email_consent": "granted",
                "sms_consent": "granted",
            },
        )

    assert response.status_code == 302, response.content
    event = Event.objects.get()
    assert (event.source, event.type, event.payload["user"]["id"]) == (
        "host",
        "user_registered",
        "u_admin",
    )


def test_cart_added_in_the_admin_records_checkout_started(
    admin_client, django_capture_on_commit_callbacks
):
    customer = CustomerFactory.create()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/marketing/cart/add/",
            {
                "external_id": "c_admin",
                "customer": customer.pk,
                "total": "9.90",
                "currency": "EUR",
                "checkout_url": "",
                "items": "[]",
            },
        )

    assert response.status_code == 302, response.content
    assert Event.objects.get().type == "checkout_started"


def test_every_listed_marketer_permission_exists_once_all_apps_are_installed():
    """The skip-missing rule is for apps not installed; a typo here would silently drop one."""
    group = Group.objects.get(name="Marketer")

    listed = {
        f"{app}.{codename}"
        for app, names in services.MARKETER_PERMISSIONS.items()
        for codename in names
    }
    assert listed == codenames(group)


@pytest.mark.parametrize(
    "path",
    [
        "/admin/marketing/customer/",
        "/admin/marketing/cart/",
        "/admin/marketing/payment/",
        "/admin/marketing/event/",
        "/admin/journeys/scheduledsend/",
    ],
)
def test_lists_of_large_tables_read_by_primary_key_and_count_once(admin_client, path):
    """These tables reach millions of rows: opening a list must not sort or scan them all
    (the model's date ordering has no index; a date hierarchy runs SELECT DISTINCT over the
    whole table), nor count them twice."""
    CustomerFactory.create_batch(3)

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(path)

    assert response.status_code == 200
    sent = [q["sql"] for q in queries]
    assert not [sql for sql in sent if "DATE_TRUNC" in sql.upper() or 'AS "first"' in sql]
    assert len([sql for sql in sent if "COUNT(*)" in sql.upper()]) == 1
    assert set(response.context["cl"].queryset.query.order_by) == {"-pk"}  # by its index
