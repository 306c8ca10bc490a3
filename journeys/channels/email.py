"""Email through Django's email API: any EMAIL_BACKEND (SMTP from EMAIL_URL, the console in
development, an ESP through django-anymail), one connection reused across a dispatch chunk.

Every message is multipart: the rendered body as plain text, and the same body as HTML inside
the layout template `nudge/email/layout.html` (a shop overrides it with its own template of
that name earlier in its template directories). The provider message id is the Message-ID
header set here, or the ESP's own id when anymail reports one.
"""

from __future__ import annotations

import logging
import smtplib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import make_msgid, parseaddr
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.template.loader import render_to_string
from django.utils.html import linebreaks, urlize
from django.utils.safestring import SafeString

from journeys.channels import ChannelError, OutgoingMessage

logger = logging.getLogger(__name__)

LAYOUT_TEMPLATE = "nudge/email/layout.html"


def email_html(*, subject: str, body: str) -> str:
    """The HTML part: the plain-text body escaped, its URLs linked and its blank lines made
    paragraphs, inside the layout template. Context: `subject`, `body` (the plain text) and
    `body_html` (safe HTML)."""
    body_html = SafeString(linebreaks(urlize(body, autoescape=True), autoescape=False))
    return render_to_string(
        LAYOUT_TEMPLATE, {"subject": subject, "body": body, "body_html": body_html}
    )


def email_build(message: OutgoingMessage) -> EmailMultiAlternatives:
    """The email of one send, with the message's headers (List-Unsubscribe, ...), its
    Message-ID (on the sender's domain, carrying the send's idempotency key) and no
    connection."""
    from_email = settings.NUDGE_EMAIL_FROM
    domain = parseaddr(from_email)[1].rpartition("@")[2] or "localhost"
    email = EmailMultiAlternatives(
        subject=message.subject,
        body=message.body,
        from_email=from_email,
        to=[message.recipient],
        headers={
            **message.headers,
            "Message-ID": make_msgid(idstring=message.idempotency_key, domain=domain),
        },
    )
    email.attach_alternative(email_html(subject=message.subject, body=message.body), "text/html")
    if settings.EMAIL_BACKEND.startswith("anymail."):
        # the ESP echoes it back in its tracking events (journeys.services.feedback)
        email.metadata = {"nudge_send_id": str(message.send_id)}  # type: ignore[attr-defined]
    return email


class EmailChannel:
    """Sends each message with EmailMultiAlternatives through EMAIL_BACKEND.

    Inside `batch()` (dispatch enters it once per task) the sends reuse a pool of open
    connections: a call takes an idle one, or opens one at its first email, so as many
    connections are open as calls are in flight, up to NUDGE_EMAIL_MAX_CONNECTIONS, and a
    task in which no email leaves opens none. A connection that failed is closed and not
    reused; a connection that cannot be opened fails the task's remaining emails at once
    with the same (retryable) error instead of waiting for EMAIL_TIMEOUT again for each.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._shared: _ConnectionPool | None = None
        self.provider = _backend_name(settings.EMAIL_BACKEND)

    @contextmanager
    def batch(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._shared = _ConnectionPool()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                shared = self._shared if self._depth == 0 else None
                if shared is not None:
                    self._shared = None
            if shared is not None:
                shared.close()

    def send(self, message: OutgoingMessage) -> str:
        try:
            email = email_build(message)
        except ValueError as exc:  # a header with a newline (BadHeaderError), say
            raise ChannelError(f"invalid email: {exc}", retryable=False) from exc
        shared = self._shared
        if shared is not None:
            shared.send(email)
        else:
            _send(email, get_connection(fail_silently=False))
        return _provider_message_id(email)


def _backend_name(path: str) -> str:
    """ "smtp", "console", "anymail.postmark", ... from an EMAIL_BACKEND path."""
    parts = path.split(".")
    if parts[0] == "anymail" and len(parts) >= 3:
        return f"anymail.{parts[-2]}"
    return parts[-2] if len(parts) >= 2 else path


class _ConnectionPool:
    """The open backend connections of a batch; each call uses one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[BaseEmailBackend] = []
        self._unreachable: ChannelError | None = None
        # at most this many open at once: the calls beyond wait for a free one
        self._slots = threading.BoundedSemaphore(max(1, settings.NUDGE_EMAIL_MAX_CONNECTIONS))

    def _take(self) -> BaseEmailBackend:
        with self._lock:
            if self._unreachable is not None:
                raise self._unreachable
            if self._idle:
                return self._idle.pop()
        connection = get_connection(fail_silently=False)
        try:
            connection.open()
        except Exception as exc:
            error = _channel_error(exc, connection)
            if error is None:
                raise
            with self._lock:
                self._unreachable = error
            raise error from exc
        return connection

    def send(self, email: EmailMultiAlternatives) -> None:
        with self._slots:
            connection = self._take()
            try:
                _send(email, connection)
            except _Refused:
                self._give_back(connection)  # the server answered about this email: it is fine
                raise
            except BaseException:
                _close_quietly(connection)
                raise
            self._give_back(connection)

    def _give_back(self, connection: BaseEmailBackend) -> None:
        with self._lock:
            self._idle.append(connection)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            _close_quietly(connection)


def _send(email: EmailMultiAlternatives, connection: BaseEmailBackend) -> None:
    email.connection = connection
    try:
        sent = email.send()
    except Exception as exc:
        error = _channel_error(exc, connection)
        if error is None:
            raise
        raise error from exc
    if not sent:
        raise ChannelError("the email backend sent nothing", retryable=True)
    refusal = _esp_refusal(email)
    if refusal is not None:
        raise refusal


def _esp_refusal(email: EmailMultiAlternatives) -> ChannelError | None:
    """An ESP's answer that anymail returns without raising: every recipient invalid or
    rejected, or an error status whose body it could not match to a recipient (Postmark's
    422 "Invalid 'To' address" without the address, say). Not a sent message."""
    status = getattr(email, "anymail_status", None)
    if status is None:
        return None
    statuses = set(getattr(status, "status", None) or ())
    if statuses and statuses <= {"invalid", "rejected", "failed"}:
        return ChannelError(
            f"ESP refused the recipient: {', '.join(sorted(statuses))}", retryable=False
        )
    response = getattr(status, "esp_response", None)
    code = getattr(response, "status_code", None)
    if isinstance(code, int) and code >= 400:
        text = str(getattr(response, "text", ""))[:500]
        return ChannelError(
            f"ESP error: HTTP {code}: {text}", retryable=code in (408, 429) or code >= 500
        )
    return None


def _provider_message_id(email: EmailMultiAlternatives) -> str:
    """The ESP's id when django-anymail reports one, else our Message-ID header."""
    status = getattr(email, "anymail_status", None)
    esp_id = getattr(status, "message_id", None)
    if isinstance(esp_id, str) and esp_id:
        return esp_id
    return str(email.extra_headers["Message-ID"])


def _close_quietly(connection: BaseEmailBackend) -> None:
    """The emails are accepted already: a failing QUIT loses nothing."""
    try:
        connection.close()
    except Exception:
        logger.warning("closing the email connection failed", exc_info=True)


# --- which failures are worth a retry -------------------------------------------------------


class _Refused(ChannelError):
    """The SMTP server refused this email (its recipient or its content), and is still
    ready for the next one on the same connection."""


def _smtp_text(response: Any) -> str:
    if isinstance(response, bytes):
        return response.decode("utf-8", "replace")
    return str(response)


def _channel_error(exc: Exception, connection: BaseEmailBackend) -> ChannelError | None:
    """The ChannelError for an email backend's exception, or None when it is none of the
    known kinds (dispatch then records it as an unexpected error, and retries).

    SMTP: a refusal of this recipient or of this message (SMTPRecipientsRefused,
    SMTPDataError) is permanent with a 5xx code and transient with a 4xx one; everything
    about the connection or the account (refused or timed-out connections, TLS, HELO, login,
    a sender refused, a disconnect) is transient: retrying helps once it is fixed. anymail:
    a refused or invalid recipient is permanent; an ESP's 408, 429 or 5xx (or no response at
    all) is transient, and its other 4xx permanent.
    """
    esp_error = _anymail_error(exc)  # first: anymail's API errors are OSErrors (requests')
    if esp_error is not None:
        return esp_error
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refusals = list(exc.recipients.items())
        codes = [code for _, (code, _) in refusals]
        reasons = "; ".join(f"{addr}: {code} {_smtp_text(text)}" for addr, (code, text) in refusals)
        return _Refused(
            f"SMTP recipient refused: {reasons}", retryable=not all(c >= 500 for c in codes)
        )
    if isinstance(exc, smtplib.SMTPDataError):
        return _Refused(
            f"SMTP message refused: {exc.smtp_code} {_smtp_text(exc.smtp_error)}",
            retryable=exc.smtp_code < 500,
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        return ChannelError(f"SMTP error: {exc.smtp_code} {_smtp_text(exc.smtp_error)}")
    if isinstance(exc, OSError):  # smtplib.SMTPException, timeouts, refused connections, TLS
        where = ""
        host, port = getattr(connection, "host", None), getattr(connection, "port", None)
        if host:
            where = f" ({host}:{port})"
        return ChannelError(f"mail server unreachable{where}: {exc or type(exc).__name__}")
    return None


def _anymail_error(exc: Exception) -> ChannelError | None:
    """django-anymail's exceptions, by duck typing (anymail is an optional install)."""
    if not type(exc).__module__.startswith("anymail"):
        return None
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"AnymailRecipientsRefused", "AnymailInvalidAddress"}:
        return ChannelError(f"ESP refused the recipient: {exc}", retryable=False)
    if "AnymailAPIError" in names:
        status = getattr(exc, "status_code", None)
        transient = status is None or status in (408, 429) or status >= 500
        return ChannelError(f"ESP error: {exc}", retryable=transient)
    return None
