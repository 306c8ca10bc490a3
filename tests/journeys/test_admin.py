from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.db.models import ProtectedError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from journeys import selectors
from journeys.models import Journey, JourneyStep, ScheduledSend
from marketing import selectors as marketing_selectors
from marketing.models import Customer, EventType
from marketing.services import marketer_user_ensure
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago

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


# --- sends outlive their journey ----------------------------------------------------------


@pytest.fixture
def marketer_client(client):
    marketer_user_ensure(username="marketer", password="m" * 12)
    client.login(username="marketer", password="m" * 12)
    return client


def sends_api() -> APIClient:
    """/api/sends/ as tests/journeys/test_sends_api.py reads it: a token with the view
    permission."""
    user, _ = User.objects.get_or_create(username="ops")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="journeys", codename="view_scheduledsend")
    )
    token, _ = Token.objects.get_or_create(user=user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return api


def journey_with_sends() -> tuple[Journey, set[int]]:
    ingest(make_event("e1", "user_registered", user="ana", at=minutes_ago(5)))
    journey = Journey.objects.get(slug="welcome-email")
    return journey, set(journey.sends.values_list("pk", flat=True))


def assert_journey_and_its_records_survive(journey: Journey, send_ids: set[int]) -> None:
    assert Journey.objects.filter(pk=journey.pk).exists()
    assert set(journey.sends.values_list("pk", flat=True)) == send_ids
    assert journey.enrollments.count() == 1
    listed = sends_api().get("/api/sends/", {"journey": journey.slug}).json()
    assert {item["id"] for item in listed["results"]} == send_ids


@pytest.mark.parametrize("who", ["superuser", "marketer"])
def test_a_journey_with_sends_cannot_be_deleted_and_its_sends_stay_listed(
    who, demo_journeys, request
):
    client = request.getfixturevalue(
        "admin_client_logged_in" if who == "superuser" else "marketer_client"
    )
    journey, send_ids = journey_with_sends()
    assert send_ids
    delete_url = f"/admin/journeys/journey/{journey.pk}/delete/"

    change_page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert delete_url not in change_page  # no Delete link
    assert 'value="Deactivate"' in change_page
    assert "so it cannot be deleted" in change_page

    for response in (
        client.get(delete_url, follow=True),
        client.post(delete_url, {"post": "yes"}, follow=True),
    ):
        assert response.status_code == 200
        assert response.redirect_chain[-1][0] == f"/admin/journeys/journey/{journey.pk}/change/"
        page = response.content.decode()
        assert "“Welcome email” has enrolments and sends" in page
        assert "so it cannot be deleted. Deactivate it instead" in page
    assert_journey_and_its_records_survive(journey, send_ids)

    # the list's bulk delete (the marketer is not offered it: posting it anyway is a 403)
    response = client.post(
        "/admin/journeys/journey/",
        {"action": "delete_selected", "_selected_action": [str(journey.pk)], "post": "yes"},
        follow=True,
    )
    assert response.status_code == (200 if who == "superuser" else 403)
    if who == "superuser":
        page = response.content.decode()
        assert "Cannot delete journey" in page
        assert "“Welcome email” has enrolments and sends" in page
    assert_journey_and_its_records_survive(journey, send_ids)


def test_protect_refuses_the_delete_below_the_admin_too(demo_journeys):
    journey, send_ids = journey_with_sends()

    with pytest.raises(ProtectedError):
        journey.delete()
    with pytest.raises(ProtectedError):
        journey.enrollments.get().delete()
    with pytest.raises(ProtectedError):
        Customer.objects.get(external_id="ana").delete()
    assert_journey_and_its_records_survive(journey, send_ids)


def test_the_deactivate_action_switches_journeys_off_and_dispatch_cancels_their_sends(
    marketer_client, demo_journeys
):
    journey, send_ids = journey_with_sends()
    other = Journey.objects.get(slug="signup-no-purchase-sms")

    response = marketer_client.post(
        "/admin/journeys/journey/",
        {"action": "deactivate_journeys", "_selected_action": [str(journey.pk)]},
        follow=True,
    )

    assert "Deactivated 1 journey(s)" in response.content.decode()
    journey.refresh_from_db()
    other.refresh_from_db()
    assert (journey.active, other.active) == (False, True)
    # nothing is cancelled at once: the dispatcher does it as the sends come due
    assert set(journey.sends.values_list("status", flat=True)) == {"pending"}
    journey.sends.update(due_at=minutes_ago(1))
    dispatch_due()
    assert set(journey.sends.values_list("status", "reason")) == {
        ("cancelled", "cancelled: journey deactivated")
    }
    assert_journey_and_its_records_survive(journey, send_ids)


def test_the_deactivate_button_of_the_change_page(marketer_client, demo_journeys):
    journey, _ = journey_with_sends()
    deactivate_url = f"/admin/journeys/journey/{journey.pk}/deactivate/"
    assert f'formaction="{deactivate_url}"' in (
        marketer_client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    )

    assert marketer_client.get(deactivate_url).status_code == 405
    response = marketer_client.post(deactivate_url, journey_form(), follow=True)

    assert response.redirect_chain[-1][0] == f"/admin/journeys/journey/{journey.pk}/change/"
    page = response.content.decode()
    assert "“Welcome email” is deactivated" in page
    assert 'value="Deactivate"' not in page  # already off
    journey.refresh_from_db()
    assert not journey.active
    assert journey.name == "Welcome email"  # the posted form is not saved


def test_a_superuser_can_still_delete_a_journey_without_sends(admin_client_logged_in):
    admin_client_logged_in.post("/admin/journeys/journey/add/", journey_form())
    journey = Journey.objects.get(slug="winback")
    delete_url = f"/admin/journeys/journey/{journey.pk}/delete/"
    assert delete_url in (
        admin_client_logged_in.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    )

    confirm = admin_client_logged_in.get(delete_url)
    assert confirm.status_code == 200
    assert "Are you sure you want to delete the journey" in confirm.content.decode()
    response = admin_client_logged_in.post(delete_url, {"post": "yes"})

    assert response.status_code == 302
    assert not Journey.objects.filter(slug="winback").exists()
    assert not JourneyStep.objects.exists()
