"""Holdout groups: which enrolments of a journey are held out (never sent), decided at
enrolment (services.enrolment) by a deterministic hash, so the same customer is always in or
out of the same journey's group.

A held-out send stands for the send it replaces until its due time: the enrolment plan
treats it as pending for dedupe ("first" ignores a later trigger, "latest" supersedes it)
and exits (an exit takes it out of the running, as it would cancel the pending send), so
the holdout group gets the same enrolments as it would have, had it been sent. Its row stays
as it is (skipped, "held out"): only the plan's view of it changes.

The hash is of the journey's slug (it survives journeys_export / journeys_import, where the
id would not) and the customer's id: SHA-256 of "<slug>:<customer id>", its first 8 bytes
read as a number in [0, 2**64), scaled to [0, 100). A customer is held out when that number
is below the journey's `holdout_percent`. Raising the percentage keeps everyone who was held
out held out (their number is still below it) and adds more; lowering it releases some.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from django.db.models.functions import Now

from journeys.models import Journey, ScheduledSend
from journeys.services.exits import exit_event_first
from marketing.models import Event

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


def held_out_awaiting(
    *, customer_ids: Iterable[int | None], journeys: Iterable[Journey]
) -> list[ScheduledSend]:
    """The customers' held-out sends not due yet in those of `journeys` that have a holdout
    group (the enrolment plan adds them to the pending sends it watches); no query when none
    has."""
    by_id = {j.pk: j for j in journeys if j.holdout_percent}
    if not by_id:
        return []
    held = list(
        ScheduledSend.objects.filter(
            customer_id__in=customer_ids,
            journey_id__in=by_id,
            status=ScheduledSend.Status.SKIPPED,
            enrollment__held_out=True,
            due_at__gt=Now(),
        ).select_related("cart", "enrollment")
    )
    exit_types = {t for pk in {s.journey_id for s in held} for t in by_id[pk].exit_on}
    if not held or not exit_types:
        return held
    # the exit rule's own body (services.exits): an exit since the trigger took the send it
    # stands for out of the running, as it would have cancelled it
    exits: dict[int, list[Event]] = {}
    for event in (
        Event.objects.filter(
            customer_id__in={s.customer_id for s in held},
            type__in=exit_types,
            occurred_at__gte=min(s.trigger_occurred_at for s in held),
        )
        .order_by("occurred_at", "pk")
        .only("id", "event_id", "type", "customer_id", "occurred_at", "payload")
    ):
        assert event.customer_id is not None
        exits.setdefault(event.customer_id, []).append(event)
    return [
        send
        for send in held
        if exit_event_first(
            exits.get(send.customer_id, []),
            journey=by_id[send.journey_id],
            customer_id=send.customer_id,
            trigger_occurred_at=send.trigger_occurred_at,
            cart_id=send.cart.external_id if send.cart is not None else None,
        )
        is None
    ]


def held_out_awaiting_is(send: ScheduledSend) -> bool:
    """A held-out send among the pending ones (held_out_awaiting, or one just planned)."""
    return send.status == ScheduledSend.Status.SKIPPED
