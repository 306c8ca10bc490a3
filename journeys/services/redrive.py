"""An operator's re-drive of failed sends (`manage.py sends_retry`, the sends admin's action):
each is put back to `pending`, due now, with its attempts spent again, and dispatch then
re-checks it like any other (exit since the trigger, consent, journey still on, lateness
from the new due time).

A re-drive never makes the customer get a step twice. A failed send is left failed, and
counted with why, when the same customer has a newer send of the same journey step that is
pending, in flight or sent (a later enrolment took its place), or when an active send holds
its dedupe key (the `send_one_active_per_dedupe_key` constraint would refuse it). Of several
failed sends of one step and customer, only the newest is re-driven.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.db.models import F, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Concat, Left, Now

from journeys.models import Journey, ScheduledSend
from marketing.models import Customer

Status = ScheduledSend.Status

# why a failed send is left failed (the summary groups by these)
NEWER_SEND = "a newer send exists"
KEY_TAKEN = "an active send holds its dedupe key"

# what a newer send of the same step and customer may be for the failed one to stay failed
_TAKEN_OVER = (Status.PENDING, Status.SENDING, Status.SENT)
_UPDATE_BATCH = 500  # ids per UPDATE: well under SQLite's bound on an IN list's parameters


@dataclass(frozen=True)
class RedriveItem:
    """One failed send considered: `refusal` is empty when it is (or would be) re-queued."""

    send_id: int
    journey_slug: str
    step_position: int
    customer_id: int
    failed_at: datetime
    reason: str
    refusal: str = ""
    detail: str = ""  # the send that blocks it: "send 57, sent"


@dataclass
class RedriveResult:
    dry_run: bool
    items: list[RedriveItem] = field(default_factory=list)
    # with send_ids: the ids given that were not failed (unknown, or another status)
    not_failed: list[int] = field(default_factory=list)

    @property
    def requeued(self) -> list[RedriveItem]:
        return [item for item in self.items if not item.refusal]

    @property
    def refused(self) -> list[RedriveItem]:
        return [item for item in self.items if item.refusal]

    def refusals(self) -> dict[str, int]:
        """How many were left failed, by why."""
        counts: dict[str, int] = {}
        for item in self.refused:
            counts[item.refusal] = counts.get(item.refusal, 0) + 1
        return counts


def scheduled_sends_redrive(
    *,
    send_ids: list[int] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    journey_slug: str | None = None,
    by: str = "an operator",
    dry_run: bool = False,
) -> RedriveResult:
    """Put failed sends back to `pending`, due now: those among `send_ids` when given, that
    failed (their last change, `updated_at`) at or after `since` and before `until`, in the
    journey `journey_slug` (ValueError when there is none). `dry_run` decides the same and
    writes nothing.

    A re-driven send gets `attempts` 0 (NUDGE_SEND_MAX_ATTEMPTS provider calls again),
    claimed_at, call_started_at and discount_expires_at cleared (a discount code's validity
    runs from the message that goes out), and the reason "re-driven by <by> (was: …)". It
    keeps its id (so its idempotency key), discount code, `ambiguous_retries`, `last_error`
    and `attempt_log`, the history of its provider calls.

    One transaction. The selected sends' customers are locked first, in id order, as the
    appliers of events lock them before writing sends: no enrolment can add a send for them
    between the check for a newer send and the update, so the partial unique constraint
    cannot refuse the update halfway. Then the failed rows themselves, without SKIP LOCKED:
    nothing but another re-drive or an admin's cancel locks a failed row, briefly, and
    waiting keeps the counts exact (a skipped row would be neither re-queued nor reported).
    A dry run takes no lock.
    """
    failed = ScheduledSend.objects.filter(status=Status.FAILED)
    if send_ids is not None:
        failed = failed.filter(pk__in=send_ids)
    if since is not None:
        failed = failed.filter(updated_at__gte=since)
    if until is not None:
        failed = failed.filter(updated_at__lt=until)
    if journey_slug is not None:
        journey_id = Journey.objects.filter(slug=journey_slug).values_list("pk", flat=True).first()
        if journey_id is None:
            raise ValueError(f"no journey with slug {journey_slug!r}")
        failed = failed.filter(journey_id=journey_id)

    with transaction.atomic():
        locked_customers: set[int] | None = None
        if not dry_run:
            locked_customers = set(
                Customer.objects.select_for_update(of=("self",))
                .filter(pk__in=failed.values("customer_id"))
                .order_by("pk")
                .values_list("pk", flat=True)
            )
        # the active send holding each one's dedupe key, if any: one probe of the partial
        # unique index (send_one_active_per_dedupe_key) per send
        key_holder = ScheduledSend.objects.filter(
            step_position=OuterRef("step_position"),
            journey_id=OuterRef("journey_id"),
            dedupe_key=OuterRef("dedupe_key"),
            status__in=ScheduledSend.ACTIVE,
        ).values("pk")[:1]
        candidates = [
            _Candidate(*row)
            for row in (failed if dry_run else failed.select_for_update(of=("self",)))
            .annotate(key_holder=Subquery(key_holder))
            .order_by("pk")
            .values_list(
                "pk",
                "journey_id",
                "journey__slug",
                "step_position",
                "customer_id",
                "dedupe_key",
                "updated_at",
                "reason",
                "key_holder",
            )
        ]
        if locked_customers is not None:
            # a send that failed after the customers were locked: left to the next re-drive
            # (locking its customer now, out of id order, could deadlock with an applier)
            candidates = [c for c in candidates if c.customer_id in locked_customers]
        result = RedriveResult(dry_run=dry_run, items=_decide(candidates, failed))
        if send_ids is not None:
            found = {item.send_id for item in result.items}
            result.not_failed = sorted(set(send_ids) - found)
        if not dry_run:
            _requeue([item.send_id for item in result.requeued], by=by)
    return result


@dataclass(frozen=True)
class _Candidate:
    pk: int
    journey_id: int
    journey_slug: str
    step_position: int
    customer_id: int
    dedupe_key: str
    updated_at: datetime
    reason: str
    key_holder: int | None


def _decide(candidates: list[_Candidate], failed: QuerySet[ScheduledSend]) -> list[RedriveItem]:
    """Which failed sends may go back to pending, newest first within a step and customer.
    The sends that may have taken their place are read in one query (the candidates'
    customers' sends in their journeys, on the customer index), and a candidate re-queued
    takes the place of the older ones."""
    if not candidates:
        return []
    others = (
        ScheduledSend.objects.filter(
            customer_id__in=failed.values("customer_id"),
            journey_id__in={c.journey_id for c in candidates},
            status__in=_TAKEN_OVER,
        )
        .order_by()
        .values_list("pk", "journey_id", "step_position", "customer_id", "status")
    )
    # (journey, step, customer) -> the newest send that took a failed one's place, and what
    # it is; (journey, step, dedupe key) -> a candidate re-queued with that key
    newest: dict[tuple[int, int, int], tuple[int, str]] = {}
    for pk, journey_id, position, customer_id, status in others:
        step_of = (journey_id, position, customer_id)
        if pk > newest.get(step_of, (0, ""))[0]:
            newest[step_of] = (pk, status)
    requeued_keys: dict[tuple[int, int, str], int] = {}

    decided: list[RedriveItem] = []
    for c in sorted(candidates, key=lambda c: c.pk, reverse=True):
        step_of = (c.journey_id, c.step_position, c.customer_id)
        key = (c.journey_id, c.step_position, c.dedupe_key)
        holder = c.key_holder or requeued_keys.get(key)
        refusal, detail = "", ""
        newer = newest.get(step_of)
        if newer is not None and newer[0] > c.pk:
            refusal, detail = NEWER_SEND, f"send {newer[0]}, {newer[1]}"
        elif holder is not None:
            refusal, detail = KEY_TAKEN, f"send {holder}"
        else:  # re-queued: now the newest send of its step, and the holder of its key
            newest[step_of] = (c.pk, "failed too, re-queued instead")
            requeued_keys[key] = c.pk
        decided.append(
            RedriveItem(
                send_id=c.pk,
                journey_slug=c.journey_slug,
                step_position=c.step_position,
                customer_id=c.customer_id,
                failed_at=c.updated_at,
                reason=c.reason,
                refusal=refusal,
                detail=detail,
            )
        )
    decided.sort(key=lambda item: item.send_id)
    return decided


def _requeue(send_ids: list[int], *, by: str) -> None:
    note = Left(Concat(Value(f"re-driven by {by} (was: "), F("reason"), Value(")")), 500)
    for start in range(0, len(send_ids), _UPDATE_BATCH):
        ScheduledSend.objects.filter(
            pk__in=send_ids[start : start + _UPDATE_BATCH], status=Status.FAILED
        ).update(
            status=Status.PENDING,
            due_at=Now(),  # the database's clock, the one the claim reads
            intended_at=None,  # its lateness counts from the new due time, not pacing's
            attempts=0,
            claimed_at=None,
            call_started_at=None,
            discount_expires_at=None,
            reason=note,
            updated_at=Now(),
        )
