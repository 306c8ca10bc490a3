"""`?limit=&offset=` on the sends list: at most 1,000 a page, and a bad value is a 400 that says
what is wrong, never a 503 from the database or a silently ignored parameter."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from nudge.api import Pagination
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("demo_journeys")]


@pytest.fixture
def api() -> APIClient:
    cache.clear()  # throttling counts
    user = User.objects.create_user("ops", password="x" * 12)
    user.user_permissions.add(*Permission.objects.filter(codename="view_scheduledsend"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def four_sends() -> None:
    ingest(make_event("e1", "user_registered", user="u_1", at=minutes_ago(31)))
    ingest(make_event("e2", "user_registered", user="u_2", at=minutes_ago(5)))
    dispatch_due()


def test_a_limit_beyond_bigint_is_a_400_not_a_database_error(api):
    response = api.get("/api/sends/", {"limit": "99999999999999999999"})

    assert response.status_code == 400
    assert response.json() == {"limit": ["must be a whole number from 1 to 1000 (ASCII digits)."]}


def test_a_limit_over_the_maximum_is_refused_rather_than_returning_every_row(api, four_sends):
    assert api.get("/api/sends/", {"limit": "1000000000"}).status_code == 400
    assert api.get("/api/sends/", {"limit": str(Pagination.max_limit + 1)}).status_code == 400

    page = api.get("/api/sends/", {"limit": str(Pagination.max_limit)})
    assert page.status_code == 200
    assert page.json()["count"] == 4


@pytest.mark.parametrize(
    "value",
    ["0", "-1", "abc", "", "1.5", " 5", "+5", "1_0", "\u0661\u0660", "\uff11\uff10", "5" * 30],
)
def test_a_malformed_limit_is_a_400(api, value):
    response = api.get("/api/sends/", {"limit": value})

    assert response.status_code == 400, response.content
    assert list(response.json()) == ["limit"]


@pytest.mark.parametrize("value", ["-1", "x", "\u0661", "1_0", "99999999999999999999"])
def test_a_malformed_offset_is_a_400(api, value):
    response = api.get("/api/sends/", {"offset": value})

    assert response.status_code == 400, response.content
    assert list(response.json()) == ["offset"]


def test_valid_limit_and_offset_page_through_the_sends(api, four_sends):
    first = api.get("/api/sends/", {"limit": "3"}).json()
    rest = api.get("/api/sends/", {"limit": "3", "offset": "3"}).json()
    beyond = api.get("/api/sends/", {"offset": "9223372036854775807"})

    assert (first["count"], len(first["results"]), len(rest["results"])) == (4, 3, 1)
    assert first["next"].endswith("limit=3&offset=3")
    assert {s["id"] for s in first["results"]}.isdisjoint(s["id"] for s in rest["results"])
    assert beyond.status_code == 200 and beyond.json()["results"] == []
    assert len(api.get("/api/sends/").json()["results"]) == 4  # default: 100 a page


def test_the_schema_states_the_bounds(client):
    parameters = client.get("/api/schema/", {"format": "json"}).json()["paths"]["/api/sends/"][
        "get"
    ]["parameters"]
    bounds = {p["name"]: p["schema"] for p in parameters if p["name"] in ("limit", "offset")}

    assert bounds["limit"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert bounds["offset"]["minimum"] == 0
