"""`GET /healthz`: 200 when the database and the broker answer, 503 naming what is down."""

from __future__ import annotations

import json
import os

import pytest
from django.db import connection

from tests.servers import closed_port, database_url, get, running_server


@pytest.mark.django_db
def test_healthz_is_ok_when_database_and_orm_broker_answer(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"db": "ok", "broker": "ok", "status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.fixture
def postgres_url(db) -> str:
    if connection.vendor != "postgresql":
        pytest.skip("needs the PostgreSQL started by scripts/services.sh")
    return database_url(connection)


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("NUDGE_TEST_REDIS_URL")
    if not url:
        pytest.skip("NUDGE_TEST_REDIS_URL unset: run through scripts/services.sh")
    return url


@pytest.mark.redis
def test_healthz_is_ok_with_the_redis_broker(postgres_url, redis_url):
    with running_server(DATABASE_URL=postgres_url, REDIS_URL=redis_url) as base:
        status, body, _ = get(f"{base}/healthz")

    assert status == 200, body
    assert json.loads(body) == {"db": "ok", "broker": "ok", "status": "ok"}


def test_healthz_names_the_redis_broker_when_it_is_down(postgres_url):
    redis_down = f"redis://127.0.0.1:{closed_port()}/0"
    with running_server(DATABASE_URL=postgres_url, REDIS_URL=redis_down) as base:
        status, body, _ = get(f"{base}/healthz")

    answer = json.loads(body)
    assert status == 503
    assert answer["db"] == "ok"
    assert answer["broker"].startswith("down")
    assert answer["down"] == ["broker"]


def test_healthz_names_the_database_when_it_is_down():
    database_down = f"postgres://nudge@127.0.0.1:{closed_port()}/nudge"
    with running_server(DATABASE_URL=database_down) as base:
        status, body, _ = get(f"{base}/healthz")

    answer = json.loads(body)
    assert status == 503
    assert answer["db"].startswith("down")
    assert "db" in answer["down"]
