"""An event's canonical JSON and its hash: the same content gives the same text and hash,
however the sender formatted it. The hash tells a repeat from a conflicting reuse of an id.
Also the one way times are written into events and answers: ISO 8601 in UTC, with a Z."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone


def canonical_json(payload: Any) -> str:
    """An event's canonical JSON: same content, same text, however it was formatted."""
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )


def canonical_sha256(payload: Any) -> str:
    """Hash of an event's canonical JSON: same content, same hash, however it was formatted."""
    return text_sha256(canonical_json(payload))


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def iso_utc(moment: datetime) -> str:
    """`2026-12-01T21:14:03Z`: the time in UTC (a naive one taken in the current zone)."""
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
