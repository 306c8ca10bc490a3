"""A fake messaging provider for the benchmark: one asyncio process, standard library only
(plus aiosmtpd for the optional SMTP sink), cheap on CPU because it shares the machine with
the system it measures.

    python -m bench.fake_provider --port P --calls-file PATH [--latency-ms 100]
        [--error-rate 0.0] [--rate-429 0.0] [--smtp-port Q] [--flush-ms 50]
        [--host 127.0.0.1] [--record-peer]

It prints `fake_provider listening on 127.0.0.1:P` (P is the bound port, so --port 0 works)
when both servers are ready, and stops cleanly on SIGTERM or SIGINT.

HTTP/1.1 with keep-alive (Content-Length bodies only; no chunked requests):

    POST /messages                                   the generic JSON protocol of
                                                     journeys.channels.sms.HttpBackend: 200 {"id"}
    POST /2010-04-01/Accounts/{Sid}/Messages.json    Twilio's Messages API, as the `twilio`
                                                     package calls it: 201 and a Message record
    POST /_control   {"down", "latency_ms", "error_rate", "rate_429", "refuse_seconds"}
                     (any subset; refuse_seconds: the HTTP listener and its connections
                     close for that long, connection refused, then it listens again)
    GET  /_stats     counters as JSON (flushes the calls file first)
    POST /_stats/reset

Every message request waits the latency (asyncio.sleep: requests overlap), whatever its
answer. Its fate is decided when it arrives: down or a random draw under --error-rate gives
503, a draw under --error-rate + --rate-429 gives 429 with `Retry-After: 1`; otherwise a known
idempotency key replays its provider id, and a new one is a delivery. Keys: the
`Idempotency-Key` header (generic), `I-Twilio-Idempotency-Token` (Twilio; no dedupe without
it). A delivery is recorded on arrival, so a client that times out during the latency and
retries with the same key gets a replay: what a real provider does.

Each delivery appends one line `<send id>` to the calls file, written in batches every
--flush-ms, on GET /_stats and at exit. The send id: the generic body's "send_id"; for Twilio
the `[send:<id>]` marker in Body, else the To number; for email the `X-Nudge-Send-Id` header,
else the `nudge-send-<id>` inside the Message-ID, else the whole Message-ID. With
--record-peer (HTTP only) each line is `<send id> <client address>`: which machine sent it.

With --messages-file, every generic message request also appends one JSON line, whatever
its answer: {"t": arrival (epoch s), "send_id", "status", "fate": delivered, replay or error,
"body"} (the chaos run's checker reads it).

With --smtp-port, an SMTP sink (aiosmtpd's protocol, on the same loop) answers each message
250 after the latency, or 451 when the faults above say 503 or 429; there is no dedupe.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import contextvars
import email.utils
import json
import logging
import os
import random
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from email.parser import BytesHeaderParser
from typing import Any
from urllib.parse import parse_qs

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
TWILIO_PATH = re.compile(r"/2010-04-01/Accounts/([^/]+)/Messages\.json")
SEND_MARKER = re.compile(r"\[send:([^\]\s]+)\]")
MESSAGE_ID_SEND = re.compile(r"nudge-send-(\d+)")
OUTAGE = "fake outage"
TOO_MANY = "Too Many Requests"

REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
}

# (status, body, extra header lines each ending in CRLF)
Answer = tuple[int, bytes, str]
# The client address of the HTTP connection a request came on (each connection is a task).
PEER: contextvars.ContextVar[str] = contextvars.ContextVar("peer", default="")


@dataclass
class Behaviour:
    """What /_control changes at runtime."""

    latency_ms: float = 100.0
    error_rate: float = 0.0
    rate_429: float = 0.0
    down: bool = False
    refuse_seconds: float = 0.0


@dataclass
class Stats:
    requests: int = 0  # message requests (generic, Twilio, SMTP messages), not /_control or /_stats
    deliveries: int = 0
    replays: int = 0
    errors_503: int = 0
    errors_429: int = 0
    inflight_max: int = 0


class CallsFile:
    """Send ids of deliveries, appended in batches: one write per flush interval."""

    def __init__(self, path: str, flush_s: float) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.flush_s = flush_s
        self.pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def append(self, send_id: str) -> None:
        self.pending.append(send_id)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.pending:
            data = ("\n".join(self.pending) + "\n").encode()
            self.pending = []
            while data:
                data = data[os.write(self.fd, data) :]

    def close(self) -> None:
        self.flush()
        os.close(self.fd)


def _json(payload: object) -> bytes:
    return json.dumps(payload).encode()


def _twilio_error(status: int, code: int, message: str) -> bytes:
    return _json(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
    )


def _response(status: int, body: bytes, extra: str, *, keep_alive: bool) -> bytes:
    close = "" if keep_alive else "Connection: close\r\n"
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}{close}\r\n"
    )
    return head.encode("latin-1") + body


def _refusal(status: int, message: str) -> bytes:
    """An answer after which the connection closes: the request cannot be read on."""
    return _response(status, _json({"message": message}), "", keep_alive=False)


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]] | None:
    """(method, path, version, headers with lower-case names) of a request head, or None."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            return None
        headers[name.strip().lower()] = value.strip()
    return method, target.partition("?")[0], version, headers


def _email_send_id(content: bytes) -> str:
    message = BytesHeaderParser().parsebytes(content)
    explicit = message.get("X-Nudge-Send-Id")
    if explicit:
        return "".join(str(explicit).split())
    message_id = "".join(str(message.get("Message-ID") or "").split())
    found = MESSAGE_ID_SEND.search(message_id)
    if found:
        return found.group(1)
    return message_id or "unknown"


class FakeProvider:
    # --messages-file: one JSON line per generic message request (see _message_log)
    messages: CallsFile | None = None
    # set by serve(): closes the HTTP listener for a while (/_control refuse_seconds)
    on_refuse: Any = None

    def __init__(self, behaviour: Behaviour, calls: CallsFile, record_peer: bool = False) -> None:
        self.behaviour = behaviour
        self.calls = calls
        self.record_peer = record_peer
        self.stats = Stats()
        self.inflight = 0
        self.keys: dict[str, str] = {}
        self.sequence = 0  # provider ids never repeat, even across /_stats/reset
        self._connections: set[asyncio.Task[None]] = set()

    # --- the message fate, shared by every protocol ----------------------------------------

    def _enter(self) -> None:
        self.stats.requests += 1
        self.inflight += 1
        if self.inflight > self.stats.inflight_max:
            self.stats.inflight_max = self.inflight

    def _fault(self) -> int | None:
        """503 or 429 when this request fails, counted; None when it goes through."""
        behaviour = self.behaviour
        if behaviour.down:
            self.stats.errors_503 += 1
            return 503
        if behaviour.error_rate or behaviour.rate_429:
            draw = random.random()
            if draw < behaviour.error_rate:
                self.stats.errors_503 += 1
                return 503
            if draw < behaviour.error_rate + behaviour.rate_429:
                self.stats.errors_429 += 1
                return 429
        return None

    def _deliver(self, key: str | None, send_id: str, prefix: str) -> str:
        """The provider id of this message: the known one of a replayed key, else a new id,
        and a delivery written to the calls file."""
        if key is not None:
            known = self.keys.get(key)
            if known is not None:
                self.stats.replays += 1
                return known
        self.sequence += 1
        provider_id = f"fake-{self.sequence}" if prefix == "fake" else f"SM{self.sequence:032x}"
        if key is not None:
            self.keys[key] = provider_id
        self.stats.deliveries += 1
        self.calls.append(f"{send_id} {PEER.get()}" if self.record_peer else send_id)
        return provider_id

    async def _wait(self) -> None:
        latency = self.behaviour.latency_ms
        if latency > 0:
            await asyncio.sleep(latency / 1000)

    # --- HTTP --------------------------------------------------------------------------------

    async def serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        PEER.set(str(peer[0]) if peer else "")
        try:
            await self._requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # shutdown (close_connections): end quietly, as asyncio 3.11's stream callback
            # reports a cancelled connection task as an unhandled exception
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client closed the connection between requests
            except asyncio.LimitOverrunError:
                writer.write(_refusal(431, "request head too large"))
                return
            parsed = _parse_head(head)
            if parsed is None:
                writer.write(_refusal(400, "bad request"))
                return
            method, path, version, headers = parsed
            if "transfer-encoding" in headers:
                writer.write(_refusal(501, "only Content-Length bodies"))
                return
            length_text = headers.get("content-length", "0")
            if not length_text.isdigit():
                writer.write(_refusal(400, "bad Content-Length"))
                return
            length = int(length_text)
            if length > MAX_BODY:
                writer.write(_refusal(413, "body too large"))
                return
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await reader.readexactly(length) if length else b""
            connection = headers.get("connection", "").lower()
            keep_alive = "close" not in connection and (
                version == "HTTP/1.1" or "keep-alive" in connection
            )
            status, payload, extra = await self._route(method, path, headers, body)
            writer.write(_response(status, payload, extra, keep_alive=keep_alive))
            await writer.drain()
            if not keep_alive:
                return

    async def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        if path == "/messages":
            if method != "POST":
                return 405, _json({"message": "POST only"}), ""
            return await self._generic(headers, body)
        twilio = TWILIO_PATH.fullmatch(path)
        if twilio:
            if method != "POST":
                return 405, _twilio_error(405, 20004, "Method not allowed"), ""
            return await self._twilio(twilio.group(1), headers, body)
        if path == "/_stats" and method == "GET":
            self.calls.flush()
            if self.messages is not None:
                self.messages.flush()
            return 200, _json(self.snapshot()), ""
        if path == "/_stats/reset" and method == "POST":
            self.stats = Stats(inflight_max=self.inflight)
            return 200, _json(self.snapshot()), ""
        if path == "/_control" and method == "POST":
            return self._control(body)
        if path in ("/_stats", "/_stats/reset", "/_control"):
            return 405, _json({"message": "method not allowed"}), ""
        return 404, _json({"message": f"no route {path}"}), ""

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.stats.requests,
            "deliveries": self.stats.deliveries,
            "replays": self.stats.replays,
            "errors_503": self.stats.errors_503,
            "errors_429": self.stats.errors_429,
            "inflight": self.inflight,
            "inflight_max": self.stats.inflight_max,
            "cpu_s": time.process_time(),
            "down": self.behaviour.down,
        }

    def _control(self, body: bytes) -> Answer:
        try:
            changes = json.loads(body or b"{}")
        except ValueError:
            return 400, _json({"message": "body is not JSON"}), ""
        if not isinstance(changes, dict):
            return 400, _json({"message": "body is a JSON object"}), ""
        known = {field.name for field in fields(Behaviour)}
        unknown = sorted(set(changes) - known)
        if unknown:
            return 400, _json({"message": f"unknown fields {unknown}"}), ""
        for name, value in changes.items():
            if name == "down":
                if not isinstance(value, bool):
                    return 400, _json({"message": "down is true or false"}), ""
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                return 400, _json({"message": f"{name} is a number >= 0"}), ""
            elif name not in ("latency_ms", "refuse_seconds") and value > 1:
                return 400, _json({"message": f"{name} is a fraction between 0 and 1"}), ""
        for name, value in changes.items():
            setattr(self.behaviour, name, value if name == "down" else float(value))
        if changes.get("refuse_seconds") and self.on_refuse is not None:
            self.on_refuse(float(changes["refuse_seconds"]))
        return 200, _json(asdict(self.behaviour)), ""

    def _message_log(self, data: dict[str, Any], status: int, replay: bool) -> None:
        """With --messages-file: {"t": arrival (epoch s), "send_id", "status", "fate":
        delivered, replay or error, "body"} for one generic message request."""
        if self.messages is not None:
            fate = "error" if status != 200 else "replay" if replay else "delivered"
            record = {"t": time.time(), "send_id": str(data["send_id"]), "status": status}
            record.update(fate=fate, body=str(data.get("body", "")))
            self.messages.append(json.dumps(record))

    async def _generic(self, headers: dict[str, str], body: bytes) -> Answer:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict) or "send_id" not in data or "to" not in data:
            self.stats.requests += 1
            return 400, _json({"message": "a JSON object with to, body and send_id"}), ""
        self._enter()
        try:
            replays = self.stats.replays
            fault = self._fault()
            if fault is None:
                provider_id = self._deliver(
                    headers.get("idempotency-key"), str(data["send_id"]), "fake"
                )
                answer: Answer = 200, b'{"id": "%s"}' % provider_id.encode(), ""
            elif fault == 429:
                answer = 429, _json({"message": TOO_MANY}), "Retry-After: 1\r\n"
            else:
                answer = 503, _json({"message": OUTAGE}), ""
            self._message_log(data, answer[0], self.stats.replays != replays)
            await self._wait()
            return answer
        finally:
            self.inflight -= 1

    async def _twilio(self, account_sid: str, headers: dict[str, str], body: bytes) -> Answer:
        if not _basic_auth_user(headers.get("authorization", "")):
            self.stats.requests += 1
            return 401, _twilio_error(401, 20003, "Authenticate"), ""
        form = {
            name: values[0]
            for name, values in parse_qs(body.decode("utf-8", "replace")).items()
            if values
        }
        to, text = form.get("To"), form.get("Body", "")
        sender, service = form.get("From"), form.get("MessagingServiceSid")
        problem = (
            (21604, "A 'To' phone number is required.")
            if not to
            else (21602, "Message body is required.")
            if not text and not form.get("MediaUrl")
            else (21603, "A 'From' phone number is required.")
            if not sender and not service
            else None
        )
        if problem is not None:
            self.stats.requests += 1
            return 400, _twilio_error(400, *problem), ""
        assert to is not None
        self._enter()
        try:
            fault = self._fault()
            if fault is None:
                marker = SEND_MARKER.search(text)
                token = headers.get("i-twilio-idempotency-token")
                sid = self._deliver(
                    f"twilio:{token}" if token else None,
                    marker.group(1) if marker else to,
                    "SM",
                )
                record = _twilio_message(account_sid, sid, to, text, sender, service)
                answer: Answer = 201, _json(record), ""
            elif fault == 429:
                answer = 429, _twilio_error(429, 20429, TOO_MANY), "Retry-After: 1\r\n"
            else:
                answer = 503, _twilio_error(503, 20503, OUTAGE), ""
            await self._wait()
            return answer
        finally:
            self.inflight -= 1

    # --- SMTP --------------------------------------------------------------------------------

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        """aiosmtpd's hook for one message (this object is the SMTP sink's handler)."""
        self._enter()
        try:
            fault = self._fault()
            if fault is None:
                content = envelope.original_content or b""
                self.sequence += 1
                self.stats.deliveries += 1
                self.calls.append(_email_send_id(content))
                answer = f"250 2.0.0 OK queued as fake-{self.sequence}"
            elif fault == 429:
                answer = "451 4.7.1 Too many messages, slow down"
            else:
                answer = f"451 4.3.0 {OUTAGE}"
            await self._wait()
            return answer
        finally:
            self.inflight -= 1

    async def close_connections(self) -> None:
        """Ends every HTTP connection, idle or waiting its latency (its answer is lost, as
        when a provider restarts; its delivery is already in the calls file)."""
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _basic_auth_user(header: str) -> str:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[0]


def _twilio_message(
    account_sid: str, sid: str, to: str, body: str, sender: str | None, service: str | None
) -> dict[str, Any]:
    """A Message record as Twilio answers a create (the fields MessageInstance reads)."""
    now = email.utils.formatdate(usegmt=True)
    uri = f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}"
    return {
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": now,
        "date_sent": None,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": sender,
        "messaging_service_sid": service,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued" if sender else "accepted",
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": to,
        "uri": f"{uri}.json",
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_provider", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0: any free port")
    parser.add_argument("--calls-file", required=True, help="one send id per delivery")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 503")
    parser.add_argument("--rate-429", type=float, default=0.0, help="fraction answered 429")
    parser.add_argument("--smtp-port", type=int, default=None, help="also an SMTP sink")
    parser.add_argument("--flush-ms", type=float, default=50.0, help="calls file batching")
    parser.add_argument(
        "--messages-file", help="also one JSON line per generic message request, any answer"
    )
    parser.add_argument(
        "--record-peer", action="store_true", help="calls file lines: <send id> <client address>"
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    calls = CallsFile(args.calls_file, args.flush_ms / 1000)
    provider = FakeProvider(
        Behaviour(latency_ms=args.latency_ms, error_rate=args.error_rate, rate_429=args.rate_429),
        calls,
        record_peer=args.record_peer,
    )
    servers: list[asyncio.AbstractServer] = []
    try:
        http = await asyncio.start_server(
            provider.serve_http, args.host, args.port, limit=MAX_HEAD, backlog=1024
        )
        servers.append(http)
        bound = http.sockets[0].getsockname()[1]  # the port, for listening again
        if args.messages_file:
            provider.messages = CallsFile(args.messages_file, args.flush_ms / 1000)

        async def refuse(seconds: float) -> None:
            await asyncio.sleep(0.05)  # the /_control answer goes out first
            servers[0].close()
            await provider.close_connections()
            await asyncio.sleep(seconds)
            servers[0] = await asyncio.start_server(
                provider.serve_http, args.host, bound, limit=MAX_HEAD, backlog=1024
            )
            provider.behaviour.refuse_seconds = 0.0

        refusing: set[asyncio.Task[None]] = set()  # a task only the loop holds may be collected

        def on_refuse(seconds: float) -> None:
            task = asyncio.ensure_future(refuse(seconds))
            refusing.add(task)
            task.add_done_callback(refusing.discard)

        provider.on_refuse = on_refuse
        if args.smtp_port is not None:
            from aiosmtpd.smtp import SMTP

            logging.getLogger("mail.log").setLevel(logging.WARNING)  # it logs every command
            servers.append(
                await loop.create_server(
                    lambda: SMTP(provider, hostname=args.host, loop=loop),
                    args.host,
                    args.smtp_port,
                    backlog=1024,
                )
            )
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        port = http.sockets[0].getsockname()[1]
        print(f"fake_provider listening on {args.host}:{port}", flush=True)
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        await provider.close_connections()
        calls.close()
        if provider.messages is not None:
            provider.messages.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
