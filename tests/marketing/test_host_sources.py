"""The host project's own models (auth.User, tests.hostapp's Order) as event sources, by
NUDGE_HOST_EVENTS: recorded once, after commit, by a derived id."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import transaction
from django.db.models.signals import post_save
from django.utils import timezone

from journeys import services as journey_services
from journeys.models import ScheduledSend
from journeys.selectors import known_event_types
from journeys.specs import journey_spec_parse
from marketing import host_sources, services
from marketing.models import Event
from tests.hostapp.models import Order

pytestmark = pytest.mark.django_db

USER_REGISTERED: dict[str, Any] = {
    "model": "auth.User",
    "event": "user_registered",
    "on": "create",
    "when": {},
    "occurred_at": None,
    "fields": {"user.id": "pk", "user.email": "email", "user.first_name": "first_name"},
}
ORDER_PAID: dict[str, Any] = {
    "model": "hostapp.Order",
    "event": "payment_finished",
    "on": "save",
    "when": {"status": "paid"},
    "occurred_at": "paid_at",
    "fields": {
        "user.id": "customer_id",
        "user.email": "customer.email",
        "payment.id": "pk",
        "payment.amount": "total",
        "payment.currency": "currency",
    },
}


@pytest.fixture
def host_events(settings):
    """Both sources connected (the setting's change reconnects the receivers)."""
    settings.NUDGE_HOST_EVENTS = [USER_REGISTERED, ORDER_PAID]


def iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def user_create(username: str = "ana", email: str = "ana@shop.example") -> User:
    return User.objects.create_user(username=username, email=email, first_name="Ana")


def host_events_of(event_type: str) -> list[Event]:
    return list(Event.objects.filter(source=Event.Source.HOST, type=event_type).order_by("id"))


# --- auth.User created -----------------------------------------------------------------------


def test_user_created_records_user_registered_after_the_commit(
    host_events, django_capture_on_commit_callbacks
):
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        user = user_create()
    assert not Event.objects.exists()  # nothing inside the host's transaction

    for callback in callbacks:
        callback()

    (event,) = host_events_of("user_registered")
    assert event.event_id == f"auth.user:{user.pk}:user_registered"
    assert event.payload == {
        "id": f"auth.user:{user.pk}:user_registered",
        "type": "user_registered",
        "occurred_at": event.payload["occurred_at"],
        "user": {"id": str(user.pk), "email": "ana@shop.example", "first_name": "Ana"},
    }
    # no time of its own: the commit's
    assert before <= event.occurred_at <= timezone.now()
    assert event.payload["occurred_at"] == iso(event.occurred_at)
    assert event.customer.external_id == str(user.pk)


@pytest.mark.django_db(transaction=True)
def test_user_created_is_recorded_when_a_real_transaction_commits(host_events):
    with transaction.atomic():
        user = user_create()
        assert not Event.objects.exists()

    assert [e.event_id for e in host_events_of("user_registered")] == [
        f"auth.user:{user.pk}:user_registered"
    ]


def test_user_created_in_a_rolled_back_transaction_records_nothing(
    host_events, django_capture_on_commit_callbacks
):
    def register_then_fail() -> None:
        with transaction.atomic():
            user_create()
            raise RuntimeError("the host's view failed")

    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(RuntimeError):
        register_then_fail()

    assert callbacks == []
    assert not User.objects.exists()
    assert not Event.objects.exists()


def test_a_user_saved_again_records_no_second_event(
    host_events, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        user = user_create()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        user.first_name = "Anna"
        user.save()

    assert callbacks == []  # "create": only the first save qualifies
    assert len(host_events_of("user_registered")) == 1


def test_user_email_left_blank_is_valid_and_none_values_are_left_out(
    settings, django_capture_on_commit_callbacks
):
    settings.NUDGE_HOST_EVENTS = [
        {**USER_REGISTERED, "fields": {**USER_REGISTERED["fields"], "user.phone": "last_login"}}
    ]
    with django_capture_on_commit_callbacks(execute=True):
        user = User.objects.create_user(username="bo")

    (event,) = host_events_of("user_registered")
    assert event.payload["user"] == {"id": str(user.pk), "email": "", "first_name": ""}


# --- hostapp.Order saved paid ----------------------------------------------------------------


def test_order_saved_pending_then_paid_then_paid_again_records_one_payment_finished(
    host_events, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        customer = user_create()
        order = Order.objects.create(customer=customer, total=Decimal("120.00"), currency="EUR")
    assert host_events_of("payment_finished") == []

    paid_at = timezone.now() - timedelta(minutes=3)
    with django_capture_on_commit_callbacks(execute=True):
        order.status = Order.Status.PAID
        order.paid_at = paid_at
        order.save()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        order.save()

    assert len(callbacks) == 1  # it qualifies again, and recording it again is a no-op
    (event,) = host_events_of("payment_finished")
    assert event.event_id == f"hostapp.order:{order.pk}:payment_finished"
    assert event.occurred_at == paid_at
    assert event.payload == {
        "id": f"hostapp.order:{order.pk}:payment_finished",
        "type": "payment_finished",
        "occurred_at": iso(paid_at),
        "user": {"id": str(customer.pk), "email": "ana@shop.example"},
        "payment": {"id": str(order.pk), "amount": "120.00", "currency": "EUR"},
    }
    assert Event.objects.filter(type="payment_finished").count() == 1


def test_the_order_is_read_at_save_time_and_recorded_at_commit(
    host_events, django_capture_on_commit_callbacks
):
    customer = user_create()
    with django_capture_on_commit_callbacks(execute=True):
        order = Order.objects.create(
            customer=customer, total=Decimal("10.00"), status="paid", paid_at=timezone.now()
        )
        order.total = Decimal("99.00")
        order.save()

    (event,) = host_events_of("payment_finished")
    assert event.payload["payment"]["amount"] == "10.00"


def test_recording_a_known_id_again_is_a_no_op_even_with_other_values(host_events):
    customer = user_create()
    order = Order.objects.create(customer=customer, total=Decimal("10.00"))
    (source,), _ = host_sources.host_sources_parse([ORDER_PAID])
    payload = host_sources.host_event_payload_build(source, order, occurred_at=timezone.now())

    first = services.host_event_record(payload=payload)
    second = services.host_event_record(
        payload={**payload, "payment": {**payload["payment"], "amount": "11.00"}}
    )

    assert (first.created, second.created) == (True, False)
    assert second.event.pk == first.event.pk
    assert Event.objects.count() == 1


def test_loaded_fixtures_record_no_event(host_events, django_capture_on_commit_callbacks, tmp_path):
    customer = user_create()
    fixture = tmp_path / "orders.json"
    fixture.write_text(
        f'[{{"model": "hostapp.order", "pk": 900, "fields": {{"customer": {customer.pk},'
        ' "status": "paid", "total": "5.00", "currency": "EUR",'
        ' "paid_at": "2026-11-28T12:00:00Z"}}]'
    )
    with django_capture_on_commit_callbacks(execute=True):
        call_command("loaddata", str(fixture), verbosity=0)

    assert Order.objects.filter(pk=900).exists()
    assert host_events_of("payment_finished") == []


def test_an_order_whose_data_is_invalid_is_logged_and_its_save_stands(
    host_events, django_capture_on_commit_callbacks, caplog
):
    with django_capture_on_commit_callbacks(execute=True):
        customer = user_create(email="not-an-email")  # create_user does not validate it
    with (
        caplog.at_level(logging.ERROR, logger="marketing.host_sources"),
        django_capture_on_commit_callbacks(execute=True),
        transaction.atomic(),
    ):
        order = Order.objects.create(
            customer=customer, total=Decimal("5.00"), status="paid", paid_at=timezone.now()
        )
        Order.objects.create(customer=customer, total=Decimal("6.00"))

    assert Order.objects.count() == 2
    assert User.objects.filter(pk=customer.pk).exists()
    assert not Event.objects.exists()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert messages == [
        f"auth.User {customer.pk}: user_registered not recorded: "
        "user.email: Enter a valid email address.",
        f"hostapp.Order {order.pk}: payment_finished not recorded: "
        "user.email: Enter a valid email address.",
    ]


def test_an_extra_event_type_can_be_recorded(settings, django_capture_on_commit_callbacks):
    settings.NUDGE_HOST_EVENTS = [
        {
            **ORDER_PAID,
            "event": "order_refunded",
            "when": {"status": "refunded"},
            "fields": {"user.id": "customer_id"},
            "occurred_at": None,
        }
    ]
    settings.NUDGE_EXTRA_EVENT_TYPES = ["order_refunded"]
    customer = user_create()
    with django_capture_on_commit_callbacks(execute=True):
        order = Order.objects.create(customer=customer, total=Decimal("5.00"), status="refunded")

    (event,) = host_events_of("order_refunded")
    assert event.event_id == f"hostapp.order:{order.pk}:order_refunded"


# --- journeys --------------------------------------------------------------------------------


def test_a_user_created_enrols_them_in_a_journey_triggered_by_user_registered(
    host_events, django_capture_on_commit_callbacks
):
    spec, errors = journey_spec_parse(
        {
            "slug": "welcome",
            "name": "Welcome",
            "trigger": "user_registered",
            "exit_on": [],
            "max_lateness": "PT2H",
            "steps": [
                {
                    "delay": "PT1H",
                    "channel": "email",
                    "template": {"subject": "Welcome", "body": "Hi {{ customer.first_name }}"},
                }
            ],
        },
        known_types=known_event_types(),
    )
    assert not errors
    journey, _ = journey_services.journey_save_spec(spec=spec)

    with django_capture_on_commit_callbacks(execute=True):
        user = user_create()
    journey_services.events_apply_pending()

    (send,) = ScheduledSend.objects.select_related("customer")
    assert send.journey == journey
    assert send.customer.external_id == str(user.pk)
    assert send.customer.email == "ana@shop.example"
    assert send.status == ScheduledSend.Status.PENDING


# --- configuration ---------------------------------------------------------------------------


def test_the_documented_configuration_is_valid():
    sources, errors = host_sources.host_sources_parse([USER_REGISTERED, ORDER_PAID])

    assert errors == []
    assert [(s.model, s.event, s.on) for s in sources] == [
        (User, "user_registered", "create"),
        (Order, "payment_finished", "save"),
    ]


def test_on_defaults_to_create_and_when_to_always():
    (source,), _ = host_sources.host_sources_parse(
        [{"model": "auth.User", "event": "user_registered", "fields": {"user.id": "pk"}}]
    )

    assert (source.on, source.when, source.occurred_at) == ("create", {}, None)


@pytest.mark.parametrize(
    ("change", "check_id", "words"),
    [
        ({"model": "shop.Order"}, "nudge.E101", "'shop.Order' is not an installed model"),
        ({"model": "Order"}, "nudge.E101", "'Order' is not an installed model"),
        ({"model": "marketing.Payment"}, "nudge.E101", "one of Nudge's own models"),
        ({"event": "order_paid"}, "nudge.E102", "'order_paid' is not a known event type"),
        ({"on": "update"}, "nudge.E103", "'on' is 'update', not 'create' or 'save'"),
        (
            {"fields": {**ORDER_PAID["fields"], "payment.total": "total"}},
            "nudge.E104",
            "'payment.total' is not an event field",
        ),
        (
            {"fields": {**ORDER_PAID["fields"], "payment.amount": "amount"}},
            "nudge.E105",
            "hostapp.Order has no field 'amount'",
        ),
        (
            {"fields": {**ORDER_PAID["fields"], "user.email": "customer.mail"}},
            "nudge.E105",
            "auth.User has no field 'mail'",
        ),
        (
            {"fields": {**ORDER_PAID["fields"], "user.email": "status.email"}},
            "nudge.E105",
            "hostapp.Order.status is not a foreign key",
        ),
        (
            {"fields": {**ORDER_PAID["fields"], "user.id": "customer"}},
            "nudge.E105",
            "hostapp.Order.customer is a relation: use customer_id or customer.<field>",
        ),
        (
            {"fields": {k: v for k, v in ORDER_PAID["fields"].items() if k != "user.id"}},
            "nudge.E106",
            "'fields' must map user.id",
        ),
        (
            {"fields": {k: v for k, v in ORDER_PAID["fields"].items() if k != "payment.amount"}},
            "nudge.E106",
            "'fields' must map payment.amount",
        ),
        (
            {"fields": {"user.id": "customer_id"}},
            "nudge.E106",
            "payment: required for payment_finished",
        ),
        ({"when": {"state": "paid"}}, "nudge.E107", "hostapp.Order has no field 'state'"),
        ({"occurred_at": "paid"}, "nudge.E108", "hostapp.Order has no field 'paid'"),
        ({"occurred_at": "total"}, "nudge.E108", "total is not a DateTimeField"),
        ({"if": {"status": "paid"}}, "nudge.E100", "unknown keys: if"),
    ],
)
def test_each_configuration_error_is_a_system_check_error(settings, change, check_id, words):
    settings.NUDGE_HOST_EVENTS = [USER_REGISTERED, {**ORDER_PAID, **change}]

    errors = host_sources.host_sources_check(None)

    assert [e.id for e in errors] == [check_id], errors
    assert words in errors[0].msg
    assert errors[0].msg.startswith("NUDGE_HOST_EVENTS[1]")


def test_a_model_recording_the_same_event_twice_is_an_error(settings):
    settings.NUDGE_HOST_EVENTS = [USER_REGISTERED, {**USER_REGISTERED, "on": "save"}]

    (error,) = host_sources.host_sources_check(None)

    assert error.id == "nudge.E109"


def test_a_setting_that_is_not_a_list_of_dicts_is_an_error(settings):
    settings.NUDGE_HOST_EVENTS = {"model": "auth.User"}
    assert [e.id for e in host_sources.host_sources_check(None)] == ["nudge.E100"]
    settings.NUDGE_HOST_EVENTS = ["auth.User"]
    assert [e.id for e in host_sources.host_sources_check(None)] == ["nudge.E100"]


def test_manage_py_check_fails_on_a_bad_entry_and_only_valid_entries_are_connected(settings):
    settings.NUDGE_HOST_EVENTS = [USER_REGISTERED, {**ORDER_PAID, "event": "order_paid"}]

    with pytest.raises(SystemCheckError, match=r"nudge\.E102"):
        call_command("check")
    assert post_save.has_listeners(User)
    assert not post_save.has_listeners(Order)


def test_receivers_follow_the_setting(settings):
    settings.NUDGE_HOST_EVENTS = [ORDER_PAID]
    assert post_save.has_listeners(Order)

    settings.NUDGE_HOST_EVENTS = []
    assert not post_save.has_listeners(Order)
