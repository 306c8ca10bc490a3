"""Signed deliveries for tests, signed by the Standard Webhooks reference package."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from django.test import Client
from standardwebhooks.webhooks import Webhook

from marketing.webhooks import sign

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXkhIQ=="


def signed_headers(
    body: bytes, *, secret: str = SECRET, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    when = datetime.fromtimestamp(timestamp, tz=UTC) if timestamp else datetime.now(tz=UTC)
    try:
        signature = Webhook(secret).sign(msg_id, when, body.decode())
    except UnicodeDecodeError:  # the reference signer takes text only; ours signs any bytes
        signature = sign(secret, msg_id, int(when.timestamp()), body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


def post_signed(client: Client, path: str, payload: Any, **sign_kwargs: Any) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = signed_headers(body, **sign_kwargs)
    return client.post(
        path,
        data=body,
        content_type="application/json",
        headers=headers,
    )


def event(
    event_id: str = "evt_01",
    event_type: str = "user_registered",
    *,
    user_id: str = "u_1",
    occurred_at: str = "2026-11-28T12:00:00Z",
    **extra: Any,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": event_id,
        "type": event_type,
        "occurred_at": occurred_at,
        "user": {
            "id": user_id,
            "email": f"{user_id}@example.com",
            "phone": "+14155550101",
            "first_name": "Ana",
            "timezone": "Europe/Berlin",
        },
    }
    payload.update(extra)
    return payload
