"""scripts/send_event.py and the README's signed curl, against a live server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from marketing.models import Cart, Event, Payment
from tests.servers import PROJECT
from tests.webhook_client import OTHER_SECRET, SECRET

pytestmark = pytest.mark.django_db(transaction=True)


def send_event(live_server, *args: str, cwd=PROJECT, secret: str | None = SECRET):
    env = {k: v for k, v in os.environ.items() if k != "NUDGE_WEBHOOK_SECRET"}
    if secret is not None:
        env["NUDGE_WEBHOOK_SECRET"] = secret
    return subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "send_event.py"), *args],
        env={**env, "NUDGE_URL": f"{live_server.url}/api/events/"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_send_event_posts_a_signed_event_that_is_accepted(live_server):
    result = send_event(live_server, "--user", "u_script", "--id", "evt_script")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("202 ")
    stored = Event.objects.get()
    assert stored.customer is not None
    assert (stored.event_id, stored.type, stored.customer.external_id) == (
        "evt_script",
        "user_registered",
        "u_script",
    )


def test_send_event_repeated_is_answered_200(live_server):
    same = ["--id", "evt_again", "--occurred-at", "2026-11-28T12:00:00Z"]
    send_event(live_server, *same)
    again = send_event(live_server, *same)

    assert again.returncode == 0
    assert again.stdout.startswith("200 ")


def test_send_event_sends_checkout_and_payment(live_server):
    checkout = send_event(live_server, "--type", "checkout_started", "--cart", "c_9")
    paid = send_event(
        live_server, "--type", "payment_finished", "--cart", "c_9", "--payment", "p_9"
    )

    assert (checkout.returncode, paid.returncode) == (0, 0), checkout.stdout + paid.stdout
    assert Payment.objects.get().cart == Cart.objects.get(external_id="c_9")


def test_send_event_reads_the_first_secret_from_dot_env(live_server, tmp_path, settings):
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET, OTHER_SECRET]
    (tmp_path / ".env").write_text(f'DEBUG=true\nNUDGE_WEBHOOK_SECRET="{SECRET} {OTHER_SECRET}"\n')

    result = send_event(live_server, cwd=tmp_path, secret=None)

    assert result.returncode == 0, result.stdout + result.stderr


def test_send_event_exits_non_zero_when_refused(live_server):
    result = send_event(live_server, secret=OTHER_SECRET)

    assert result.returncode == 1
    assert result.stdout.startswith("401 ")
    assert not Event.objects.exists()


def test_the_readmes_signed_curl_is_accepted(live_server):
    readme = (PROJECT / "README.md").read_text()
    snippet = re.search(
        r"<!-- signed-curl:start -->\n```sh\n(.*?)```\n<!-- signed-curl:end -->", readme, re.S
    )
    assert snippet, "README lost its signed curl example"

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", snippet.group(1)],
        env={
            **os.environ,
            "NUDGE_WEBHOOK_SECRET": SECRET,
            "NUDGE_URL": f"{live_server.url}/api/events/",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("202"), result.stdout
    assert Event.objects.get().event_id == "evt_curl_1"
