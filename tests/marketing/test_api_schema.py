"""The OpenAPI schema documents both event endpoints and their answers."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_openapi_schema_lists_the_event_endpoints_and_their_answers(client):
    response = client.get("/api/schema/", {"format": "json"})

    assert response.status_code == 200
    paths = response.json()["paths"]
    answers = set(paths["/api/events/"]["post"]["responses"])
    assert answers == {"200", "202", "400", "401", "409", "411", "413", "503"}
    assert "/api/events/batch/" in paths


def test_api_docs_page_is_served_without_network_assets(client):
    response = client.get("/api/docs/")

    assert response.status_code == 200
    assert b"cdn" not in response.content.lower()


def schema_paths(client) -> dict:
    return client.get("/api/schema/", {"format": "json"}).json()["paths"]


def test_a_send_without_a_cart_is_declared_nullable(client):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    cart = schema["components"]["schemas"]["ScheduledSend"]["properties"]["cart"]

    assert cart["nullable"] is True


def test_json_only_endpoints_declare_json_bodies_only(client):
    paths = schema_paths(client)

    for path in ("/api/events/", "/api/events/batch/", "/api/sends/{send_id}/cancel/"):
        assert list(paths[path]["post"]["requestBody"]["content"]) == ["application/json"], path
    assert list(paths["/api/media/"]["post"]["requestBody"]["content"]) == ["multipart/form-data"]


def test_the_statuses_the_api_answers_are_documented(client):
    paths = schema_paths(client)
    answers = {
        (path, method): set(operation["responses"])
        for path, operations in paths.items()
        for method, operation in operations.items()
    }

    assert answers[("/api/events/batch/", "post")] == {"200", "400", "401", "411", "413", "503"}
    assert answers[("/api/sends/", "get")] == {"200", "400", "401", "403", "429", "503"}
    assert answers[("/api/journeys/{slug}/stats/", "get")] == {
        "200", "400", "401", "403", "404", "429", "503",
    }  # fmt: skip
    assert answers[("/api/sends/{send_id}/", "get")] >= {"200", "401", "403", "404", "429"}
    assert answers[("/api/sends/{send_id}/cancel/", "post")] >= {
        "200", "400", "401", "403", "404", "409", "415", "429",
    }  # fmt: skip
    assert answers[("/api/media/{id}/", "get")] >= {"200", "401", "403", "404", "429"}


def test_a_form_body_to_the_cancel_endpoint_is_415(client, marketer):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(marketer)

    response = api.post("/api/sends/1/cancel/", {"reason": "x"}, format="multipart")

    assert response.status_code == 415


@pytest.mark.parametrize(
    "path", ["/api/nope/", "/api/nope", "/api/sends/abc/", "/api/sends/-1/", "/api/a%0Ab/"]
)
def test_an_unknown_api_path_is_a_json_404(client, path):
    response = client.get(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found: no such API endpoint."}


def test_a_post_to_an_unknown_api_path_is_a_json_404_not_a_csrf_page(client):
    from django.test import Client

    response = Client(enforce_csrf_checks=True).post("/api/nope/", {})

    assert response.status_code == 404
    assert response.json()["detail"].startswith("Not found")


def test_an_endpoint_without_its_slash_still_redirects(client):
    response = client.get("/api/sends?limit=5")

    assert response.status_code == 301
    assert response["Location"] == "/api/sends/?limit=5"


def test_paths_outside_the_api_keep_the_sites_404(client):
    assert client.get("/nope/")["Content-Type"].startswith("text/html")
