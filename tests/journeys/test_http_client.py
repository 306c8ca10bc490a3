"""journeys.channels.http, the generic SMS backend's keep-alive client, against real sockets:
connections are kept and reused, one the server closed while idle costs no failed call, TLS
verifies against requests' CA bundle, and a proxy in the environment routes the call through
requests and the proxy."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from journeys.channels import ChannelError, OutgoingMessage
from journeys.channels.http import KeepAliveClient
from journeys.channels.sms import HttpBackend

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"
TIMEOUT = (2.0, 2.0)


class Server:
    """An HTTP/1.1 server that keeps connections open and records, per request, the client's
    port (one port = one connection) and the request line's target."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[int, str]] = []
        self.open: list[socket.socket] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                server.open.append(self.connection)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append((self.client_address[1], self.path))
                data = json.dumps({"id": f"msg_{len(server.requests)}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close_idle_connections(self) -> None:
        for sock in self.open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def message(send_id: int = 1) -> OutgoingMessage:
    return OutgoingMessage(
        send_id=send_id, channel="sms", recipient="+15005550006", subject="", body="Hello"
    )


def test_calls_from_one_thread_share_one_kept_connection(server: Server):
    client = KeepAliveClient(f"http://127.0.0.1:{server.port}/messages", timeout=TIMEOUT)
    answers = [client.post(b"{}", {"Content-Type": "application/json"}) for _ in range(5)]
    assert [a.status for a in answers] == [200] * 5
    assert json.loads(answers[-1].body) == {"id": "msg_5"}
    assert len({port for port, _ in server.requests}) == 1
    assert {path for _, path in server.requests} == {"/messages"}


def test_each_calling_thread_has_its_own_connection(server: Server):
    client = KeepAliveClient(f"http://127.0.0.1:{server.port}/messages", timeout=TIMEOUT)

    def three_calls() -> None:
        for _ in range(3):
            client.post(b"{}", {})

    threads = [threading.Thread(target=three_calls) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ports = [port for port, _ in server.requests]
    assert len(ports) == 12
    assert len(set(ports)) == 4


def test_a_connection_the_server_closed_while_idle_costs_no_failed_call(server: Server):
    backend = HttpBackend(
        f"http://127.0.0.1:{server.port}/messages", secret=SECRET, timeout=TIMEOUT
    )
    assert backend.client is not None
    assert backend.send(message(1)) == "msg_1"
    server.close_idle_connections()
    assert backend.send(message(2)) == "msg_2"
    first, second = (port for port, _ in server.requests)
    assert first != second


def test_a_server_that_does_not_answer_in_time_is_a_retryable_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        port = listener.getsockname()[1]
        backend = HttpBackend(
            f"http://127.0.0.1:{port}/messages", secret=SECRET, timeout=(1.0, 0.3)
        )
        with pytest.raises(ChannelError, match="timed out") as raised:
            backend.send(message())
        assert raised.value.retryable
    finally:
        listener.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (not 127.0.0.1), made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    running = Server(context)
    yield running
    running.stop()


def test_tls_refuses_a_certificate_no_trusted_ca_signed(tls_server: Server):
    backend = HttpBackend(
        f"https://localhost:{tls_server.port}/messages", secret=SECRET, timeout=TIMEOUT
    )
    with pytest.raises(ChannelError, match="CERTIFICATE_VERIFY_FAILED"):
        backend.send(message())
    assert tls_server.requests == []


def test_tls_trusts_the_ca_bundle_requests_would_use(
    tls_server: Server, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    backend = HttpBackend(
        f"https://localhost:{tls_server.port}/messages", secret=SECRET, timeout=TIMEOUT
    )
    assert backend.client is not None
    assert backend.send(message(1)) == "msg_1"
    assert backend.send(message(2)) == "msg_2"
    assert len({port for port, _ in tls_server.requests}) == 1


def test_tls_checks_the_host_name(
    tls_server: Server, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    # the certificate names localhost, and 127.0.0.1 is the same server under another name
    backend = HttpBackend(
        f"https://127.0.0.1:{tls_server.port}/messages", secret=SECRET, timeout=TIMEOUT
    )
    with pytest.raises(ChannelError, match=r"CERTIFICATE_VERIFY_FAILED.*(mismatch|match)"):
        backend.send(message())


def test_a_proxy_in_the_environment_carries_the_call(
    server: Server, monkeypatch: pytest.MonkeyPatch
):
    # the test server stands in for the proxy: a proxied request names the whole URL
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    backend = HttpBackend("http://sms.provider.invalid/messages", secret=SECRET, timeout=TIMEOUT)
    assert backend.client is None
    assert backend.send(message()) == "msg_1"
    assert [path for _, path in server.requests] == ["http://sms.provider.invalid/messages"]


def test_no_proxy_keeps_the_call_direct(server: Server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    backend = HttpBackend(
        f"http://127.0.0.1:{server.port}/messages", secret=SECRET, timeout=TIMEOUT
    )
    assert backend.client is not None
    assert backend.send(message()) == "msg_1"
    assert [path for _, path in server.requests] == ["/messages"]
