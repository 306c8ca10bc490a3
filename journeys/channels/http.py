"""A lean HTTP client for the providers' hot path: POSTs over keep-alive connections, one per
calling thread (dispatch's call threads), with the standard library's http.client.

Why not requests: at dispatch rates the client's own CPU time is the limit on a small
machine. Measured on loopback against bench/fake_provider.py (CPU per POST, one thread):
requests 1.5 ms (a third of it reading the proxy variables of os.environ on every call),
urllib3 0.5 ms, http.client 0.2 ms.

What it keeps of a full client:
- TLS with certificate and host name verification against the CA bundle requests would use:
  REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE when set, else certifi's (a private CA keeps working
  as it did with requests);
- separate connect and read timeouts;
- a kept connection that the server closed while idle is noticed before it is reused (the
  socket reads as ready: EOF), as urllib3 does, so an idle timeout costs no failed call;
- a proxy: when the environment names one for the URL (HTTPS_PROXY, HTTP_PROXY, NO_PROXY),
  `KeepAliveClient.for_url` returns None and the caller uses requests, which speaks proxies.

A request that fails on the network is never sent again here: the caller's retry (with its
idempotency key) decides.
"""

from __future__ import annotations

import http.client
import os
import select
import ssl
import threading
import urllib.request
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit

import certifi


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes
    reason: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class KeepAliveClient:
    """POST to one origin; thread-safe (each thread has its own connection)."""

    def __init__(self, url: str, *, timeout: tuple[float, float]) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme.lower() == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.connect_timeout, self.read_timeout = timeout
        self.context = _tls_context() if self.https else None
        self.local = threading.local()

    @classmethod
    def for_url(cls, url: str, *, timeout: tuple[float, float]) -> KeepAliveClient | None:
        """A client for `url`, or None when the environment routes it through a proxy."""
        parts = urlsplit(url)
        proxies = urllib.request.getproxies()
        scheme = parts.scheme.lower()
        if (proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(
            parts.hostname or ""
        ):
            return None
        return cls(url, timeout=timeout)

    def post(self, body: bytes, headers: dict[str, str]) -> Response:
        """Send one POST and read the whole answer. OSError or http.client.HTTPException on a
        network failure (socket timeouts are TimeoutError, an OSError); the connection is
        dropped then."""
        connection = self._connection()
        try:
            connection.request("POST", self.target, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException):
            self._drop()
            raise
        if answer.will_close:
            self._drop()
        return Response(status=answer.status, headers=answer.msg, body=data, reason=answer.reason)

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self.local, "connection", None)
        if connection is not None and _dropped(connection):
            self._drop()
            connection = None
        if connection is None:
            if self.context is not None:
                connection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.connect_timeout, context=self.context
                )
            else:
                connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.connect_timeout
                )
            try:
                connection.connect()
            except OSError:
                connection.close()
                raise
            assert connection.sock is not None
            connection.sock.settimeout(self.read_timeout)
            self.local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self.local, "connection", None)
        if connection is not None:
            connection.close()
        self.local.connection = None


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """An idle kept connection is readable only when the server closed it (or sent what it
    should not have): either way it is not reused."""
    sock = connection.sock
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _tls_context() -> ssl.SSLContext:
    """Verify certificates and host names against requests' CA bundle (module docstring)."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle or certifi.where())
