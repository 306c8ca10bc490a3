"""Pacing: frequency caps across journeys, journey priority, and quiet hours.

The rules, in one place (README, "Pacing"):

- **Quiet hours.** A journey sends only inside its send window (its own hours, the site's
  NUDGE_SEND_WINDOW, or none), read in the customer's time zone (journeys.sendwindow). A
  send due outside it moves to the window's next opening, at enrolment (`send_due_paced`)
  and again at dispatch (a deferred send may land in quiet hours; the customer's time zone
  may have changed).
- **Frequency caps.** `FrequencyCap` rows: at most N messages on a channel per period to one
  customer, across every journey. What counts: the customer's sends on that channel that are
  `sent` with sent_at in the period, and those whose provider call is under way (a call in
  flight may succeed: it holds its slot until its outcome is known). Transactional journeys'
  sends neither count nor are capped.
- **Priority.** A send gives way to a competing send of the same customer and channel that
  ranks before it: higher `Journey.priority`, then the earlier intended time, then the lower
  id. The competitors are the take's own sends (decided in rank order, so a granted one
  counts for the next) and the customer's other active sends on the channel that are claimed
  and not called yet, or pending and due within NUDGE_CAP_PRIORITY_WINDOW_SECONDS. A send
  whose cap is full waits until the oldest counted send leaves the period; one that gave way
  to a competitor waits until that competitor's due time plus `GIVE_WAY_SECONDS`, and is
  checked again then (the competitor may have been refused).
- **Deferred, not dropped.** A send that must wait goes back to `pending` with its new
  due_at and the reason; its `intended_at` keeps when it was meant to go out, and its max
  lateness counts from there. When the wait would pass the max lateness, it is `skipped`
  ("capped: …", "quiet hours: …").
- **Transactional journeys** ignore both.

Concurrency: dispatch decides under each customer's advisory lock (services.inflight), held
from before the take reads the caps until the call's outcome is saved, and the counted
sends include calls in flight: two workers never grant the same slot.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Q

from journeys import selectors
from journeys.durations import humanize
from journeys.models import FrequencyCap, Journey, ScheduledSend, SendWindowMode, cap_label
from journeys.sendwindow import SendWindow, local_label, next_allowed, window_parse, zone_of
from journeys.sqlnames import sql
from marketing.models import Event

Status = ScheduledSend.Status

# how long after a competing higher-priority send's due time a send that gave way to it is
# checked again
GIVE_WAY_SECONDS = 60.0


# --- quiet hours ----------------------------------------------------------------------------


@functools.cache
def _site_window(value: str, weekdays_only: bool) -> SendWindow | None:
    return window_parse(value, weekdays_only=weekdays_only)


def site_window() -> SendWindow | None:
    """NUDGE_SEND_WINDOW and NUDGE_SEND_WEEKDAYS_ONLY (checked at startup: journeys.checks)."""
    return _site_window(settings.NUDGE_SEND_WINDOW, bool(settings.NUDGE_SEND_WEEKDAYS_ONLY))


def journey_window(journey: Journey) -> SendWindow | None:
    """The hours `journey` may send in; None: any time (transactional, or no window)."""
    if journey.transactional or journey.send_window == SendWindowMode.ALWAYS:
        return None
    if journey.send_window == SendWindowMode.CUSTOM:
        start, end = journey.send_window_start, journey.send_window_end
        if start is None or end is None or start == end:  # refused when saved; never stuck
            return None
        return SendWindow(start=start, end=end, weekdays_only=journey.send_weekdays_only)
    return site_window()


@dataclass(frozen=True)
class Paced:
    """What pacing decided for a send: its due time, its intended time when moved, and a
    status and reason when it must not stay pending as it was."""

    due_at: datetime
    intended_at: datetime | None
    status: str
    reason: str


def _quiet_hours(
    *,
    journey: Journey,
    zone_name: str,
    due_at: datetime,
    intended: datetime,
    was_due: datetime | None = None,
) -> Paced | None:
    """None when `due_at` is inside the journey's window; else the move to its next
    opening, or the skip when that is past the max lateness counted from `intended`.
    `was_due`: the due time the reason names, when not `due_at` (dispatch checks now)."""
    window = journey_window(journey)
    if window is None:
        return None
    zone = zone_of(zone_name)
    moved = next_allowed(due_at, window, zone)
    if moved <= due_at:
        return None
    opening = local_label(moved, zone, against=due_at)
    if moved - intended > journey.max_lateness:
        reason = (
            f"quiet hours: not before {opening}, past the max lateness "
            f"({humanize(journey.max_lateness)})"
        )
        return Paced(due_at=due_at, intended_at=None, status=Status.SKIPPED, reason=reason)
    shown = was_due or due_at
    was = f"{shown.astimezone(zone):%H:%M}"
    if shown.astimezone(zone).date() != moved.astimezone(zone).date():
        was = local_label(shown, zone, against=moved).removesuffix(f" {zone.key}")
    return Paced(
        due_at=moved,
        intended_at=intended,
        status=Status.PENDING,
        reason=f"quiet hours: moved to {opening} (was due {was})",
    )


def send_due_paced(*, journey: Journey, event: Event, due_at: datetime) -> Paced | None:
    """Enrolment: a new pending send's due time moved out of quiet hours, or the send
    skipped (None: unchanged). Reads the customer locked with the event (no query)."""
    if journey_window(journey) is None:
        return None
    customer = event.customer
    return _quiet_hours(
        journey=journey,
        zone_name=customer.timezone if customer is not None else "",
        due_at=due_at,
        intended=due_at,
    )


# --- frequency caps at dispatch -------------------------------------------------------------


@dataclass(frozen=True)
class _Cap:
    max_sends: int
    period: timedelta
    label: str


@dataclass(frozen=True)
class _Counted:
    """A send that holds a slot: sent at `at`, or (in_flight) called since `at`."""

    at: datetime
    in_flight: bool


@dataclass(frozen=True)
class _Competitor:
    rank: tuple[int, datetime, int]
    due_at: datetime
    slug: str
    priority: int


def _rank(priority: int, intended: datetime, send_id: int) -> tuple[int, datetime, int]:
    return (-priority, intended, send_id)


def _utc(moment: datetime) -> str:
    """'3 Dec 10:02 UTC'."""
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%b %H:%M} UTC"


# The take's customers' sends that hold or compete for a capped slot: sent within the
# longest period (the partial index send_sent_customer_channel), and active ones (the partial
# index send_active_customer) in flight, claimed, or pending and due soon. One statement per
# take, whatever its size (tests/journeys/test_pacing.py checks the plan).
_CAPPED_SENDS_SQL = sql("""
SELECT id, customer_id, channel, journey_id, status, sent_at, call_started_at, due_at,
       intended_at
  FROM {send}
 WHERE customer_id = ANY(%(customers)s::bigint[]) AND channel = ANY(%(channels)s::varchar[])
   AND status = {sent} AND sent_at > %(since)s
UNION ALL
SELECT id, customer_id, channel, journey_id, status, sent_at, call_started_at, due_at,
       intended_at
  FROM {send}
 WHERE customer_id = ANY(%(customers)s::bigint[]) AND status IN ({active})
   AND channel = ANY(%(channels)s::varchar[])
   AND (status = {sending} OR due_at <= %(horizon)s)
   AND NOT id = ANY(%(taking)s::bigint[])
""")


@dataclass
class DispatchPacing:
    """A take's pacing: the caps and the take's customers' counted and competing sends,
    loaded once (`load`), then `send_check` for each send, in `order`."""

    now: datetime
    caps: dict[str, list[_Cap]] = field(default_factory=dict)
    counted: dict[tuple[int, str], list[_Counted]] = field(default_factory=dict)
    competitors: dict[tuple[int, str], list[_Competitor]] = field(default_factory=dict)

    @classmethod
    def load(cls, sends: list[ScheduledSend], now: datetime) -> DispatchPacing:
        """Two queries at most per take: the active caps, then (only when a non-transactional
        send of the take is on a capped channel) its customers' counted and competing sends."""
        plan = cls(now=now)
        paced = [s for s in sends if not s.journey.transactional]
        if not paced:
            return plan
        for cap in FrequencyCap.objects.filter(active=True):
            plan.caps.setdefault(cap.channel, []).append(
                _Cap(cap.max_sends, cap.period, cap_label(cap.channel, cap.max_sends, cap.period))
            )
        capped = [s for s in paced if s.channel in plan.caps]
        if not capped:
            return plan
        longest = max(cap.period for caps in plan.caps.values() for cap in caps)
        params = {
            "customers": sorted({s.customer_id for s in capped}),
            "channels": sorted({s.channel for s in capped}),
            "since": now - longest,
            "horizon": now + timedelta(seconds=settings.NUDGE_CAP_PRIORITY_WINDOW_SECONDS),
            "taking": sorted(s.pk for s in sends),
        }
        rows = _capped_sends(params)
        journeys = {
            j.pk: j
            for j in selectors.journeys_all(recheck_after=settings.NUDGE_JOURNEY_RECHECK_SECONDS)
        }
        for (
            send_id,
            customer_id,
            channel,
            journey_id,
            status,
            sent_at,
            started,
            due,
            intended,
        ) in rows:
            journey = journeys.get(journey_id)
            if journey is None or journey.transactional:
                continue
            key = (customer_id, channel)
            if status == Status.SENT:
                plan.counted.setdefault(key, []).append(_Counted(sent_at, in_flight=False))
            elif status == Status.SENDING and started is not None:
                plan.counted.setdefault(key, []).append(_Counted(started, in_flight=True))
            else:
                plan.competitors.setdefault(key, []).append(
                    _Competitor(
                        rank=_rank(journey.priority, intended or due, send_id),
                        due_at=max(due, now),
                        slug=journey.slug,
                        priority=journey.priority,
                    )
                )
        return plan

    @staticmethod
    def order(sends: list[ScheduledSend]) -> list[ScheduledSend]:
        """The take's sends in the order they are decided: by rank, so that a send granted a
        slot counts for the lower-ranked ones of the same customer."""
        return sorted(sends, key=lambda s: _rank(s.journey.priority, s.intended, s.pk))

    def send_check(self, send: ScheduledSend, now: datetime) -> tuple[str, str] | None:
        """None: the send may go now (a capped one then holds its slot for the rest of the
        take). Else (status, reason): `pending` with send.due_at, intended_at and claimed_at
        moved (deferred), or `skipped` (the wait would pass its max lateness)."""
        journey = send.journey
        if journey.transactional:
            return None
        zone_name = send.customer.timezone
        quiet = _quiet_hours(
            journey=journey,
            zone_name=zone_name,
            due_at=now,
            intended=send.intended,
            was_due=min(send.due_at, now),
        )
        if quiet is not None:
            return self._apply(send, quiet)
        caps = self.caps.get(send.channel)
        if not caps:
            return None
        key = (send.customer_id, send.channel)
        blocked = self._blocked(send, key, caps, now)
        if blocked is None:  # it goes now: it counts for the take's next sends
            self.counted.setdefault(key, []).append(_Counted(now, in_flight=False))
            return None
        moment, label, detail = blocked
        reason = f"{label} ({detail})"
        if moment - send.intended > journey.max_lateness:
            return Status.SKIPPED, f"capped: {reason}"[:500]
        deferred = f"deferred: capped, {reason}"
        quiet = _quiet_hours(
            journey=journey, zone_name=zone_name, due_at=moment, intended=send.intended
        )
        if quiet is not None and quiet.status == Status.SKIPPED:
            return Status.SKIPPED, f"capped: {reason}; then {quiet.reason}"[:500]
        if quiet is not None:
            moment = quiet.due_at
            deferred += f", then {quiet.reason.split(' (was due')[0]}"
        return self._apply(
            send,
            Paced(due_at=moment, intended_at=send.intended, status=Status.PENDING, reason=deferred),
        )

    def _blocked(
        self, send: ScheduledSend, key: tuple[int, str], caps: list[_Cap], now: datetime
    ) -> tuple[datetime, str, str] | None:
        """(when to try again, the cap's label, why) when a cap keeps `send` from going now."""
        counted = self.counted.get(key, [])
        rank = _rank(send.journey.priority, send.intended, send.pk)
        ahead = sorted(
            (c for c in self.competitors.get(key, []) if c.rank < rank), key=lambda c: c.rank
        )
        full: list[tuple[datetime, str, str]] = []
        kept: list[tuple[datetime, str, str]] = []
        for cap in caps:
            inside = sorted((c for c in counted if c.at > now - cap.period), key=lambda c: c.at)
            if len(inside) >= cap.max_sends:
                # free once the oldest ones have left the period, one slot's worth
                leaving = inside[len(inside) - cap.max_sends]
                what = "in flight since" if leaving.in_flight else "sent"
                full.append((leaving.at + cap.period, cap.label, f"{what} {_utc(leaving.at)}"))
            elif len(inside) + len(ahead) >= cap.max_sends:
                holder = ahead[cap.max_sends - len(inside) - 1]
                detail = (
                    f"kept for '{holder.slug}', priority {holder.priority}, "
                    f"due {_utc(holder.due_at)}"
                )
                kept.append(
                    (holder.due_at + timedelta(seconds=GIVE_WAY_SECONDS), cap.label, detail)
                )
        if full:
            return max(full)
        if kept:
            return max(kept)
        return None

    @staticmethod
    def _apply(send: ScheduledSend, paced: Paced) -> tuple[str, str]:
        if paced.status == Status.PENDING:
            send.intended_at = paced.intended_at
            send.due_at = paced.due_at
            send.claimed_at = None
        return paced.status, paced.reason[:500]


def _capped_sends(params: dict[str, Any]) -> list[tuple[Any, ...]]:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_CAPPED_SENDS_SQL, params)
            return cursor.fetchall()
    # SQLite (one process): the same rows through the ORM
    rows = ScheduledSend.objects.filter(
        customer_id__in=params["customers"], channel__in=params["channels"]
    ).filter(
        Q(status=Status.SENT, sent_at__gt=params["since"])
        | (
            Q(status__in=ScheduledSend.ACTIVE)
            & (Q(status=Status.SENDING) | Q(due_at__lte=params["horizon"]))
            & ~Q(pk__in=params["taking"])
        )
    )
    columns = ["id", "customer_id", "channel", "journey_id", "status", "sent_at"]
    columns += ["call_started_at", "due_at", "intended_at"]
    return list(rows.values_list(*columns))
