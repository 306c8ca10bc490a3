"""A customer's erasure (right to be forgotten), across both apps: `customer_erase` (manage.py
customer_erase, the customer list's admin action).

In one transaction, with the customer's row locked and after any provider call in flight to
them has returned (services.inflight, as an opt-out waits):

1. their pending and in-flight sends are cancelled, "cancelled: customer erased";
2. every send of theirs loses what holds personal data: recipient, rendered subject and body,
   the provider's delivery detail and last error, the error text of its attempt log and of its
   reason (each keeps its kind: "failed after 3 attempts", "suppressed"); status, channel,
   times, segments, discount code and provider ids stay, and so do the counts; a provider's
   last error that quotes their email or phone is emptied;
3. marketing erases the rest and leaves the hashed suppression entries
   (marketing.services.erasure).

A late event for the same external id makes a new customer row; `erased_customers_settle`,
called where journeys apply events, erases that row again before it is enrolled anywhere,
and dispatch skips any send to an erased id, email or phone ("suppressed: erased customer").
Erasing again is a no-op that says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from journeys.models import ProviderState, ScheduledSend
from journeys.services import inflight
from marketing.models import Customer, Event
from marketing.services import erasure as marketing_erasure
from nudge.db.retry import atomic_retried

logger = logging.getLogger(__name__)

Status = ScheduledSend.Status
ERASED_REASON = "cancelled: customer erased"
_SCRUBBED_FIELDS = ["recipient", "subject", "body", "delivery_detail", "last_error"]


@dataclass
class ErasureReport:
    """What one erasure did (or, with `dry_run`, would do), by table."""

    external_id: str
    customer_id: int | None = None
    # erased before: no customer holds the id now, or the one given is erased
    already_erased: bool = False
    dry_run: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.customer_id is not None

    def summary(self) -> str:
        """One line: 'u_1: customers 1, events 3, carts 1, sends 2 (1 cancelled), ...'."""
        if self.already_erased:
            return f"{self.external_id}: already erased, nothing left to erase"
        if not self.found:
            return f"{self.external_id}: no customer with this external id"
        counts = dict(self.counts)
        cancelled = counts.pop("sends_cancelled", 0)
        parts = []
        for name, count in counts.items():
            label = name.replace("_", " ")
            parts.append(
                f"{label} {count} ({cancelled} cancelled)"
                if name == "sends"
                else f"{label} {count}"
            )
        verb = "would erase" if self.dry_run else "erased"
        return f"{self.external_id}: {verb} " + ", ".join(parts)


def customer_erase(*, external_id: str, dry_run: bool = False) -> ErasureReport:
    """Erase the personal data of the customer whose external id is `external_id` (see the
    module). With `dry_run`, count what would change and write nothing."""
    customer_id = (
        Customer.objects.filter(external_id=external_id).values_list("pk", flat=True).first()
    )
    report = None if customer_id is None else _customer_erase(customer_id, dry_run=dry_run)
    if report is None:  # no such customer (or it was erased meanwhile)
        erased = marketing_erasure.erased_external_ids(external_ids=[external_id])
        return ErasureReport(external_id=external_id, already_erased=bool(erased), dry_run=dry_run)
    return report


def customers_erase(*, customer_ids: list[int], dry_run: bool = False) -> list[ErasureReport]:
    """customer_erase for customers given by row id (the admin action), each in its own
    transaction, in id order. A customer erased already is reported as such."""
    reports = []
    for customer_id in sorted(set(customer_ids)):
        if (report := _customer_erase(customer_id, dry_run=dry_run)) is not None:
            reports.append(report)
    return reports


def _customer_erase(customer_id: int, *, dry_run: bool) -> ErasureReport | None:
    """Erase one customer in its own transaction, run again if PostgreSQL aborts it to break
    a deadlock (nudge.db.retry); None when there is no such customer."""

    def work() -> ErasureReport | None:
        # the order event application locks in (marketing.services.applying): the events
        # still to apply, then the customer
        list(
            Event.objects.select_for_update()
            .filter(customer_id=customer_id, applied_at__isnull=True)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        customer = Customer.objects.select_for_update().filter(pk=customer_id).first()
        return None if customer is None else _customer_erase_locked(customer, dry_run=dry_run)

    return atomic_retried(work, what=f"erasing customer {customer_id}")


def _customer_erase_locked(customer: Customer, *, dry_run: bool) -> ErasureReport:
    report = ErasureReport(
        external_id=customer.external_id, customer_id=customer.pk, dry_run=dry_run
    )
    if customer.erased_at is not None:
        report.already_erased = True
        return report
    now = timezone.now()
    sends = ScheduledSend.objects.filter(customer=customer)
    active = sends.filter(status__in=ScheduledSend.ACTIVE)
    # a provider's last error may quote the address it refused
    named = Q(pk__in=[])
    for value in (customer.email, customer.phone):
        if value:
            named |= Q(last_error__icontains=value)
    provider_errors = ProviderState.objects.filter(named)
    counts = {"sends": sends.count(), "sends_cancelled": active.count()}
    counts["provider_errors"] = provider_errors.count()
    if not dry_run:
        provider_errors.update(last_error="")
        # no provider call to them is in flight from here on (dispatch's try-lock fails, and
        # the send is tried again after this commits: no longer in flight, it is left)
        inflight.customers_await_calls([customer.pk])
        active.update(status=Status.CANCELLED, reason=ERASED_REASON, updated_at=Now())
        _sends_scrub(list(sends.order_by("pk")))
    report.counts = {
        **marketing_erasure.customer_data_erase(customer=customer, dry_run=dry_run, now=now),
        **counts,
    }
    return report


def _without_detail(text: str) -> str:
    """A reason or an outcome without what follows its first colon, where an address or a
    provider's message may be: "failed after 3 attempts: provider error: ..." keeps
    "failed after 3 attempts"."""
    return text.partition(":")[0]


def _sends_scrub(sends: list[ScheduledSend]) -> None:
    for send in sends:
        for name in _SCRUBBED_FIELDS:
            setattr(send, name, "")
        if send.reason != ERASED_REASON:
            send.reason = _without_detail(send.reason)
        send.attempt_log = [_attempt_scrubbed(entry) for entry in send.attempt_log or []]
    ScheduledSend.objects.bulk_update(
        sends, [*_SCRUBBED_FIELDS, "reason", "attempt_log"], batch_size=500
    )


def _attempt_scrubbed(entry: Any) -> Any:
    if isinstance(entry, dict) and isinstance(entry.get("outcome"), str):
        return {**entry, "outcome": _without_detail(entry["outcome"])}
    return entry


def erased_customers_settle(*, events: list[Event]) -> list[Event]:
    """Of events being applied (their customers locked, services.applying), those whose
    customer may be enrolled. A customer whose external id was erased before (a late event
    made them anew) is erased again here, with their events, and enrols nowhere; one query
    for the chunk."""
    customers = {e.customer.pk: e.customer for e in events if e.customer is not None}
    erased_ids = marketing_erasure.erased_external_ids(
        external_ids=[c.external_id for c in customers.values() if c.erased_at is None]
    )
    gone = {pk for pk, c in customers.items() if c.erased_at is not None}
    for pk, customer in customers.items():
        if customer.external_id in erased_ids:
            logger.warning("an event for an erased customer: customer %s erased again", pk)
            _customer_erase_locked(customer, dry_run=False)
            gone.add(pk)
    return [e for e in events if e.customer_id not in gone]
