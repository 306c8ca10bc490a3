"""Standard Webhooks signatures: every forgery is a 401 that writes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from marketing.models import Customer, Event
from tests.webhook_client import OTHER_SECRET, SECRET, event, post_signed, signed_headers

pytestmark = pytest.mark.django_db

BODY = json.dumps(event()).encode()
KEY = base64.b64decode(SECRET.removeprefix("whsec_"))


def raw_signature(message: bytes, key: bytes = KEY) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def flip_byte(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


def post_raw(client, body: bytes, headers: dict[str, str]):
    return client.post("/api/events/", data=body, content_type="application/json", headers=headers)


Attack = Callable[[], tuple[bytes, dict[str, str]]]


def good() -> tuple[bytes, dict[str, str]]:
    return BODY, signed_headers(BODY)


def without_header(name: str) -> Attack:
    def attack():
        body, headers = good()
        del headers[name]
        return body, headers

    return attack


def with_header(name: str, value: Callable[[dict[str, str]], str]) -> Attack:
    def attack():
        body, headers = good()
        headers[name] = value(headers)
        return body, headers

    return attack


def signed_at(offset_seconds: int) -> Attack:
    def attack():
        return BODY, signed_headers(BODY, timestamp=int(time.time()) + offset_seconds)

    return attack


def flipped_signature() -> tuple[bytes, dict[str, str]]:
    body, headers = good()
    digest = base64.b64decode(headers["webhook-signature"].removeprefix("v1,"))
    headers["webhook-signature"] = "v1," + base64.b64encode(flip_byte(digest, 7)).decode()
    return body, headers


def body_changed(change: Callable[[bytes], bytes]) -> Attack:
    def attack():
        _, headers = good()
        return change(BODY), headers

    return attack


def signed_as(message: Callable[[str, str], bytes], key: bytes = KEY) -> Attack:
    """A well-formed v1 signature over something other than `id.timestamp.body`."""

    def attack():
        body, headers = good()
        signed = message(headers["webhook-id"], headers["webhook-timestamp"])
        headers["webhook-signature"] = "v1," + raw_signature(signed, key)
        return body, headers

    return attack


ATTACKS: dict[str, Attack] = {
    "unsigned": lambda: (BODY, {}),
    "missing webhook-id": without_header("webhook-id"),
    "missing webhook-timestamp": without_header("webhook-timestamp"),
    "missing webhook-signature": without_header("webhook-signature"),
    "wrong secret": lambda: (BODY, signed_headers(BODY, secret=OTHER_SECRET)),
    "flipped byte in body": body_changed(lambda b: flip_byte(b, 10)),
    "flipped byte in signature": flipped_signature,
    "re-serialised JSON": body_changed(lambda b: json.dumps(json.loads(b), indent=2).encode()),
    "trailing newline added to body": body_changed(lambda b: b + b"\n"),
    "body truncated": body_changed(lambda b: b[:-1]),
    "stale timestamp (6 minutes old)": signed_at(-360),
    "future timestamp (6 minutes ahead)": signed_at(+360),
    "ancient timestamp (epoch)": signed_at(-int(time.time()) + 1),
    "truncated signature": with_header("webhook-signature", lambda h: h["webhook-signature"][:-4]),
    "other version prefix v2": with_header(
        "webhook-signature", lambda h: "v2," + h["webhook-signature"].removeprefix("v1,")
    ),
    "no version prefix": with_header(
        "webhook-signature", lambda h: h["webhook-signature"].removeprefix("v1,")
    ),
    "empty signature": with_header("webhook-signature", lambda h: "v1,"),
    "blank signature header": with_header("webhook-signature", lambda h: " "),
    "non-base64 signature": with_header("webhook-signature", lambda h: "v1,not*base64!"),
    "several wrong signatures": with_header(
        "webhook-signature", lambda h: "v1,AAAA v1,BBBB v1a,CCCC v2,DDDD"
    ),
    "timestamp not numeric": with_header("webhook-timestamp", lambda h: "now"),
    "timestamp in milliseconds": with_header(
        "webhook-timestamp", lambda h: h["webhook-timestamp"] + "000"
    ),
    "timestamp negative": with_header("webhook-timestamp", lambda h: "-1"),
    "timestamp with non-ASCII digits": with_header("webhook-timestamp", lambda h: "١٧٦٤٣٣١٢٠٠"),
    "timestamp changed after signing": with_header(
        "webhook-timestamp", lambda h: str(int(h["webhook-timestamp"]) - 1)
    ),
    "signature for another message id": with_header("webhook-id", lambda h: "msg_someone_else"),
    "signature over the body alone": signed_as(lambda msg_id, ts: BODY),
    "signature over id and body, no timestamp": signed_as(lambda msg_id, ts: f"{msg_id}.".encode()),
    "key taken as the whsec_ text, not its bytes": signed_as(
        lambda msg_id, ts: f"{msg_id}.{ts}.".encode() + BODY, key=SECRET.encode()
    ),
    "signature header too long": with_header(
        "webhook-signature", lambda h: " ".join([h["webhook-signature"] + "x"] * 200)
    ),
    "message id too long": with_header("webhook-id", lambda h: "m" * 10_000),
}


def test_there_are_at_least_twenty_attacks():
    assert len(ATTACKS) >= 20


def test_a_correct_signature_is_accepted(client):
    body, headers = good()
    assert post_raw(client, body, headers).status_code == 202


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_forged_or_broken_signature_is_refused_with_401_and_nothing_written(client, attack):
    body, headers = attack()
    response = post_raw(client, body, headers)

    assert response.status_code == 401, response.content
    assert response.json()["detail"].startswith("Invalid signature")
    assert not Event.objects.exists()
    assert not Customer.objects.exists()


def test_a_valid_signature_among_several_is_accepted(client):
    body, headers = good()
    headers["webhook-signature"] = f"v2,AAAA v1,BBBB {headers['webhook-signature']}"
    assert post_raw(client, body, headers).status_code == 202


def test_timestamp_within_five_minutes_is_accepted(client):
    response = post_signed(client, "/api/events/", event(), timestamp=int(time.time()) - 280)
    assert response.status_code == 202


def test_during_rotation_both_active_secrets_are_accepted(client, settings):
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET, OTHER_SECRET]

    old = post_signed(client, "/api/events/", event("evt_old"), secret=SECRET)
    new = post_signed(client, "/api/events/", event("evt_new"), secret=OTHER_SECRET)

    assert (old.status_code, new.status_code) == (202, 202)


def test_after_rotation_the_retired_secret_is_refused(client, settings):
    settings.NUDGE_WEBHOOK_SECRETS = [OTHER_SECRET]

    response = post_signed(client, "/api/events/", event(), secret=SECRET)

    assert response.status_code == 401
    assert not Event.objects.exists()


def test_without_a_configured_secret_every_event_is_refused_and_the_sender_retries(
    client, settings
):
    settings.NUDGE_WEBHOOK_SECRETS = []

    response = post_signed(client, "/api/events/", event())

    assert response.status_code == 503
    assert not Event.objects.exists()


def test_webhook_secret_setting_holds_a_space_separated_list():
    project = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; "
            "print(settings.NUDGE_WEBHOOK_SECRETS)",
        ],
        cwd=project,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "NUDGE_WEBHOOK_SECRET": f"  {SECRET}   {OTHER_SECRET} ",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == repr([SECRET, OTHER_SECRET])
