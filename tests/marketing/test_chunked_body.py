"""A signed event sent with `Transfer-Encoding: chunked` (no Content-Length) is read whole:
gunicorn de-chunks the body, which Django alone would read as empty (and answer 401, "no valid
v1 signature"). Beyond the size limit it is a 413; on a server that does not de-chunk, a 411.

A real gunicorn and a raw HTTP/1.1 request over a socket: no client library re-frames it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connection

from marketing.models import Event
from tests.servers import database_url, running_server
from tests.webhook_client import SECRET, event, signed_headers

# One worker starts the module's server for every test here.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chunked_body")]


@pytest.fixture(scope="module")
def server(django_db_setup) -> Iterator[str]:
    if connection.vendor != "postgresql":
        pytest.skip("needs the PostgreSQL started by scripts/services.sh")
    with running_server(DATABASE_URL=database_url(connection), NUDGE_WEBHOOK_SECRET=SECRET) as base:
        yield base


def post_chunked(base: str, path: str, body: bytes, *, chunk: int = 1000) -> tuple[int, dict]:
    """POST `body` in chunks of `chunk` bytes; (status, JSON answer)."""
    host, port = base.removeprefix("http://").split(":")
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
        "Connection: close",
        *(f"{name}: {value}" for name, value in signed_headers(body).items()),
    ]
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + chunk]), body[i : i + chunk])
        for i in range(0, len(body), chunk)
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + framed + b"0\r\n\r\n")
        answer = b""
        while part := sock.recv(65536):
            answer += part
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload) if payload else {}


@pytest.mark.django_db(transaction=True)
def test_a_chunked_signed_event_is_accepted(server):
    payload = event("evt_chunked")
    payload["padding"] = "x" * 5000  # several chunks

    status, answer = post_chunked(server, "/api/events/", json.dumps(payload).encode())

    assert status == 202, answer
    assert Event.objects.get(event_id="evt_chunked").payload["padding"] == "x" * 5000


@pytest.mark.django_db(transaction=True)
def test_a_chunked_batch_is_accepted(server):
    body = json.dumps({"events": [event(f"evt_c{n}") for n in range(20)]}).encode()

    status, answer = post_chunked(server, "/api/events/batch/", body, chunk=333)

    assert status == 200, answer
    assert answer["accepted"] == 20


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_over_the_limit_is_a_413(server):
    payload = event("evt_huge")
    payload["padding"] = "x" * (settings.NUDGE_EVENT_MAX_BYTES + 1)

    status, answer = post_chunked(server, "/api/events/", json.dumps(payload).encode(), chunk=65536)

    assert status == 413, answer
    assert not Event.objects.filter(event_id="evt_huge").exists()


@pytest.mark.django_db
def test_a_chunked_body_the_server_did_not_dechunk_is_a_411(client):
    """Django's test server, like runserver, hands over no de-chunked stream."""
    body = json.dumps(event()).encode()

    response = client.generic(
        "POST",
        "/api/events/",
        body,
        content_type="application/json",
        headers={**signed_headers(body), "Transfer-Encoding": "chunked"},
        CONTENT_LENGTH="",
    )

    assert response.status_code == 411
    assert "Content-Length" in response.json()["detail"]
