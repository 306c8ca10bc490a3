from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from journeys.models import ScheduledSend
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("demo_journeys")]


@pytest.fixture
def api() -> APIClient:
    user = User.objects.create_user("ops", password="x" * 12)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="journeys",
            codename__in=["view_scheduledsend", "change_scheduledsend"],
        )
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_lists_sends_with_the_documented_fields_and_filters(api):
    ingest(make_event("e1", "user_registered", user="u_1", at=minutes_ago(31)))
    ingest(make_event("e2", "user_registered", user="u_2", at=minutes_ago(5)))
    dispatch_due()

    everything = api.get("/api/sends/").json()
    assert everything["count"] == 4
    item = api.get("/api/sends/", {"customer": "u_1", "journey": "signup-no-purchase-sms"}).json()[
        "results"
    ][0]
    assert set(item) >= {
        "id", "journey", "step", "customer", "cart", "channel", "status", "reason",
        "due_at", "sent_at", "discount_code", "subject", "body",
    }  # fmt: skip
    assert (item["journey"], item["step"], item["customer"], item["channel"]) == (
        "signup-no-purchase-sms", 0, "u_1", "sms",
    )  # fmt: skip
    assert item["status"] == "sent" and item["discount_code"] in item["body"]
    pending = api.get("/api/sends/", {"status": "pending"}).json()
    assert {i["customer"] for i in pending["results"]} == {"u_2"}


def test_invalid_status_filter_is_a_400(api):
    response = api.get("/api/sends/", {"status": "lost"})
    assert response.status_code == 400
    assert "status" in response.json()


def test_cancel_a_pending_send_with_a_reason(api):
    ingest(make_event("e1", "user_registered", at=minutes_ago(5)))
    send = ScheduledSend.objects.filter(status="pending").first()

    response = api.post(
        f"/api/sends/{send.pk}/cancel/", {"reason": "customer asked"}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["reason"] == "cancelled by ops: customer asked"
    again = api.post(f"/api/sends/{send.pk}/cancel/", {}, format="json")
    assert again.status_code == 409
    assert api.post("/api/sends/999999/cancel/", {}, format="json").status_code == 404


def test_sends_need_authentication_and_permission():
    anonymous = APIClient()
    assert anonymous.get("/api/sends/").status_code == 401
    User.objects.create_user("nobody", password="x" * 12)
    logged_in = APIClient()
    logged_in.login(username="nobody", password="x" * 12)
    assert logged_in.get("/api/sends/").status_code == 403
