"""The SMS channel: one setting, NUDGE_SMS_URL, chooses where text messages go.

    console:                                  printed to stdout (the messaging worker's output)
    file:///dir                               one JSON line per message appended to dir/sms.jsonl
    twilio://SID:TOKEN@api.twilio.com?from=+1…   Twilio's Messages API (or messaging_service=MG…)
    https://… or http://…                     the generic JSON protocol below, signed with
                                              Standard Webhooks headers (NUDGE_SMS_HTTP_SECRET)

The generic protocol: POST {"to", "body", "send_id", "idempotency_key"} with an
`Idempotency-Key` header. A 2xx carrying {"id": "…"} is accepted; 408, 429 and 5xx are
transient (`Retry-After` is read); any other 4xx is permanent. Timeouts (connect 5 s, read
10 s; `?connect_timeout=`, `?timeout=`) are transient.

Also here, as pure functions: `phone_normalise` (E.164, with `phonenumbers`) and
`sms_segments` (GSM-7 or UCS-2 segment count).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import phonenumbers
import requests
from django.conf import settings

from journeys.channels import ChannelError, OutgoingMessage
from journeys.channels.http import KeepAliveClient

ACCEPTED_FORMS = (
    "console:, file:///dir, twilio://ACCOUNT_SID:AUTH_TOKEN@api.twilio.com?from=+1… "
    "(or messaging_service=MG…), https://… or http://… (generic JSON backend)"
)
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0


# --- phone numbers --------------------------------------------------------------------------

_NOT_POSSIBLE = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.ValidationResult.TOO_SHORT: "too short",
    phonenumbers.ValidationResult.INVALID_LENGTH: "invalid length",
    phonenumbers.ValidationResult.TOO_LONG: "too long",
}


@lru_cache(maxsize=4096)
def phone_normalise(raw: str) -> str:
    """The number in E.164 (+14155550101); ValueError saying why when it does not parse or
    is not a valid number. Numbers are international: without a leading + there is no
    country to read them in."""
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"{raw} ({exc._msg.rstrip('.').lower()})") from None
    if not phonenumbers.is_valid_number(number):
        why = _NOT_POSSIBLE.get(phonenumbers.is_possible_number_with_reason(number))
        raise ValueError(f"{raw} ({why or 'not a number in use'})")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --- segments -------------------------------------------------------------------------------

# GSM 03.38: the default alphabet (one septet each; ESC, 0x1B, left out) and its extension
# table (ESC + a septet: two each).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


def sms_segments(text: str) -> int:
    """How many SMS segments `text` takes: GSM-7 when every character is in the GSM-7
    alphabet (extension characters count two septets), 160 in one segment or 153 per segment
    when concatenated; otherwise UCS-2, 70 UTF-16 units in one or 67 per segment. A
    character (an escape pair, a surrogate pair) is never split across segments, as phones
    and providers split them. 0 for an empty text."""
    if not text:
        return 0
    if all(ch in _GSM7_BASIC or ch in _GSM7_EXTENSION for ch in text):
        costs = [2 if ch in _GSM7_EXTENSION else 1 for ch in text]
        single, per_part = 160, 153
    else:
        costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
        single, per_part = 70, 67
    if sum(costs) <= single:
        return 1
    segments, used = 1, 0
    for cost in costs:
        if used + cost > per_part:
            segments, used = segments + 1, 0
        used += cost
    return segments


# --- backends -------------------------------------------------------------------------------


def _request_fields(message: OutgoingMessage) -> dict[str, object]:
    """What every backend hands on of an SMS: the generic protocol's request body, and the
    file backend's line (which adds the segments and the time)."""
    return {
        "to": message.recipient,
        "body": message.body,
        "send_id": message.send_id,
        "idempotency_key": message.idempotency_key,
    }


def _segments(message: OutgoingMessage) -> int:
    """The count dispatch recorded on the send; counted here only for a message built
    elsewhere (a test, a shell)."""
    return message.segments if message.segments is not None else sms_segments(message.body)


class SmsBackend(Protocol):
    def send(self, message: OutgoingMessage) -> str: ...


class ConsoleBackend:
    """Prints each SMS to stdout: under `make run`, the messaging worker's output."""

    provider = "console"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def send(self, message: OutgoingMessage) -> str:
        text = (
            f"--- SMS to {message.recipient} (send {message.send_id}, "
            f"{_segments(message)} segment(s))\n{message.body}\n---\n"
        )
        with self._lock:
            sys.stdout.write(text)
            sys.stdout.flush()
        return f"console:{message.send_id}"


class FileBackend:
    """Appends one JSON line per SMS to `<dir>/sms.jsonl` (one write each, O_APPEND: lines
    of several workers do not interleave)."""

    provider = "file"

    def __init__(self, directory: Path) -> None:
        self.path = directory / "sms.jsonl"

    def send(self, message: OutgoingMessage) -> str:
        line = json.dumps(
            {
                **_request_fields(message),
                "segments": _segments(message),
                "at": datetime.now(tz=UTC).isoformat(),
            },
            ensure_ascii=False,
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode() + b"\n")
            finally:
                os.close(fd)
        except OSError as exc:
            raise ChannelError(f"cannot write {self.path}: {exc}") from exc
        return f"file:{message.send_id}"


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(tz=UTC)).total_seconds())


def _provider_text(data: object, text: str) -> str:
    """The provider's own words: its JSON message, error or detail, else the body or reason."""
    if isinstance(data, dict):
        for key in ("message", "error", "detail"):
            if isinstance(data.get(key), str):
                return str(data[key])[:300]
    return text


def _pooled_session(session: requests.Session | None, url: str) -> dict[str, str]:
    """Keep as many connections open as dispatch has calls in flight (requests keeps 10,
    and opens a new connection for every call beyond them), and read the environment's
    proxy and CA bundle settings for `url` once, here: requests reads os.environ again on
    every call, a third of its CPU time per call. Returns the proxies to pass."""
    assert session is not None
    size = max(10, int(getattr(settings, "NUDGE_DISPATCH_INFLIGHT", 10)))
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    resolved = session.merge_environment_settings(url, {}, None, None, None)
    session.verify = resolved["verify"]
    session.trust_env = False
    proxies = dict(resolved["proxies"])
    session.proxies = proxies
    return proxies


class HttpBackend:
    """The generic JSON backend (module docstring). The Standard Webhooks webhook-id is the
    send's idempotency key, so a retried send carries the same id and key. Requests go over
    journeys.channels.http's keep-alive connections (requests when a proxy is configured)."""

    provider = "http"

    def __init__(self, url: str, *, secret: str, timeout: tuple[float, float]) -> None:
        from standardwebhooks.webhooks import Webhook

        self.url = url
        self.timeout = timeout
        self.signer = Webhook(secret)
        self.client = KeepAliveClient.for_url(url, timeout=timeout)
        self.session = None
        if self.client is None:
            self.session = requests.Session()
            _pooled_session(self.session, url)

    def send(self, message: OutgoingMessage) -> str:
        body = json.dumps(_request_fields(message), ensure_ascii=False).encode()
        now = datetime.now(tz=UTC)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": message.idempotency_key,
            "webhook-id": message.idempotency_key,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(message.idempotency_key, now, body.decode()),
        }
        status, retry_after, text, data = self._post(body, headers)
        if 200 <= status < 300:
            provider_id = data.get("id") if isinstance(data, dict) else None
            if not isinstance(provider_id, str) or not provider_id:
                raise ChannelError(f"SMS provider answered {status} without an id")
            return provider_id
        problem = f"SMS provider answered {status}: {_provider_text(data, text)}"
        if status in (408, 429) or status >= 500:
            raise ChannelError(
                problem, retry_after=_retry_after(retry_after), throttled=status == 429
            )
        if 400 <= status < 500:
            raise ChannelError(problem, retryable=False)
        raise ChannelError(problem)  # 1xx/3xx: a misconfigured endpoint; retry, lose nothing

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, str, object]:
        """(status, Retry-After, body text or reason, parsed JSON body or None)."""
        if self.client is None:
            assert self.session is not None
            try:
                response = self.session.post(
                    self.url,
                    data=body,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except requests.Timeout as exc:
                raise ChannelError(f"SMS provider timed out: {exc}") from exc
            except requests.RequestException as exc:
                raise ChannelError(f"SMS provider unreachable: {exc}") from exc
            raw, reason = response.content, response.reason
            status, retry_after = response.status_code, response.headers.get("Retry-After")
        else:
            try:
                answer = self.client.post(body, headers)
            except TimeoutError as exc:
                raise ChannelError(f"SMS provider timed out: {exc or 'no answer in time'}") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise ChannelError(f"SMS provider unreachable: {exc!r}") from exc
            raw, reason = answer.body, answer.reason
            status, retry_after = answer.status, answer.header("Retry-After")
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        text = raw.decode(errors="replace").strip()[:300] or reason
        return status, retry_after, text, data


class TwilioBackend:
    """Twilio's Messages API through the `twilio` package. `base_url` replaces
    https://api.twilio.com (a local fake in tests)."""

    provider = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        base_url: str,
        sender: dict[str, str],
        timeout: tuple[float, float],
    ) -> None:
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        http_client = TwilioHttpClient()
        http_client.proxy = _pooled_session(http_client.session, base_url)
        # requests takes a (connect, read) pair, which the constructor's check refuses;
        # request() passes the attribute through to requests as it is
        http_client.timeout = timeout
        self.client = Client(account_sid, auth_token, http_client=http_client)
        self.client.api.base_url = base_url
        self.sender = sender
        self._status_callback: dict[str, str] | None = None

    def _callback(self) -> dict[str, str]:
        """StatusCallback=<NUDGE_PUBLIC_URL>/…/twilio/status/ when NUDGE_TWILIO_STATUS_CALLBACK
        is on (None: on when NUDGE_PUBLIC_URL is https), so Twilio reports deliveries."""
        if self._status_callback is None:
            from django.urls import reverse

            public = str(settings.NUDGE_PUBLIC_URL or "").rstrip("/")
            wanted = settings.NUDGE_TWILIO_STATUS_CALLBACK
            if wanted is None:
                wanted = public.startswith("https://")
            self._status_callback = (
                {"status_callback": public + reverse("nudge:twilio-status")}
                if wanted and public
                else {}
            )
        return self._status_callback

    def send(self, message: OutgoingMessage) -> str:
        from twilio.base.exceptions import TwilioRestException, TwilioServiceException

        try:
            sent = self.client.messages.create(
                to=message.recipient, body=message.body, **self.sender, **self._callback()
            )
        except TwilioRestException as exc:
            # exc.msg is "Unable to create record: <Twilio's message>"
            raise _twilio_error(
                exc.status, exc.code, exc.msg.partition(": ")[2] or exc.msg
            ) from exc
        except TwilioServiceException as exc:  # the RFC 9457 error shape
            raise _twilio_error(exc.status, exc.code, exc.detail or exc.title) from exc
        except requests.Timeout as exc:
            raise ChannelError(f"Twilio timed out: {exc}") from exc
        except requests.RequestException as exc:
            raise ChannelError(f"Twilio unreachable: {exc}") from exc
        return str(sent.sid)


def _twilio_error(status: int, code: int | None, text: str) -> ChannelError:
    """429 and 5xx are transient; any other status (21211, invalid "To") is permanent."""
    retryable = status == 429 or status >= 500
    return ChannelError(
        f"Twilio {status} (code {code}): {text}", retryable=retryable, throttled=status == 429
    )


# --- the URL --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmsUrl:
    """NUDGE_SMS_URL, parsed: the backend's kind and what it needs."""

    kind: str  # console, file, twilio, http
    url: str
    query: dict[str, str]
    username: str = ""
    password: str = ""
    host: str = ""
    path: str = ""

    def timeout(self) -> tuple[float, float]:
        return (
            float(self.query.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)),
            float(self.query.get("timeout", DEFAULT_READ_TIMEOUT)),
        )


def _query(raw: str) -> dict[str, str]:
    """The query string, with "+" kept as a plus (`from=+1…`), unlike parse_qs."""
    pairs = (part.partition("=") for part in raw.split("&") if part)
    return {unquote(name): unquote(value) for name, _, value in pairs}


def sms_url_parse(url: str) -> SmsUrl:
    """NUDGE_SMS_URL, checked; ValueError naming the accepted forms when it is not one."""
    problem = _sms_url_problem(url)
    if problem:
        shown = _redacted(url)
        raise ValueError(f"NUDGE_SMS_URL {shown!r}: {problem}. Accepted forms: {ACCEPTED_FORMS}")
    parts = urlsplit(url)
    query = _query(parts.query)
    scheme = parts.scheme.lower()
    kind = "http" if scheme in ("http", "https") else scheme
    return SmsUrl(
        kind=kind,
        url=url,
        query=query,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        host=parts.netloc.rpartition("@")[2],
        path=unquote(parts.path),
    )


def _redacted(url: str) -> str:
    """The URL without its password (Twilio's auth token), for error messages and logs."""
    if not isinstance(url, str):
        return repr(url)
    parts = urlsplit(url)
    if not parts.password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    return parts._replace(netloc=netloc).geturl()


def _sms_url_problem(url: str) -> str | None:
    if not isinstance(url, str) or not url.strip():
        return "empty"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = _query(parts.query)
    if scheme == "console":
        return None
    if scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            return "a file URL names an absolute directory: file:///dir"
        return None
    if scheme in ("http", "https"):
        if not parts.hostname:
            return "no host"
        return _timeouts_problem(query)
    if scheme == "twilio":
        if not parts.username or not parts.password or not parts.hostname:
            return "twilio needs ACCOUNT_SID:AUTH_TOKEN@host"
        if bool(query.get("from")) == bool(query.get("messaging_service")):
            return "twilio needs exactly one of from=+E164 or messaging_service=MG…"
        if query.get("scheme", "https") not in ("http", "https"):
            return "scheme= is http or https"
        return _timeouts_problem(query)
    return f"unknown scheme {scheme!r}" if scheme else "no scheme"


def _timeouts_problem(query: dict[str, str]) -> str | None:
    for name in ("timeout", "connect_timeout"):
        if name in query:
            try:
                if float(query[name]) <= 0:
                    raise ValueError
            except ValueError:
                return f"{name}= is a number of seconds above 0"
    return None


def sms_backend(parsed: SmsUrl, *, http_secret: str = "") -> SmsBackend:
    if parsed.kind == "console":
        return ConsoleBackend()
    if parsed.kind == "file":
        return FileBackend(Path(parsed.path))
    if parsed.kind == "twilio":
        sender = (
            {"from_": parsed.query["from"]}
            if parsed.query.get("from")
            else {"messaging_service_sid": parsed.query["messaging_service"]}
        )
        return TwilioBackend(
            account_sid=parsed.username,
            auth_token=parsed.password,
            base_url=f"{parsed.query.get('scheme', 'https')}://{parsed.host}",
            sender=sender,
            timeout=parsed.timeout(),
        )
    if not http_secret:
        raise ValueError("NUDGE_SMS_HTTP_SECRET (whsec_…) is required by an http(s) SMS URL")
    return HttpBackend(parsed.url, secret=http_secret, timeout=parsed.timeout())


class SmsChannel:
    """The "sms" channel: the backend NUDGE_SMS_URL names, built once per process (see
    journeys.channels.get_channel)."""

    def __init__(self) -> None:
        self.backend = sms_backend(
            sms_url_parse(settings.NUDGE_SMS_URL),
            http_secret=settings.NUDGE_SMS_HTTP_SECRET or "",
        )

    def send(self, message: OutgoingMessage) -> str:
        return self.backend.send(message)

    @property
    def provider(self) -> str:
        return str(getattr(self.backend, "provider", type(self.backend).__name__))
