"""The real thing: a webhook on a live server, the ticker and a django-q2 cluster as separate
processes, and the outcome read back through /api/sends/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from rest_framework.authtoken.models import Token

from journeys import services
from tests.journeys.conftest import iso, make_event, minutes_ago
from tests.webhook_client import SECRET, signed_headers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

JOURNEYS = {
    "journeys": [
        {
            "slug": "quick-welcome",
            "name": "Quick welcome",
            "trigger": "user_registered",
            "exit_on": ["payment_finished"],
            "dedupe": "first",
            "reentry": "once",
            "max_lateness": "PT2H",
            "steps": [
                {
                    "delay": "PT3S",
                    "channel": "sms",
                    "template": {
                        "subject": None,
                        "body": "Hi {{ customer.first_name }}: {{ discount.code }}",
                    },
                    "discount": {"percent_off": 15, "valid_for": "P1D"},
                }
            ],
        }
    ]
}


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


@pytest.fixture(params=["orm", "redis"])
def workers(request) -> Iterator[None]:
    """The ticker and a messaging cluster, on django-q2's ORM broker or its Redis broker."""
    if connection.vendor != "postgresql":
        pytest.skip("the processes share the test database through PostgreSQL")
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "NUDGE_WEBHOOK_SECRET": SECRET,
        "Q_MESSAGING_WORKERS": "2",
        # the send of an event posted now goes out 1 s after its arrival at the earliest
        "NUDGE_SETTLE_SECONDS": "1",
    }
    env.pop("REDIS_URL", None)
    if request.param == "redis":
        if not os.environ.get("NUDGE_TEST_REDIS_URL"):
            pytest.skip("no Redis: run through make test")
        env["REDIS_URL"] = os.environ["NUDGE_TEST_REDIS_URL"]
    processes = [
        subprocess.Popen([sys.executable, "manage.py", command], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for command in ("qcluster", "nudge_ticker")
    ]  # fmt: skip
    yield
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def _post_event(base: str, payload: dict) -> int:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{base}/api/events/",
        data=body,
        headers={"Content-Type": "application/json", **signed_headers(body)},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def _sends(base: str, token: str, customer: str) -> list[dict]:
    request = urllib.request.Request(
        f"{base}/api/sends/?customer={customer}", headers={"Authorization": f"Token {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["results"]


def test_send_goes_out_through_qcluster_and_a_payment_cancels_another(
    live_server, settings, workers
):
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET]
    services.journeys_import(data=JOURNEYS)
    token = Token.objects.create(user=User.objects.create_superuser("ops", password="x" * 12)).key
    base = live_server.url

    assert (
        _post_event(base, make_event("e1", "user_registered", user="ana", at=minutes_ago(0))) == 202
    )
    assert (
        _post_event(base, make_event("e2", "user_registered", user="bob", at=minutes_ago(0))) == 202
    )
    payment = make_event(
        "e3", "payment_finished", user="bob", at=minutes_ago(0), cart="c_1", payment="p_7"
    )
    payment["occurred_at"] = iso(minutes_ago(-0.01))
    assert _post_event(base, payment) == 202

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ana = _sends(base, token, "ana")
        if ana and ana[0]["status"] == "sent":
            break
        time.sleep(0.5)
    (ana_send,) = _sends(base, token, "ana")
    assert ana_send["status"] == "sent", ana_send
    assert ana_send["body"] == f"Hi Ana: {ana_send['discount_code']}"
    assert ana_send["sent_at"] is not None
    (bob_send,) = _sends(base, token, "bob")
    assert (bob_send["status"], bob_send["reason"]) == ("cancelled", "cancelled by payment p_7")
