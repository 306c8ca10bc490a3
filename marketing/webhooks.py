"""Standard Webhooks verification (https://www.standardwebhooks.com/), on the raw body bytes.

We verify with our own few lines rather than `standardwebhooks.Webhook.verify`, and use that
package as the reference signer in the tests and the README script. Its `verify` decodes the
body as text (a non-UTF-8 body raises UnicodeDecodeError), raises ValueError or binascii.Error
on a malformed signature header instead of its verification error (a 500 for a bad request),
and checks a single secret, where we accept several during a rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"  # noqa: S105 (the scheme's prefix, not a secret)
MAX_ID_LENGTH = 255
MAX_SIGNATURE_HEADER = 4096


class WebhookVerificationError(Exception):
    """The request is not signed by a sender holding one of our secrets."""


class WebhookConfigurationError(Exception):
    """NUDGE_WEBHOOK_SECRET is missing or malformed: no request can be verified."""


@dataclass(frozen=True)
class VerifiedDelivery:
    message_id: str
    timestamp: int


def decode_secret(secret: str) -> bytes:
    """`whsec_<base64>` (or bare base64) to key bytes; ValueError when it is not a secret."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not base64 after its whsec_ prefix") from exc
    if len(key) < 16:
        raise ValueError("webhook secret must hold at least 16 bytes")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one secret (used by tests, scripts and the bench)."""
    digest = hmac.new(
        decode_secret(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256
    ).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    *,
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> VerifiedDelivery:
    """Check a delivery's signature against every active secret, in constant time per secret.

    Raises WebhookVerificationError with a reason safe to show the sender.
    """
    try:
        keys = [decode_secret(s) for s in secrets]
    except ValueError as exc:
        raise WebhookConfigurationError(f"NUDGE_WEBHOOK_SECRET: {exc}") from exc
    if not keys:
        raise WebhookConfigurationError("NUDGE_WEBHOOK_SECRET is not set")

    message_id = headers.get("webhook-id", "")
    timestamp_header = headers.get("webhook-timestamp", "")
    signature_header = headers.get("webhook-signature", "")
    missing = [
        name
        for name, value in (
            ("webhook-id", message_id),
            ("webhook-timestamp", timestamp_header),
            ("webhook-signature", signature_header),
        )
        if not value
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    if len(message_id) > MAX_ID_LENGTH or len(signature_header) > MAX_SIGNATURE_HEADER:
        raise WebhookVerificationError("webhook headers too long")
    if not timestamp_header.isascii() or not timestamp_header.isdigit():
        raise WebhookVerificationError("webhook-timestamp must be whole seconds since the epoch")
    timestamp = int(timestamp_header)
    current = time.time() if now is None else now
    if timestamp < current - tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp too old")
    if timestamp > current + tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp too new")

    signed = f"{message_id}.{timestamp_header}.".encode() + body
    expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in keys]
    for versioned in signature_header.split(" "):
        version, _, encoded = versioned.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # compare against every key, so timing does not reveal which secret matched
        matched = False
        for digest in expected:
            matched |= hmac.compare_digest(digest, candidate)
        if matched:
            return VerifiedDelivery(message_id=message_id, timestamp=timestamp)
    raise WebhookVerificationError("no valid v1 signature for this body")
