"""Pacing end to end (journeys.services.pacing): events in, enrolment, the ticker's claim and
dispatch on PostgreSQL; frequency caps, priority, quiet hours, transactional journeys."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from journeys import services
from journeys.models import FrequencyCap, Journey, ScheduledSend
from journeys.sendwindow import SendWindow, local_label, next_allowed
from marketing.models import Customer
from tests.journeys.conftest import (
    dispatch_due,
    ingest,
    make_event,
    make_journey,
    minutes_ago,
    sends,
)

pytestmark = pytest.mark.django_db

SMS_BODY = {"body": "Hi {{ customer.first_name }}"}


def sms_journey(slug: str, **overrides: Any) -> Journey:
    spec: dict[str, Any] = {
        "slug": slug,
        "name": slug,
        "max_lateness": "P2D",
        "steps": [{"delay": "PT10M", "channel": "sms", "template": SMS_BODY}],
    }
    return make_journey(**{**spec, **overrides})


def email_journey(slug: str, **overrides: Any) -> Journey:
    spec: dict[str, Any] = {
        "slug": slug,
        "name": slug,
        "max_lateness": "P5D",
        "steps": [
            {"delay": "PT10M", "channel": "email", "template": {"subject": "Hi", "body": "x"}}
        ],
    }
    return make_journey(**{**spec, **overrides})


def checkout(event_id: str, *, user: str = "u_1", minutes: float = 11, **fields: Any) -> None:
    ingest(make_event(event_id, "checkout_started", user=user, at=minutes_ago(minutes),
                      cart=f"c_{event_id}", **fields))  # fmt: skip


def registered(event_id: str, *, user: str = "u_1", minutes: float = 11, **fields: Any) -> None:
    ingest(make_event(event_id, "user_registered", user=user, at=minutes_ago(minutes), **fields))


def utc_label(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%b %H:%M} UTC"


def one_sms_a_day() -> FrequencyCap:
    return FrequencyCap.objects.create(channel="sms", max_sends=1, period=timedelta(days=1))


# --- frequency caps -------------------------------------------------------------------------


def test_a_capped_sms_is_deferred_until_the_cap_allows_and_then_sent():
    one_sms_a_day()
    sms_journey("first")
    sms_journey("second", trigger="user_registered", exit_on=[])
    checkout("co_1")
    assert set(dispatch_due().values()) == {"sent"}
    (first,) = sends(status="sent")

    registered("reg_1")
    (second,) = sends(journey__slug="second")
    intended = second.due_at
    assert dispatch_due() == {second.pk: "pending"}

    second.refresh_from_db()
    assert second.status == "pending"
    assert second.reason == f"deferred: capped, 1 SMS per 24 h (sent {utc_label(first.sent_at)})"
    assert second.due_at == first.sent_at + timedelta(days=1)
    assert second.intended_at == intended
    assert second.attempts == 0
    assert second.claimed_at is None
    assert dispatch_due() == {}  # not due again before the cap allows

    # a day later (moved back in time instead): the cap allows, and it goes
    ScheduledSend.objects.filter(pk=first.pk).update(sent_at=first.sent_at - timedelta(days=1))
    # (the claim reads the database's clock: in a test, the start of its transaction)
    ScheduledSend.objects.filter(pk=second.pk).update(due_at=intended)
    assert dispatch_due() == {second.pk: "sent"}
    second.refresh_from_db()
    assert second.intended_at == intended  # kept: max lateness counts from here


def test_a_capped_send_past_its_max_lateness_is_skipped_with_the_cap():
    one_sms_a_day()
    sms_journey("first")
    sms_journey("second", trigger="user_registered", exit_on=[], max_lateness="PT2H")
    checkout("co_1")
    dispatch_due()
    (first,) = sends(status="sent")
    registered("reg_1")

    (outcome,) = dispatch_due().values()

    (second,) = sends(journey__slug="second")
    assert outcome == second.status == "skipped"
    assert second.reason == f"capped: 1 SMS per 24 h (sent {utc_label(first.sent_at)})"


def test_max_lateness_of_a_deferred_send_counts_from_when_it_was_meant_to_go():
    sms_journey("first", max_lateness="PT2H")
    checkout("co_1")
    (send,) = sends()
    # deferred earlier (by a cap, say) from 3 h ago to now
    ScheduledSend.objects.filter(pk=send.pk).update(
        due_at=minutes_ago(30), intended_at=timezone.now() - timedelta(hours=3)
    )

    assert dispatch_due() == {send.pk: "skipped"}
    send.refresh_from_db()
    assert send.reason.startswith("stale: 3 h")


def test_several_caps_on_one_channel_each_must_allow_the_send():
    email_journey("news", reentry="every", dedupe="first")
    for n in range(3):
        checkout(f"co_{n}")
        assert set(dispatch_due().values()) == {"sent"}
    history = sends(status="sent")
    for days, send in zip((4, 3, 2), history, strict=True):
        ScheduledSend.objects.filter(pk=send.pk).update(
            sent_at=timezone.now() - timedelta(days=days)
        )
    FrequencyCap.objects.create(channel="email", max_sends=2, period=timedelta(days=1))
    FrequencyCap.objects.create(channel="email", max_sends=3, period=timedelta(days=7))
    oldest = ScheduledSend.objects.get(pk=history[0].pk).sent_at
    assert oldest is not None

    checkout("co_3")
    (outcome,) = dispatch_due().values()

    (fourth,) = sends(status="pending")
    assert outcome == "pending"
    # the daily cap allows it; the weekly one is full until the oldest is 7 days old
    assert fourth.due_at == oldest + timedelta(days=7)
    assert fourth.reason == f"deferred: capped, 3 emails per 7 days (sent {utc_label(oldest)})"


def test_an_sms_cap_does_not_hold_back_emails_nor_another_customer():
    one_sms_a_day()
    sms_journey("first")
    email_journey("mail")
    checkout("co_1")
    checkout("co_2", user="u_2")

    assert sorted(dispatch_due().values()) == ["sent"] * 4


def test_an_inactive_cap_does_not_apply():
    cap = one_sms_a_day()
    cap.active = False
    cap.save()
    sms_journey("first")
    sms_journey("second", trigger="user_registered", exit_on=[])
    checkout("co_1")
    registered("reg_1")

    assert sorted(dispatch_due().values()) == ["sent", "sent"]


def test_transactional_journeys_are_not_capped_and_do_not_count():
    one_sms_a_day()
    sms_journey("receipt", transactional=True)
    sms_journey("marketing", trigger="user_registered", exit_on=[])
    checkout("co_1")
    assert list(dispatch_due().values()) == ["sent"]
    checkout("co_2")  # re-entry every: a second receipt the same day
    assert list(dispatch_due().values()) == ["sent"]

    registered("reg_1")

    assert list(dispatch_due().values()) == ["sent"]  # the receipts did not count


def test_the_higher_priority_send_wins_the_slot_in_one_take():
    one_sms_a_day()
    sms_journey("a-low", priority=0)  # enrolled first (by slug): the lower id
    sms_journey("b-high", priority=10)
    checkout("co_1")
    low, high = sends()
    assert (low.journey.slug, high.journey.slug) == ("a-low", "b-high")
    claimed = services.scheduled_sends_claim_due(limit=10)

    statuses = services.scheduled_sends_dispatch(send_ids=claimed)

    assert statuses == {low.pk: "pending", high.pk: "sent"}
    low.refresh_from_db()
    high.refresh_from_db()
    assert high.sent_at is not None
    assert low.reason == f"deferred: capped, 1 SMS per 24 h (sent {utc_label(high.sent_at)})"


def test_the_higher_priority_send_wins_across_takes():
    """Each claimed send dispatched on its own, the lower priority first: it gives way to the
    claimed higher-priority one, and is checked again a minute after that one's due time."""
    one_sms_a_day()
    sms_journey("a-low", priority=0)
    sms_journey("b-high", priority=10)
    checkout("co_1")
    low, high = sends()

    before = timezone.now()
    assert dispatch_due() == {low.pk: "pending", high.pk: "sent"}  # in id order
    after = timezone.now()

    low.refresh_from_db()
    assert low.reason.startswith("deferred: capped, 1 SMS per 24 h (kept for 'b-high', priority 10")
    # the claimed one is due now: a minute after that
    assert before + timedelta(minutes=1) <= low.due_at <= after + timedelta(minutes=1)
    # checked again then: the cap is full now, so it waits for the day (within P2D)
    ScheduledSend.objects.filter(pk=low.pk).update(due_at=minutes_ago(30))
    assert dispatch_due() == {low.pk: "pending"}
    low.refresh_from_db()
    high.refresh_from_db()
    assert low.reason == f"deferred: capped, 1 SMS per 24 h (sent {utc_label(high.sent_at)})"


def test_a_send_gives_way_to_a_higher_priority_one_due_within_the_window(settings):
    settings.NUDGE_CAP_PRIORITY_WINDOW_SECONDS = 15 * 60
    one_sms_a_day()
    sms_journey("low", trigger="user_registered", exit_on=[])
    sms_journey("high", priority=10)
    registered("reg_1", minutes=11)  # low due a minute ago
    checkout("co_1", minutes=5)  # high due in 5 minutes
    (high,) = sends(journey__slug="high")

    (low_id,) = dispatch_due()

    low = ScheduledSend.objects.get(pk=low_id)
    assert low.status == "pending"
    assert low.reason == (
        f"deferred: capped, 1 SMS per 24 h (kept for 'high', priority 10, due "
        f"{utc_label(high.due_at)})"
    )
    assert low.due_at == high.due_at + timedelta(minutes=1)


def test_a_higher_priority_send_due_beyond_the_window_keeps_nothing(settings):
    settings.NUDGE_CAP_PRIORITY_WINDOW_SECONDS = 15 * 60
    one_sms_a_day()
    sms_journey("low", trigger="user_registered", exit_on=[])
    sms_journey("high", priority=10, steps=[{"delay": "PT40M", "channel": "sms",
                                             "template": SMS_BODY}])  # fmt: skip
    registered("reg_1", minutes=11)
    checkout("co_1", minutes=5)  # high due in 35 minutes

    assert list(dispatch_due().values()) == ["sent"]


def test_the_cap_check_is_one_query_per_take_whatever_its_size():
    one_sms_a_day()
    sms_journey("first")
    for n in range(6):
        checkout(f"co_{n}", user=f"u_{n}")
    claimed = services.scheduled_sends_claim_due(limit=10)
    assert len(claimed) == 6

    with CaptureQueriesContext(connection) as queries:
        statuses = services.scheduled_sends_dispatch(send_ids=claimed)

    assert set(statuses.values()) == {"sent"}
    texts = [q["sql"] for q in queries.captured_queries]
    assert sum(FrequencyCap._meta.db_table in t for t in texts) == 1
    assert sum("UNION ALL" in t and "call_started_at" in t for t in texts) == 1


def test_without_caps_the_take_reads_only_the_caps_table():
    sms_journey("first")
    checkout("co_1")
    claimed = services.scheduled_sends_claim_due(limit=10)

    with CaptureQueriesContext(connection) as queries:
        services.scheduled_sends_dispatch(send_ids=claimed)

    assert not any("UNION ALL" in q["sql"] for q in queries.captured_queries)


# --- quiet hours ----------------------------------------------------------------------------


def _window_excluding_now(zone: ZoneInfo) -> tuple[SendWindow, dict[str, Any]]:
    """Own hours that open 3 hours from now, local, for 2 hours."""
    local = timezone.now().astimezone(zone)
    start = time(local.hour, local.minute)
    start = (datetime.combine(local.date(), start) + timedelta(hours=3)).time()
    end = (datetime.combine(local.date(), start) + timedelta(hours=2)).time()
    spec = {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}", "weekdays_only": False}
    return SendWindow(start=start, end=end), spec


def test_quiet_hours_move_a_send_at_enrolment_and_its_row_says_why():
    paris = ZoneInfo("Europe/Paris")
    window, spec = _window_excluding_now(paris)
    sms_journey("night", send_window=spec)

    checkout("co_1", timezone="Europe/Paris")

    (send,) = sends()
    intended = send.intended_at
    assert intended is not None
    assert send.status == "pending"
    assert send.due_at == next_allowed(intended, window, paris)
    was = f"{intended.astimezone(paris):%H:%M}"
    if intended.astimezone(paris).date() != send.due_at.astimezone(paris).date():
        was = local_label(intended, paris, against=send.due_at).removesuffix(" Europe/Paris")
    opening = local_label(send.due_at, paris, against=intended)
    assert send.reason == f"quiet hours: moved to {opening} (was due {was})"
    assert dispatch_due() == {}  # not due yet


def test_quiet_hours_skip_a_send_they_would_make_too_late():
    paris = ZoneInfo("Europe/Paris")
    _, spec = _window_excluding_now(paris)
    sms_journey("night", send_window=spec, max_lateness="PT1H")

    checkout("co_1", timezone="Europe/Paris")

    (send,) = sends()
    assert send.status == "skipped"
    assert send.reason.startswith("quiet hours: not before ")
    assert send.reason.endswith("Europe/Paris, past the max lateness (1 h)")


@pytest.mark.parametrize(
    ("zone_name", "due_utc", "moved_utc", "reason"),
    [
        # Paris springs forward on 29 Mar 2026: 09:00 is 07:00 UTC that day (08:00 the day
        # before)
        ("Europe/Paris", datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
         datetime(2026, 3, 29, 7, 0, tzinfo=UTC),
         "quiet hours: moved to 09:00 Europe/Paris (was due 01:30)"),
        # and falls back on 25 Oct: 02:30 CEST, then 09:00 CET (08:00 UTC)
        ("Europe/Paris", datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
         datetime(2026, 10, 25, 8, 0, tzinfo=UTC),
         "quiet hours: moved to 09:00 Europe/Paris (was due 02:30)"),
        # New York springs forward on 8 Mar 2026 (09:00 EDT = 13:00 UTC)
        ("America/New_York", datetime(2026, 3, 8, 6, 30, tzinfo=UTC),
         datetime(2026, 3, 8, 13, 0, tzinfo=UTC),
         "quiet hours: moved to 09:00 America/New_York (was due 01:30)"),
        # and falls back on 1 Nov: 01:30 EDT, then 09:00 EST (14:00 UTC)
        ("America/New_York", datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
         datetime(2026, 11, 1, 14, 0, tzinfo=UTC),
         "quiet hours: moved to 09:00 America/New_York (was due 01:30)"),
    ],
)  # fmt: skip
def test_quiet_hours_at_enrolment_across_dst_changes(
    settings, zone_name, due_utc, moved_utc, reason
):
    settings.NUDGE_SEND_WINDOW = "09:00-21:00"
    sms_journey("site", max_lateness="P400D")  # the site's window; old events stay due
    at = due_utc - timedelta(minutes=10)

    ingest(make_event("co_dst", "checkout_started", at=at, cart="c_dst", timezone=zone_name))

    (send,) = sends()
    assert (send.status, send.reason) == ("pending", reason)
    assert send.due_at == moved_utc
    assert send.intended_at == due_utc


def _zone_where_local_hour(predicate: Any) -> str:
    """A fixed-offset zone (Etc/GMT…) whose local hour now satisfies `predicate`."""
    now = timezone.now()
    for hours in range(-12, 15):
        name = "Etc/GMT" if hours == 0 else f"Etc/GMT{-hours:+d}"
        if predicate(now.astimezone(ZoneInfo(name)).hour):
            return name
    raise AssertionError("no such zone")


def test_dispatch_checks_quiet_hours_again_in_the_customers_current_zone(settings):
    """The send was due inside the window where the customer was; by dispatch the customer's
    time zone says night: it moves to the morning there."""
    settings.NUDGE_SEND_WINDOW = "09:00-21:00"
    day = _zone_where_local_hour(lambda hour: 10 <= hour < 19)
    night = _zone_where_local_hour(lambda hour: hour < 7 or hour >= 22)
    sms_journey("site")
    checkout("co_1", timezone=day)
    (send,) = sends()
    assert (send.status, send.intended_at) == ("pending", None)
    Customer.objects.filter(pk=send.customer_id).update(timezone=night)

    assert dispatch_due() == {send.pk: "pending"}

    send.refresh_from_db()
    zone = ZoneInfo(night)
    assert send.due_at.astimezone(zone).strftime("%H:%M") == "09:00"
    assert send.due_at > timezone.now()
    assert send.reason.startswith("quiet hours: moved to ")
    assert f"09:00 {night} (was due " in send.reason
    assert send.intended_at is not None


def test_an_unknown_time_zone_is_read_as_utc(settings):
    settings.NUDGE_SEND_WINDOW = "09:00-21:00"
    sms_journey("site")
    checkout("co_1")
    (send,) = sends()
    Customer.objects.filter(pk=send.customer_id).update(timezone="Mars/Olympus_Mons")
    hour = timezone.now().astimezone(UTC).hour

    outcome = dispatch_due()[send.pk]

    assert outcome == ("sent" if 9 <= hour < 21 else "pending")
    if outcome == "pending":
        send.refresh_from_db()
        assert "09:00 UTC" in send.reason


def test_a_journey_may_turn_quiet_hours_off_and_transactional_ones_ignore_them(settings):
    settings.NUDGE_SEND_WINDOW = "09:00-21:00"
    night = _zone_where_local_hour(lambda hour: hour < 7 or hour >= 22)
    sms_journey("always", send_window=None)
    paris_window = {"start": "09:00", "end": "21:00"}
    sms_journey("receipt", transactional=True, send_window=paris_window)
    sms_journey("site")

    checkout("co_1", timezone=night)

    by_slug = {s.journey.slug: s for s in sends()}
    assert by_slug["site"].reason.startswith("quiet hours: moved to ")
    assert by_slug["always"].reason == by_slug["receipt"].reason == ""
    assert sorted(dispatch_due().values()) == ["sent", "sent"]


def test_a_cap_deferral_that_lands_in_quiet_hours_waits_for_the_window():
    """1 SMS per 36 h frees the slot at the other end of the day, outside the journeys' own
    hours (from an hour ago to 6 hours from now, UTC): it waits for the next opening."""
    FrequencyCap.objects.create(channel="sms", max_sends=1, period=timedelta(hours=36))
    now = timezone.now().astimezone(UTC).replace(second=0, microsecond=0)
    start, end = (now - timedelta(hours=1)).time(), (now + timedelta(hours=6)).time()
    window = {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"}
    sms_journey("first", send_window=window, max_lateness="P3D")
    sms_journey("second", trigger="user_registered", exit_on=[], send_window=window,
                max_lateness="P3D")  # fmt: skip
    checkout("co_1", timezone="UTC")
    assert list(dispatch_due().values()) == ["sent"]
    (first,) = sends(status="sent")
    registered("reg_1", timezone="UTC")

    assert list(dispatch_due().values()) == ["pending"]

    (second,) = sends(journey__slug="second")
    freed = first.sent_at + timedelta(hours=36)
    expected = next_allowed(freed, SendWindow(start, end), ZoneInfo("UTC"))
    assert expected > freed
    assert second.due_at == expected
    assert second.reason == (
        f"deferred: capped, 1 SMS per 36 h (sent {utc_label(first.sent_at)}), then quiet "
        f"hours: moved to {local_label(expected, ZoneInfo('UTC'), against=freed)}"
    )


@pytest.mark.django_db(transaction=True)
def test_a_re_driven_send_counts_its_lateness_from_the_re_drive_not_from_pacing():
    """A send that pacing once deferred (intended_at kept), then failed: the operator's
    re-drive makes it due now, and its max lateness counts from then again."""
    from io import StringIO

    from django.core.management import call_command

    sms_journey("first", max_lateness="PT2H")
    checkout("co_1")
    (send,) = sends()
    five_hours_ago = timezone.now() - timedelta(hours=5)
    ScheduledSend.objects.filter(pk=send.pk).update(
        status="failed", reason="failed: provider down", due_at=five_hours_ago,
        intended_at=five_hours_ago - timedelta(hours=1), updated_at=timezone.now(),
    )  # fmt: skip

    call_command("sends_retry", "--failed", "--since", "1h", stdout=StringIO())

    send.refresh_from_db()
    assert (send.status, send.intended_at) == ("pending", None)
    assert dispatch_due() == {send.pk: "sent"}
