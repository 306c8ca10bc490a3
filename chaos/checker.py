"""The verdict of a chaos run: the fake provider's log of every message request, against the
database's sends and the plan's expectations.

    check(records=..., rows=..., customers=...) -> Report

- **records**: one per message request the provider got (bench/fake_provider.py
  --messages-file): when it arrived, the send id, its fate (`delivered`: a new message;
  `replay`: a known Idempotency-Key, answered with the first provider id, nothing sent;
  `error`: a fault answer), and the rendered body.
- **rows**: every ScheduledSend of the run (rows_load).
- **customers**: what each customer must, may or must not get (chaos.plan), with the moments
  the harness saw their payment or opt-out answered 2xx (committed before that moment).

Report.line() is the machine-readable verdict (with the run's own counts: unapplied events,
events never answered 2xx, cluster stalls), one line, every count 0 on a good run except
`ambiguous`, which is explained apart (Report.explain()):

    CHAOS lost=0 duplicated=0 ambiguous=2 paid_before_send=0 opted_out=0 ...
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CODE = re.compile(r"\bcode ([A-Z0-9]{6,32})\b")
# how long after its check a message may reach the provider (the call's own start-up):
# deliveries later than due + max lateness + this count as past max lateness
LATENESS_SLACK_S = 5.0
EARLY_SLACK_S = 1.0

# the violations, in the order of the line; `ambiguous` is printed among them but is no
# violation (see Report.explain)
KEYS = (
    "lost",
    "duplicated",
    "ambiguous",
    "paid_before_send",
    "opted_out",
    "past_max_lateness",
    "early",
    "second_codes",
    "unsent_without_reason",
    "failed_without_provider_error",
    "stray",
    "unapplied_events",
    "not_ingested",
    "cluster_stalls",
)
NOT_A_VIOLATION = {"ambiguous"}


@dataclass(frozen=True)
class Record:
    t: float  # epoch seconds, the provider's clock
    send_id: int
    fate: str  # delivered, replay, error
    body: str = ""


@dataclass(frozen=True)
class SendRow:
    id: int
    customer: str  # external id
    journey: str  # slug
    step_position: int
    status: str
    reason: str
    due_at: float  # epoch seconds
    max_lateness_s: float
    discount_code: str | None = None
    last_error: str = ""
    attempt_log: tuple[dict[str, Any], ...] = ()
    ambiguous_retries: int = 0


@dataclass
class Expectation:
    must: set[str] = field(default_factory=set)  # journeys whose message must be delivered
    may: set[str] = field(default_factory=set)  # delivered, or cancelled by an exit event
    paid_at: float | None = None  # epoch seconds: nothing may be delivered after it
    opted_out_at: float | None = None


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYS, 0))
    samples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    ambiguous_replays: int = 0
    ambiguous_unrecorded: int = 0
    ambiguous_rows: int = 0  # rows with ambiguous_retries > 0 (the database's own count)
    # the ambiguous sends by cause: a worker lost mid-call (the lease re-drove it), a call
    # that timed out (retried as a transient error), neither
    ambiguous_causes: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    sends: int = 0

    def add(self, key: str, detail: str) -> None:
        self.counts[key] += 1
        if len(self.samples[key]) < 5:
            self.samples[key].append(detail)

    @property
    def violations(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if v and k not in NOT_A_VIOLATION}

    @property
    def ok(self) -> bool:
        return not self.violations

    def line(self) -> str:
        return "CHAOS " + " ".join(f"{key}={self.counts[key]}" for key in KEYS)

    def explain(self) -> list[str]:
        lines = [
            f"CHAOS ambiguous={self.counts['ambiguous']}: sends the provider had accepted "
            f"when they were called again ({self.ambiguous_replays} replays, answered with the "
            "first provider id thanks to the send's Idempotency-Key, so nothing went out twice; "
            f"{self.ambiguous_unrecorded} delivered but not recorded as sent, then cancelled or "
            "skipped). The provider took each message and its caller never learnt it: the "
            "worker died mid-call (the lease handed the send out again: "
            "ScheduledSend.ambiguous_retries, "
            f"{self.ambiguous_rows} rows) or the call timed out (a transient error, retried "
            "with the same key), by design. By cause: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.ambiguous_causes.items())) or "none")
            + "."
        ]
        for key, details in self.samples.items():
            if details:
                lines.append(f"  {key}: " + "; ".join(details))
        return lines


def check(
    *,
    records: Iterable[Record],
    rows: Iterable[SendRow],
    customers: dict[str, Expectation],
    unapplied_events: int = 0,
    not_ingested: int = 0,
    cluster_stalls: int = 0,
) -> Report:
    report = Report()
    report.counts["cluster_stalls"] = cluster_stalls
    report.counts["unapplied_events"] = unapplied_events
    report.counts["not_ingested"] = not_ingested
    by_id = {row.id: row for row in rows}
    report.sends = len(by_id)
    first_delivery: dict[int, Record] = {}
    deliveries: dict[int, int] = defaultdict(int)
    replays: set[int] = set()
    codes: dict[int, set[str]] = defaultdict(set)
    for record in sorted(records, key=lambda r: r.t):
        codes[record.send_id].update(CODE.findall(record.body))
        if record.fate == "delivered":
            deliveries[record.send_id] += 1
            first_delivery.setdefault(record.send_id, record)
        elif record.fate == "replay":
            replays.add(record.send_id)
    report.delivered = len(first_delivery)

    # per send: what the provider did with it
    delivered_for: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    for send_id, record in first_delivery.items():
        row = by_id.get(send_id)
        if row is None:
            report.add("stray", f"send {send_id} delivered, no such row")
            continue
        delivered_for[(row.customer, row.journey, row.step_position)].append(send_id)
        if deliveries[send_id] > 1:
            report.add("duplicated", f"send {send_id} delivered {deliveries[send_id]} times")
        expect = customers.get(row.customer, Expectation())
        if expect.paid_at is not None and record.t > expect.paid_at:
            report.add(
                "paid_before_send",
                f"send {send_id} delivered {record.t - expect.paid_at:.1f} s after the payment",
            )
        if expect.opted_out_at is not None and record.t > expect.opted_out_at:
            report.add(
                "opted_out",
                f"send {send_id} delivered {record.t - expect.opted_out_at:.1f} s after the "
                "opt-out",
            )
        late = record.t - row.due_at
        if late > row.max_lateness_s + LATENESS_SLACK_S:
            report.add("past_max_lateness", f"send {send_id} delivered {late:.0f} s after due")
        if late < -EARLY_SLACK_S:
            report.add("early", f"send {send_id} delivered {-late:.1f} s before due")
        if row.status != "sent":
            report.ambiguous_unrecorded += 1
    for send_id in replays:
        if send_id in first_delivery:
            report.ambiguous_replays += 1
        else:
            report.add("stray", f"send {send_id} replayed, never delivered")
    ambiguous = replays | {s for s in first_delivery if s in by_id and by_id[s].status != "sent"}
    ambiguous &= set(first_delivery)
    report.counts["ambiguous"] = len(ambiguous)
    causes: dict[str, int] = defaultdict(int)
    for send_id in ambiguous:
        causes[_ambiguous_cause(by_id[send_id])] += 1
    report.ambiguous_causes = dict(causes)
    report.ambiguous_rows = sum(1 for row in by_id.values() if row.ambiguous_retries)

    # the same promise (customer, journey, step) delivered by two rows: a duplicate too
    for (customer, journey, step), send_ids in delivered_for.items():
        if len(send_ids) > 1:
            report.add("duplicated", f"{customer} got {journey} step {step} {len(send_ids)} times")
        promised = {c for s in send_ids for c in codes[s]}
        if len(promised) > 1:
            report.add("second_codes", f"{customer} got codes {sorted(promised)} in {journey}")

    # per row: codes, reasons, failures
    for row in by_id.values():
        sent_codes = codes.get(row.id, set())
        if len(sent_codes) > 1 or (sent_codes and sent_codes != {row.discount_code}):
            report.add(
                "second_codes",
                f"send {row.id} rendered {sorted(sent_codes)}, its code is {row.discount_code}",
            )
        if row.status == "sent":
            if row.id not in first_delivery:
                report.add("lost", f"send {row.id} marked sent, never delivered")
            continue
        if row.status in ("pending", "sending") or not row.reason.strip():
            report.add(
                "unsent_without_reason", f"send {row.id} {row.status} {row.reason!r}".strip()
            )
        if row.status == "failed" and not _provider_error(row):
            report.add("failed_without_provider_error", f"send {row.id}: {row.reason}")

    # per customer: what had to arrive
    rows_for: dict[tuple[str, str], list[SendRow]] = defaultdict(list)
    for row in by_id.values():
        rows_for[(row.customer, row.journey)].append(row)
    got = {(customer, journey) for customer, journey, _ in delivered_for}
    for external_id, expect in customers.items():
        for journey in sorted(expect.must):
            if (external_id, journey) not in got:
                found = rows_for[(external_id, journey)]
                statuses = [f"{r.id} {r.status} {r.reason}" for r in found]
                report.add("lost", f"{external_id} never got {journey} ({statuses or 'no send'})")
        for journey in sorted(expect.may - expect.must):
            if (external_id, journey) in got:
                continue
            unexplained = [
                r
                for r in rows_for[(external_id, journey)]
                if not (r.status == "cancelled" and r.reason.startswith("cancelled by"))
            ]
            if unexplained:
                r = unexplained[0]
                report.add(
                    "lost", f"{external_id} never got {journey} (send {r.id} {r.status} {r.reason})"
                )
    return report


def _ambiguous_cause(row: SendRow) -> str:
    if row.ambiguous_retries:
        return "worker lost mid-call"
    if any("timed out" in str(entry.get("outcome", "")) for entry in row.attempt_log):
        return "call timed out"
    return "outcome not recorded, then cancelled or skipped"


def _provider_error(row: SendRow) -> bool:
    """Whether a failed send's provider said no at least once (or its message did not
    render): the only reasons an attempt counts against it."""
    for entry in row.attempt_log:
        outcome = str(entry.get("outcome", ""))
        if outcome.startswith(("transient error", "permanent error")):
            return True
    return "render" in row.reason


def records_read(path: Path) -> list[Record]:
    """The provider's --messages-file: one JSON object a line."""
    records: list[Record] = []
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        data = json.loads(line)
        records.append(
            Record(
                t=float(data["t"]),
                send_id=int(data["send_id"]),
                fate=str(data["fate"]),
                body=str(data.get("body", "")),
            )
        )
    return records


def rows_load(*, journey_slugs: Iterable[str] | None = None) -> list[SendRow]:
    """Every ScheduledSend (of these journeys), as the checker reads them."""
    from journeys.models import ScheduledSend

    sends = ScheduledSend.objects.all()
    if journey_slugs is not None:
        sends = sends.filter(journey__slug__in=list(journey_slugs))
    rows = []
    for values in sends.values_list(
        "id",
        "customer__external_id",
        "journey__slug",
        "step_position",
        "status",
        "reason",
        "due_at",
        "journey__max_lateness",
        "discount_code",
        "last_error",
        "attempt_log",
        "ambiguous_retries",
    ).iterator(chunk_size=5000):
        (pk, customer, slug, step, status, reason, due, lateness, code, error, log, amb) = values
        rows.append(
            SendRow(
                id=pk,
                customer=customer,
                journey=slug,
                step_position=step,
                status=status,
                reason=reason,
                due_at=due.timestamp(),
                max_lateness_s=lateness.total_seconds(),
                discount_code=code,
                last_error=error,
                attempt_log=tuple(log or ()),
                ambiguous_retries=amb,
            )
        )
    return rows
