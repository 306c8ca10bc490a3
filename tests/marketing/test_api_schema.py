"""The OpenAPI schema documents both event endpoints and their answers."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_openapi_schema_lists_the_event_endpoints_and_their_answers(client):
    response = client.get("/api/schema/", {"format": "json"})

    assert response.status_code == 200
    paths = response.json()["paths"]
    answers = set(paths["/api/events/"]["post"]["responses"])
    assert answers == {"200", "202", "400", "401", "409", "413", "503"}
    assert "/api/events/batch/" in paths


def test_api_docs_page_is_served_without_network_assets(client):
    response = client.get("/api/docs/")

    assert response.status_code == 200
    assert b"cdn" not in response.content.lower()
