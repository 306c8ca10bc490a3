"""Holdout groups: which enrolments of a journey are held out (never sent), decided at
enrolment (services.enrolment) by a deterministic hash, so the same customer is always in or
out of the same journey's group.

The hash is of the journey's slug (it survives journeys_export / journeys_import, where the
id would not) and the customer's id: SHA-256 of "<slug>:<customer id>", its first 8 bytes
read as a number in [0, 2**64), scaled to [0, 100). A customer is held out when that number
is below the journey's `holdout_percent`. Raising the percentage keeps everyone who was held
out held out (their number is still below it) and adds more; lowering it releases some.
"""

from __future__ import annotations

import hashlib

from journeys.models import Journey

HELD_OUT_LABEL = "held out"


def holdout_position(*, slug: str, customer_id: int) -> float:
    """The customer's place in [0, 100) for the journey: uniform, and the same every time."""
    digest = hashlib.sha256(f"{slug}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") * 100 / 2**64


def enrollment_held_out(journey: Journey, customer_id: int) -> bool:
    """Whether the customer's enrolment into `journey` goes to its holdout group."""
    percent = journey.holdout_percent
    if not percent:
        return False
    return holdout_position(slug=journey.slug, customer_id=customer_id) < float(percent)


def held_out_reason(journey: Journey) -> str:
    """The reason of a held-out send: "held out (10% holdout group)"."""
    percent = f"{journey.holdout_percent.normalize():f}"
    return f"{HELD_OUT_LABEL} ({percent}% holdout group)"
