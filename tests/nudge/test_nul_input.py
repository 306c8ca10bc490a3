"""A NUL character (%00) in a URL or a form answers 400, never 500: PostgreSQL refuses NUL in
text, and admin list filters and searches used to pass it into their queries."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from marketing.models import Customer

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client() -> Client:
    client = Client(raise_request_exception=False)  # a server error is a 500, as in production
    client.force_login(User.objects.create_superuser("root", password="unused-password"))
    return client


@pytest.mark.parametrize(
    "url",
    [
        "/admin/marketing/event/?type=%00",
        "/admin/marketing/customer/?timezone=%00",
        "/admin/marketing/customer/?q=%00",
        "/admin/marketing/event/?q=ev%00il",
        "/admin/journeys/scheduledsend/?q=%00",
        "/admin/marketing/customer/?%00=1",
    ],
)
def test_nul_in_an_admin_list_url_is_a_400(superuser_client, url):
    Customer.objects.create(external_id="u_1", email="u_1@example.com")

    response = superuser_client.get(url)

    assert response.status_code == 400
    assert "NUL character" in response.content.decode()


def test_the_same_filters_without_nul_still_work(superuser_client):
    for url in (
        "/admin/marketing/event/?type=checkout_started",
        "/admin/marketing/customer/?timezone=UTC",
        "/admin/marketing/customer/?q=u_1",
    ):
        assert superuser_client.get(url).status_code == 200, url


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_nul_in_an_admin_form_post_is_a_400(superuser_client, encoding):
    customer = Customer.objects.create(external_id="u_1", email="u_1@example.com")
    form = {"action": "delete_selected", "_selected_action": f"{customer.pk}\x00", "index": "0"}

    if encoding == "urlencoded":
        response = superuser_client.post(
            "/admin/marketing/customer/",
            urlencode(form),
            content_type="application/x-www-form-urlencoded",
        )
    else:
        response = superuser_client.post("/admin/marketing/customer/", form)

    assert response.status_code == 400
    assert Customer.objects.filter(pk=customer.pk).exists()


def test_nul_in_an_api_query_is_a_json_400():
    user = User.objects.create_superuser("api", password="unused-password")
    client = Client(
        raise_request_exception=False,
        HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}",
    )

    response = client.get("/api/sends/?customer=%00")

    assert response.status_code == 400
    assert response.json() == {
        "detail": "A NUL character (%00) is not allowed in the query string."
    }
