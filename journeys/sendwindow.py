"""Quiet hours: the hours of the customer's local day when a journey may send (pure functions).

A window is a start and an end wall-clock time, optionally on weekdays only, read in the
customer's IANA time zone. The rule, in one place:

- An instant is **allowed** when its local wall-clock time is in [start, end). A window whose
  end is before its start crosses midnight (20:00-08:00: from 20:00 to 08:00 the next day).
  start == end is refused (say "no window" instead of "all day").
- Each allowed stretch belongs to the local day it starts on; with `weekdays_only`, only the
  stretches that start on Monday to Friday are allowed (20:00-08:00 on weekdays: Friday 20:00
  to Saturday 08:00 is allowed, Sunday 20:00 to Monday 08:00 is not).
- DST: a start or end inside the skipped hour (spring forward) is the instant the clocks jump
  (a 02:30 start opens at 03:00 on that day); in the repeated hour (fall back) the wall
  clock decides, so a 01:30 start opens at the first 01:30, and the hour is allowed or not by
  what the clock reads during it.

`next_allowed(moment, window, zone)` is the earliest allowed instant at or after `moment`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class SendWindow:
    start: time
    end: time
    weekdays_only: bool = False

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError(
                "a send window's start and end must differ (no window at all: turn it off)"
            )

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def __str__(self) -> str:
        text = f"{self.start:%H:%M}-{self.end:%H:%M}"
        return f"{text} on weekdays" if self.weekdays_only else text


def window_parse(value: str, *, weekdays_only: bool = False) -> SendWindow | None:
    """'09:00-21:00' -> a window; '' or 'off' -> None (no quiet hours); ValueError otherwise."""
    text = value.strip()
    if text.lower() in {"", "off", "none"}:
        return None
    match = _WINDOW_RE.match(text)
    if not match:
        raise ValueError(f"{value!r} is not a send window such as 09:00-21:00 (or 'off')")
    hours_start, minutes_start, hours_end, minutes_end = (int(g) for g in match.groups())
    try:
        start, end = time(hours_start, minutes_start), time(hours_end, minutes_end)
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    return SendWindow(start=start, end=end, weekdays_only=weekdays_only)


def time_parse(value: object) -> time:
    """'09:00' -> time(9, 0); ValueError otherwise."""
    if isinstance(value, str) and (match := re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip())):
        try:
            return time(int(match.group(1)), int(match.group(2)))
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a time of day such as 09:00")


def zone_of(name: str | None) -> ZoneInfo:
    """The customer's time zone; an empty or unknown name is UTC."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def is_allowed(moment: datetime, window: SendWindow, zone: ZoneInfo) -> bool:
    local = moment.astimezone(zone)
    wall = local.time().replace(tzinfo=None)
    if not window.crosses_midnight:
        inside, day = window.start <= wall < window.end, local.date()
    elif wall >= window.start:
        inside, day = True, local.date()
    else:
        inside, day = wall < window.end, local.date() - timedelta(days=1)
    return inside and (not window.weekdays_only or day.weekday() < 5)


def next_allowed(moment: datetime, window: SendWindow, zone: ZoneInfo) -> datetime:
    """The earliest allowed instant at or after `moment` (aware, in UTC).

    The wall clock enters the window either by reaching its start (either occurrence of it on
    a fall-back day, or the jump when the start is skipped) or by a DST jump that lands
    inside: those instants, and `moment` itself, are the only candidates.
    """
    moment = moment.astimezone(UTC)
    if is_allowed(moment, window, zone):
        return moment
    first = moment.astimezone(zone).date() - timedelta(days=1)
    candidates: set[datetime] = set()
    for offset in range(10):  # a weekend and a DST change fit in far fewer days
        day = first + timedelta(days=offset)
        candidates.update(_wall_instants(day, window.start, zone))
        candidates.update(_transitions(day, zone))
    for candidate in sorted(c for c in candidates if c > moment):
        if is_allowed(candidate, window, zone):
            return candidate
    raise AssertionError(f"no allowed instant after {moment} in {window}")  # unreachable


def _wall_instants(day: date, wall: time, zone: ZoneInfo) -> list[datetime]:
    """The instants at which the clock in `zone` first reads `wall` on `day`: one, or two on
    a fall-back day (fold 0 and 1), or the jump itself when `wall` is skipped."""
    found = []
    for fold in (0, 1):
        local = datetime.combine(day, wall, tzinfo=zone).replace(fold=fold)
        instant = local.astimezone(UTC)
        back = instant.astimezone(zone)
        if back.replace(tzinfo=None) == local.replace(tzinfo=None):
            found.append(instant)
        else:  # skipped (spring forward): the clock jumps past it; the jump is when it opens
            found.extend(_transitions(day, zone))
    return found


def _transitions(day: date, zone: ZoneInfo) -> list[datetime]:
    """The instant of `zone`'s UTC offset change on the local `day`, if any (offsets change
    on whole seconds: a binary search over them)."""
    start = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
    offset_low = start.astimezone(zone).utcoffset()
    if offset_low == end.astimezone(zone).utcoffset():
        return []
    low, high = int(start.timestamp()), int(end.timestamp())  # the change is in (low, high]
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset_low:
            low = middle
        else:
            high = middle
    return [datetime.fromtimestamp(high, UTC)]


def local_label(moment: datetime, zone: ZoneInfo, *, against: datetime | None = None) -> str:
    """'09:00 Europe/Paris', or 'Mon 7 Dec 09:00 Europe/Paris' when the local day differs
    from `against`'s (for reasons a marketer reads)."""
    local = moment.astimezone(zone)
    text = f"{local:%H:%M}"
    if against is not None and against.astimezone(zone).date() != local.date():
        text = f"{local:%a} {local.day} {local:%b} {text}"
    return f"{text} {zone.key}"
