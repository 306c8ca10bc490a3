#!/usr/bin/env python3
"""Sign one event the Standard Webhooks way and POST it to Nudge. Standard library only:
copy it into any project.

    python scripts/send_event.py                                   # user_registered for u_1
    python scripts/send_event.py --type checkout_started --user u_1 --cart c_1 --total 120.00
    python scripts/send_event.py --type payment_finished --user u_1 --cart c_1 --payment p_1

The customer's consent is sent as granted on email and SMS (`user.consent`), as a shop does for
a customer who ticked the box: with NUDGE_CONSENT_DEFAULT=deny (the default) a customer whose
consent is unknown gets no marketing. `--consent email` grants email only; `--consent none`
says nothing about consent; `--revoke sms` sends consent.sms=false.

The secret is NUDGE_WEBHOOK_SECRET from the environment or from `.env` (the first one when it
lists several); the URL is --url, else NUDGE_URL, else http://127.0.0.1:8000/api/events/.
Exits 0 when Nudge answered 2xx.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000/api/events/"


def webhook_secret() -> str:
    value = os.environ.get("NUDGE_WEBHOOK_SECRET", "")
    for env_file in (Path.cwd() / ".env", Path(__file__).resolve().parent.parent / ".env"):
        if value or not env_file.is_file():
            continue
        for line in env_file.read_text().splitlines():
            name, _, setting = line.partition("=")
            if name.strip() == "NUDGE_WEBHOOK_SECRET":
                value = setting.strip().strip("'\"")
    if not value.split():
        sys.exit("NUDGE_WEBHOOK_SECRET is not set (environment or .env)")
    return value.split()[0]


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def build_event(args: argparse.Namespace) -> dict:
    event: dict = {
        "id": args.id or f"evt_{uuid.uuid4().hex}",
        "type": args.type,
        "occurred_at": args.occurred_at
        or datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "user": {"id": args.user, "email": args.email or f"{args.user}@example.com"},
    }
    if args.phone:
        event["user"]["phone"] = args.phone
    consent = {channel: True for channel in _channels(args.consent)}
    consent |= {channel: False for channel in _channels(args.revoke)}
    if consent:
        event["user"]["consent"] = consent
    if args.cart:
        event["cart"] = {
            "id": args.cart,
            "total": args.total,
            "currency": args.currency,
            "checkout_url": f"https://shop.example/checkout/{args.cart}",
            "items": [],
        }
    if args.payment:
        event["payment"] = {
            "id": args.payment,
            "cart_id": args.cart,
            "amount": args.total,
            "currency": args.currency,
            "discount_code": None,
        }
    return event


CHANNELS = ("email", "sms")


def _channels(text: str) -> list[str]:
    """'email,sms' -> ['email', 'sms']; 'none' or '' -> []."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if names == ["none"]:
        return []
    unknown = [name for name in names if name not in CHANNELS]
    if unknown:
        sys.exit(f"unknown channel(s) {', '.join(unknown)}: use email, sms or none")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--type", default="user_registered")
    parser.add_argument("--user", default="u_1", help="the customer's id in your shop")
    parser.add_argument("--email")
    parser.add_argument("--phone", help="E.164, e.g. +14155550101")
    parser.add_argument("--cart", help="cart id (checkout_started needs one)")
    parser.add_argument("--payment", help="payment id (payment_finished needs one)")
    parser.add_argument("--total", default="120.00", help="cart total and payment amount")
    parser.add_argument("--currency", default="EUR")
    parser.add_argument(
        "--consent",
        default="email,sms",
        help="channels the customer consents to (default: email,sms; 'none': say nothing)",
    )
    parser.add_argument("--revoke", default="", help="channels the customer withdrew consent on")
    parser.add_argument("--id", help="event id (default: a new one)")
    parser.add_argument(
        "--occurred-at", help="ISO 8601 with offset (default: now); a repeat needs the same"
    )
    parser.add_argument("--url", default=os.environ.get("NUDGE_URL") or DEFAULT_URL)
    args = parser.parse_args(argv)

    body = json.dumps(build_event(args)).encode()
    message_id, timestamp = f"msg_{uuid.uuid4().hex}", int(time.time())
    request = urllib.request.Request(
        args.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(webhook_secret(), message_id, timestamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, answer = error.code, error.read()
    print(status, answer.decode(errors="replace"))
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
