"""ISO 8601 durations as journeys are written: `PT30M`, `PT3S`, `P7D`, `P1DT2H`."""

from __future__ import annotations

from datetime import timedelta

from django.utils.dateparse import parse_duration


def parse_iso_duration(value: object) -> timedelta:
    """A non-negative ISO 8601 duration (days, hours, minutes, seconds); ValueError otherwise."""
    if not isinstance(value, str) or not value.upper().startswith("P"):
        raise ValueError(f"{value!r} is not an ISO 8601 duration such as PT30M or P7D")
    parsed = parse_duration(value.upper())
    if parsed is None or value.upper() in {"P", "PT"}:
        raise ValueError(f"{value!r} is not an ISO 8601 duration such as PT30M or P7D")
    if parsed < timedelta(0):
        raise ValueError(f"{value!r} is negative")
    return parsed


def format_iso_duration(value: timedelta) -> str:
    """Shortest ISO 8601 form: 1800 s -> PT30M, 7 days -> P7D, 0 -> PT0S."""
    total = value.total_seconds()
    days, rest = divmod(int(total), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    fraction = total - int(total)
    text = "P" + (f"{days}D" if days else "")
    clock = ""
    if hours:
        clock += f"{hours}H"
    if minutes:
        clock += f"{minutes}M"
    if seconds or fraction:
        clock += f"{seconds + fraction:g}S"
    if clock:
        text += "T" + clock
    return text if text != "P" else "PT0S"


def humanize(value: timedelta) -> str:
    """'2 h 5 min', '40 s': for reasons a marketer reads."""
    total = int(value.total_seconds())
    if total < 60:
        return f"{total} s"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [
        f"{days} d" if days else "",
        f"{hours} h" if hours else "",
        f"{minutes} min" if minutes else "",
    ]
    return " ".join(p for p in parts if p)
