"""With the database unreachable, events are answered 503 so the sender retries.

A real server (gunicorn) whose DATABASE_URL points at a closed port: nothing is mocked.
"""

from __future__ import annotations

import json

import pytest

from tests.servers import closed_port, get, running_server
from tests.webhook_client import SECRET, event, signed_headers

# One worker starts the module's server for every test here.
pytestmark = pytest.mark.xdist_group("database_down")


@pytest.fixture(scope="module")
def server_without_database():
    with running_server(
        DATABASE_URL=f"postgres://nudge@127.0.0.1:{closed_port()}/nudge",
        NUDGE_WEBHOOK_SECRET=SECRET,
    ) as base:
        yield base


@pytest.mark.parametrize(
    ("path", "payload"),
    [("/api/events/", event()), ("/api/events/batch/", {"events": [event()]})],
    ids=["single", "batch"],
)
def test_signed_event_is_answered_503_with_retry_after_when_the_database_is_down(
    server_without_database, path, payload
):
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **signed_headers(body)}

    status, answer, response_headers = get(
        server_without_database + path, data=body, headers=headers
    )

    assert status == 503, answer
    assert json.loads(answer)["detail"] == "Database unavailable, retry later."
    assert response_headers["Retry-After"] == "5"


def test_a_bad_signature_is_still_401_when_the_database_is_down(server_without_database):
    body = json.dumps(event()).encode()
    headers = {"Content-Type": "application/json", **signed_headers(body)}

    status, _, _ = get(server_without_database + "/api/events/", data=body + b" ", headers=headers)

    assert status == 401
