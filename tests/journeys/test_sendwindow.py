"""Quiet hours' rule (journeys.sendwindow), pure: windows, midnight, weekdays, DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from journeys.sendwindow import (
    SendWindow,
    is_allowed,
    local_label,
    next_allowed,
    time_parse,
    window_parse,
    zone_of,
)

PARIS = zone_of("Europe/Paris")
NEW_YORK = zone_of("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def window(text: str, *, weekdays_only: bool = False) -> SendWindow:
    parsed = window_parse(text, weekdays_only=weekdays_only)
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("09:00-21:00", SendWindow(time(9), time(21))),
        (" 9:30 - 17:05 ", SendWindow(time(9, 30), time(17, 5))),
        ("20:00-08:00", SendWindow(time(20), time(8))),
        ("", None),
        ("off", None),
    ],
)
def test_window_parse(text, expected):
    assert window_parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("09:00-09:00", "must differ"),
        ("25:00-26:00", "hour must be in 0..23"),
        ("nine to five", "not a send window"),
        ("09:00", "not a send window"),
    ],
)
def test_window_parse_refuses_clearly(text, message):
    with pytest.raises(ValueError, match=message):
        window_parse(text)


def test_time_parse():
    assert time_parse("07:05") == time(7, 5)
    for bad in ("7h", "24:00", 9, None):
        with pytest.raises(ValueError, match="time of day"):
            time_parse(bad)


def test_an_empty_or_unknown_time_zone_is_utc():
    assert zone_of("").key == "UTC"
    assert zone_of(None).key == "UTC"
    assert zone_of("Mars/Olympus_Mons").key == "UTC"
    assert zone_of("../../etc/passwd").key == "UTC"
    assert zone_of("Europe/Paris").key == "Europe/Paris"


def test_a_send_due_at_night_moves_to_the_morning_in_the_customers_zone():
    due = utc(2026, 12, 3, 2, 12)  # 03:12 in Paris
    moved = next_allowed(due, window("09:00-21:00"), PARIS)
    assert moved == utc(2026, 12, 3, 8, 0)  # 09:00 CET
    assert local_label(moved, PARIS, against=due) == "09:00 Europe/Paris"


def test_inside_the_window_nothing_moves_and_the_end_is_excluded():
    nine_pm = utc(2026, 12, 3, 20, 0)  # 21:00 CET
    assert next_allowed(utc(2026, 12, 3, 12, 0), window("09:00-21:00"), PARIS) == utc(
        2026, 12, 3, 12, 0
    )
    assert not is_allowed(nine_pm, window("09:00-21:00"), PARIS)
    assert next_allowed(nine_pm, window("09:00-21:00"), PARIS) == utc(2026, 12, 4, 8, 0)


def test_a_window_that_crosses_midnight():
    night = window("20:00-08:00")
    assert next_allowed(utc(2026, 12, 3, 11, 0), night, PARIS) == utc(2026, 12, 3, 19, 0)
    assert is_allowed(utc(2026, 12, 3, 23, 30), night, PARIS)  # 00:30 local
    assert is_allowed(utc(2026, 12, 4, 6, 59), night, PARIS)  # 07:59
    assert not is_allowed(utc(2026, 12, 4, 7, 0), night, PARIS)  # 08:00


def test_weekdays_only_moves_a_saturday_send_to_monday():
    due = utc(2026, 12, 5, 10, 0)  # Saturday 11:00 in Paris
    moved = next_allowed(due, window("09:00-21:00", weekdays_only=True), PARIS)
    assert moved == utc(2026, 12, 7, 8, 0)  # Monday 09:00
    assert local_label(moved, PARIS, against=due) == "Mon 7 Dec 09:00 Europe/Paris"


def test_weekdays_only_with_midnight_the_night_belongs_to_the_day_it_starts():
    nights = window("20:00-08:00", weekdays_only=True)
    assert is_allowed(utc(2026, 12, 5, 6, 0), nights, PARIS)  # Sat 07:00: Friday's night
    assert not is_allowed(utc(2026, 12, 5, 20, 0), nights, PARIS)  # Sat 21:00
    assert not is_allowed(utc(2026, 12, 7, 6, 0), nights, PARIS)  # Mon 07:00: Sunday's
    assert next_allowed(utc(2026, 12, 5, 12, 0), nights, PARIS) == utc(2026, 12, 7, 19, 0)


# --- DST: Europe/Paris changes on 29 Mar 2026 (02:00 -> 03:00) and 25 Oct 2026 (03:00 ->
# 02:00), at 01:00 UTC; America/New_York on 8 Mar 2026 (02:00 -> 03:00, 07:00 UTC) and
# 1 Nov 2026 (02:00 -> 01:00, 06:00 UTC).


def test_spring_forward_the_morning_opens_at_the_new_offset():
    # 01:30 CET, before the change; 09:00 that day is CEST (UTC+2), so 07:00 UTC
    assert next_allowed(utc(2026, 3, 29, 0, 30), window("09:00-21:00"), PARIS) == utc(
        2026, 3, 29, 7, 0
    )
    assert next_allowed(utc(2026, 3, 8, 6, 30), window("09:00-21:00"), NEW_YORK) == utc(
        2026, 3, 8, 13, 0
    )  # 09:00 EDT


def test_spring_forward_a_start_inside_the_skipped_hour_opens_when_the_clocks_jump():
    starts_skipped = window("02:30-06:00")
    # Paris: 02:30 does not exist on 29 Mar; the window opens at 03:00 CEST (01:00 UTC)
    moved = next_allowed(utc(2026, 3, 28, 23, 0), starts_skipped, PARIS)
    assert moved == utc(2026, 3, 29, 1, 0)
    assert moved.astimezone(PARIS).strftime("%H:%M %Z") == "03:00 CEST"
    # New York: 02:30 does not exist on 8 Mar; opens at 03:00 EDT (07:00 UTC)
    assert next_allowed(utc(2026, 3, 8, 5, 0), starts_skipped, NEW_YORK) == utc(2026, 3, 8, 7, 0)


def test_spring_forward_an_end_inside_the_skipped_hour_closes_when_the_clocks_jump():
    ends_skipped = window("00:00-02:30")
    assert is_allowed(utc(2026, 3, 29, 0, 59), ends_skipped, PARIS)  # 01:59 CET
    assert not is_allowed(utc(2026, 3, 29, 1, 0), ends_skipped, PARIS)  # 03:00 CEST
    assert next_allowed(utc(2026, 3, 29, 1, 0), ends_skipped, PARIS) == utc(2026, 3, 29, 22, 0)


def test_fall_back_the_morning_opens_at_the_new_offset():
    # 02:30 CEST on 25 Oct (00:30 UTC); 09:00 that day is CET (UTC+1), 08:00 UTC
    assert next_allowed(utc(2026, 10, 25, 0, 30), window("09:00-21:00"), PARIS) == utc(
        2026, 10, 25, 8, 0
    )
    assert next_allowed(utc(2026, 11, 1, 5, 0), window("09:00-21:00"), NEW_YORK) == utc(
        2026, 11, 1, 14, 0
    )  # 09:00 EST


def test_fall_back_a_start_in_the_repeated_hour_opens_at_its_first_occurrence():
    repeated = window("01:30-08:00")
    # New York, 1 Nov: 01:30 EDT (05:30 UTC), then 01:30 EST (06:30 UTC)
    midnight = utc(2026, 11, 1, 4, 0)  # 00:00 EDT
    first = next_allowed(midnight, repeated, NEW_YORK)
    assert first == utc(2026, 11, 1, 5, 30)
    assert first.astimezone(NEW_YORK).strftime("%H:%M %Z") == "01:30 EDT"


def test_fall_back_the_repeated_hour_is_allowed_by_what_the_clock_reads():
    repeated = window("01:30-08:00")
    # 01:10 EST, the second pass through 01:00-02:00: the clock reads 01:10, outside;
    # it reads 01:30 again 20 minutes later
    second_pass = utc(2026, 11, 1, 6, 10)
    assert not is_allowed(second_pass, repeated, NEW_YORK)
    assert next_allowed(second_pass, repeated, NEW_YORK) == utc(2026, 11, 1, 6, 30)
    # a window that ends inside the repeated hour opens again when the clock goes back
    early = window("00:30-01:30")
    assert not is_allowed(utc(2026, 11, 1, 5, 45), early, NEW_YORK)  # 01:45 EDT
    assert next_allowed(utc(2026, 11, 1, 5, 45), early, NEW_YORK) == utc(2026, 11, 1, 6, 0)


def test_paris_fall_back_night_window_crossing_the_change():
    night = window("22:00-06:00")
    # 24 Oct 22:00 CEST (20:00 UTC) to 25 Oct 06:00 CET (05:00 UTC): 10 hours of night
    assert is_allowed(utc(2026, 10, 24, 20, 0), night, PARIS)
    assert is_allowed(utc(2026, 10, 25, 4, 59), night, PARIS)
    assert not is_allowed(utc(2026, 10, 25, 5, 0), night, PARIS)
    assert next_allowed(utc(2026, 10, 25, 5, 0), night, PARIS) == utc(2026, 10, 25, 21, 0)
