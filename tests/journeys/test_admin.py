from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from journeys import selectors
from journeys.models import Journey, ScheduledSend
from marketing import selectors as marketing_selectors
from marketing.models import EventType
from tests.journeys.conftest import ingest, make_event, minutes_ago

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_logged_in(client):
    User.objects.create_superuser("root", password="x" * 12)
    client.login(username="root", password="x" * 12)
    return client


def journey_form(**overrides):
    data = {
        "name": "Winback",
        "slug": "winback",
        "active": "on",
        "trigger": "checkout_started",
        "exit_on": "payment_finished",
        "exit_scope": "customer",
        "max_lateness": "02:00:00",
        "dedupe": "latest",
        "max_wait": "",
        "reentry": "every",
        "reentry_period": "",
        "steps-TOTAL_FORMS": "1",
        "steps-INITIAL_FORMS": "0",
        "steps-MIN_NUM_FORMS": "1",
        "steps-MAX_NUM_FORMS": "1000",
        "steps-0-position": "0",
        "steps-0-delay": "00:20:00",
        "steps-0-channel": "email",
        "steps-0-subject": "Your cart",
        "steps-0-body": "{{ cart.checkout_url }}",
        "steps-0-discount_percent": "",
        "steps-0-discount_valid_for": "",
    }
    data.update(overrides)
    return data


def test_admin_creates_a_valid_journey_with_its_steps(admin_client_logged_in):
    response = admin_client_logged_in.post("/admin/journeys/journey/add/", journey_form())

    assert response.status_code == 302, response.content.decode()[:2000]
    journey = Journey.objects.get(slug="winback")
    assert journey.exit_on == ["payment_finished"]
    assert journey.steps.get().body == "{{ cart.checkout_url }}"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"trigger": "checkout_strated"}, "unknown event type &#x27;checkout_strated&#x27;"),
        ({"exit_on": "payment_finished, refund"}, "unknown event type &#x27;refund&#x27;"),
        ({"steps-0-body": "{% if %}"}, "template syntax error"),
        ({"steps-0-body": "{{ custmer.first_name }}"}, "unknown variable"),
        ({"steps-0-body": "{{ discount.code }}"}, "no discount rule"),
        ({"steps-0-subject": ""}, "an email needs a subject"),
        ({"steps-0-discount_percent": "150"}, "from 1 to 100"),
    ],
)
def test_admin_refuses_a_broken_journey(admin_client_logged_in, overrides, message):
    response = admin_client_logged_in.post(
        "/admin/journeys/journey/add/", journey_form(**overrides)
    )

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Journey.objects.exists()


def test_admin_knows_every_type_the_event_log_has_received(admin_client_logged_in):
    """A type the shop already sends is a valid trigger or exit, first and last in the type
    index's order too (the types are read one index probe at a time)."""
    for n, kind in enumerate(["refund_issued", "a_first", "refund_issued", "zz_last"]):
        ingest(make_event(f"e{n}", kind, user=f"u{n}", at=minutes_ago(5)))

    assert marketing_selectors.event_types_received() == ["a_first", "refund_issued", "zz_last"]
    for slug, overrides in (
        ("first", {"trigger": "a_first", "exit_on": "zz_last, refund_issued"}),
        ("last", {"trigger": "zz_last", "exit_on": ""}),
    ):
        response = admin_client_logged_in.post(
            "/admin/journeys/journey/add/", journey_form(slug=slug, **overrides)
        )
        assert response.status_code == 302, response.content.decode()[:2000]
    assert Journey.objects.get(slug="first").exit_on == ["zz_last", "refund_issued"]


def test_no_event_received_leaves_the_built_in_and_configured_types(settings):
    settings.NUDGE_EXTRA_EVENT_TYPES = ["user_updated"]

    assert marketing_selectors.event_types_received() == []
    assert selectors.known_event_types() == {*EventType.values, "user_updated"}


def test_sends_list_filters_searches_and_cancels(admin_client_logged_in, demo_journeys):
    ingest(make_event("e1", "user_registered", user="ana", at=minutes_ago(5)))
    ids = list(ScheduledSend.objects.values_list("pk", flat=True))

    listing = admin_client_logged_in.get(
        "/admin/journeys/scheduledsend/", {"q": "ana", "status__exact": "pending"}
    )
    assert listing.status_code == 200
    assert (
        "welcome-email" in listing.content.decode() or "Welcome email" in listing.content.decode()
    )

    response = admin_client_logged_in.post(
        "/admin/journeys/scheduledsend/",
        {"action": "cancel_sends", "_selected_action": [str(i) for i in ids]},
        follow=True,
    )
    assert "Cancelled 2 send(s)." in response.content.decode()
    assert set(ScheduledSend.objects.values_list("reason", flat=True)) == {
        "cancelled by root in admin"
    }
