"""The benchmark's fake provider (bench/fake_provider.py), as a real subprocess, driven by the
clients Nudge uses: requests, the `twilio` package, smtplib."""

from __future__ import annotations

import select
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from journeys.channels import ChannelError, OutgoingMessage
from journeys.channels.sms import sms_backend, sms_url_parse
from tests.servers import PROJECT, free_port

ACCOUNT = "AC" + "0" * 32


@dataclass
class Provider:
    process: subprocess.Popen[str]
    url: str
    calls_file: Path
    smtp_port: int | None

    def post(self, body: dict[str, object], key: str | None = None) -> requests.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return requests.post(f"{self.url}/messages", json=body, headers=headers, timeout=10)

    def control(self, **changes: object) -> None:
        response = requests.post(f"{self.url}/_control", json=changes, timeout=10)
        assert response.status_code == 200, response.text

    def stats(self) -> dict[str, object]:
        return requests.get(f"{self.url}/_stats", timeout=10).json()

    def calls(self) -> list[str]:
        """The send ids delivered so far (asking for the stats flushes the file)."""
        if self.process.poll() is None:
            self.stats()
        return self.calls_file.read_text().splitlines()

    def twilio(self) -> Client:
        client = Client(ACCOUNT, "secret-token")
        client.api.base_url = self.url
        return client


@pytest.fixture
def start_provider(tmp_path: Path) -> Iterator[Callable[..., Provider]]:
    """Starts the fake provider with command-line options; stops every one it started."""
    started: list[subprocess.Popen[str]] = []

    def start(*options: str, smtp: bool = False) -> Provider:
        calls_file = tmp_path / f"calls-{len(started)}.txt"
        smtp_port = free_port() if smtp else None
        command = [sys.executable, "-m", "bench.fake_provider", "--port", "0"]
        command += ["--calls-file", str(calls_file), *options]
        if smtp_port is not None:
            command += ["--smtp-port", str(smtp_port)]
        process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 10)
        assert ready, "the fake provider did not start within 10 s"
        line = process.stdout.readline().strip()
        assert line.startswith("fake_provider listening on 127.0.0.1:"), line
        url = "http://" + line.rpartition(" ")[2]
        return Provider(process, url, calls_file, smtp_port)

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)


def test_a_generic_message_is_accepted_with_an_id(start_provider):
    provider = start_provider("--latency-ms", "0")

    response = provider.post({"to": "+14155550101", "body": "hi", "send_id": 7}, key="k-7")

    assert response.status_code == 200
    assert response.json()["id"].startswith("fake-")
    assert provider.stats()["deliveries"] == 1
    assert provider.calls() == ["7"]


def test_a_repeated_idempotency_key_replays_the_id_and_delivers_once(start_provider):
    provider = start_provider("--latency-ms", "0")
    message = {"to": "+14155550101", "body": "hi", "send_id": 8}

    first = provider.post(message, key="nudge-send-8")
    again = provider.post(message, key="nudge-send-8")
    other = provider.post({**message, "send_id": 9}, key="nudge-send-9")

    assert first.json() == again.json()
    assert other.json() != first.json()
    stats = provider.stats()
    assert (stats["requests"], stats["deliveries"], stats["replays"]) == (3, 2, 1)
    assert provider.calls() == ["8", "9"]


def test_the_twilio_client_creates_messages_and_reads_twilio_errors(start_provider):
    provider = start_provider("--latency-ms", "0")
    client = provider.twilio()

    sent = client.messages.create(to="+14155550101", from_="+14155550100", body="hi [send:42]")
    by_service = client.messages.create(
        to="+14155550102", messaging_service_sid="MG" + "1" * 32, body="no marker"
    )

    assert sent.sid.startswith("SM") and len(sent.sid) == 34
    assert (sent.status, sent.to, sent.from_, sent.body) == (
        "queued", "+14155550101", "+14155550100", "hi [send:42]",
    )  # fmt: skip
    assert sent.account_sid == ACCOUNT and sent.date_created is not None
    assert by_service.sid != sent.sid
    assert provider.calls() == ["42", "+14155550102"]

    provider.control(rate_429=1.0)
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to="+14155550101", from_="+14155550100", body="hi")
    assert (raised.value.status, raised.value.code) == (429, 20429)


def test_twilio_idempotency_token_replays_the_sid(start_provider):
    provider = start_provider("--latency-ms", "0")
    url = f"{provider.url}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    form = {"To": "+14155550101", "From": "+14155550100", "Body": "hi [send:5]"}

    def create() -> requests.Response:
        return requests.post(
            url,
            data=form,
            auth=(ACCOUNT, "secret-token"),
            headers={"I-Twilio-Idempotency-Token": "token-5"},
            timeout=10,
        )

    first, again = create(), create()
    unauthenticated = requests.post(url, data=form, timeout=10)

    assert first.status_code == again.status_code == 201
    assert first.json()["sid"] == again.json()["sid"]
    assert unauthenticated.status_code == 401
    assert provider.calls() == ["5"]


def test_down_answers_503_until_back_up_and_faults_are_transient_answers(start_provider):
    provider = start_provider("--latency-ms", "0")
    message = {"to": "+14155550101", "body": "hi", "send_id": 1}

    provider.control(down=True)
    down = provider.post(message, key="k-1")
    provider.control(down=False)
    back = provider.post(message, key="k-1")
    provider.control(rate_429=1.0)
    limited = provider.post(message, key="k-2")
    provider.control(rate_429=0.0, error_rate=1.0)
    failing = provider.post(message, key="k-3")

    assert (down.status_code, down.json()) == (503, {"message": "fake outage"})
    assert back.status_code == 200
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "1")
    assert failing.status_code == 503
    stats = provider.stats()
    assert (stats["errors_503"], stats["errors_429"], stats["deliveries"]) == (2, 1, 1)
    assert provider.calls() == ["1"]


def test_requests_wait_the_latency_concurrently(start_provider):
    provider = start_provider("--latency-ms", "200")
    sessions = [requests.Session() for _ in range(100)]

    def send(n: int) -> int:
        body = {"to": "+14155550101", "body": "hi", "send_id": n}
        response = sessions[n].post(f"{provider.url}/messages", json=body, timeout=10)
        return response.status_code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=100) as pool:
        statuses = list(pool.map(send, range(100)))
    elapsed = time.monotonic() - started

    assert statuses == [200] * 100
    assert elapsed < 2.0  # one after the other: 20 s
    stats = provider.stats()
    assert stats["deliveries"] == 100
    assert stats["inflight"] == 0
    assert stats["inflight_max"] >= 50
    assert sorted(map(int, provider.calls())) == list(range(100))

    requests.post(f"{provider.url}/_stats/reset", timeout=10)
    assert provider.stats()["inflight_max"] == 0


def test_nudges_own_sms_backends_send_through_it(start_provider):
    provider = start_provider("--latency-ms", "0")
    host = provider.url.removeprefix("http://")
    generic = sms_backend(
        sms_url_parse(f"{provider.url}/messages"), http_secret="whsec_" + "A" * 32
    )
    twilio = sms_backend(
        sms_url_parse(f"twilio://{ACCOUNT}:token@{host}?from=+14155550100&scheme=http")
    )

    def message(send_id: int) -> OutgoingMessage:
        return OutgoingMessage(send_id, "sms", "+14155550101", "", f"hi [send:{send_id}]")

    generic_id, retried_id = generic.send(message(1)), generic.send(message(1))
    sid = twilio.send(message(2))
    provider.control(rate_429=1.0)
    with pytest.raises(ChannelError) as throttled:
        generic.send(message(3))

    assert generic_id == retried_id and generic_id.startswith("fake-")
    assert sid.startswith("SM")
    assert (throttled.value.retryable, throttled.value.retry_after) == (True, 1.0)
    assert provider.calls() == ["1", "2"]


def test_sigterm_flushes_the_calls_file(start_provider):
    provider = start_provider("--latency-ms", "0", "--flush-ms", "60000")
    for n in range(20):
        provider.post({"to": "+14155550101", "body": "hi", "send_id": n}, key=f"k-{n}")
    assert provider.calls_file.read_text() == ""  # still batched

    provider.process.send_signal(signal.SIGTERM)

    assert provider.process.wait(timeout=10) == 0
    assert provider.calls() == [str(n) for n in range(20)]


def test_the_smtp_sink_delivers_after_the_latency(start_provider):
    provider = start_provider("--latency-ms", "100", smtp=True)
    messages = []
    for headers in ({"X-Nudge-Send-Id": "31"}, {"Message-ID": "<1.2.nudge-send-32@shop.example>"}):
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "a@shop.example", "b@x.example", "s"
        for name, value in headers.items():
            message[name] = value
        message.set_content("hello")
        messages.append(message)

    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", provider.smtp_port, timeout=10) as smtp:
        for message in messages:
            smtp.send_message(message)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.2
    assert provider.stats()["deliveries"] == 2
    assert provider.calls() == ["31", "32"]
