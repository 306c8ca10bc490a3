"""Holdout groups, attribution of payments to sends (conversions), and the journeys' figures:
the rollup the triggers maintain against a direct count over the rows, and the stats API."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core import mail
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from journeys import services, stats
from journeys.models import Conversion, Enrollment, Journey, JourneyDayStat, ScheduledSend
from journeys.services import holdout
from journeys.services import stats as rollup
from journeys.services.attribution import conversions_record
from journeys.services.redrive import scheduled_sends_redrive
from journeys.specs import journey_spec_parse
from marketing import services as marketing_services
from marketing.models import Customer, Event
from marketing.validation import event_validate
from tests.journeys.conftest import (
    dispatch_due,
    ingest,
    make_event,
    make_journey,
    minutes_ago,
)
from tests.webhook_client import SECRET, post_signed

pytestmark = pytest.mark.django_db

Status = ScheduledSend.Status


def _today() -> date:
    return timezone.now().date()


def _tomorrow() -> date:
    return _today() + timedelta(days=1)


def pay(
    event_id: str, *, user: str, payment: str, code: str | None = None, amount: str = "120.00"
) -> Event:
    payload = make_event(
        event_id, "payment_finished", user=user, at=timezone.now(), payment=payment
    )
    payload["payment"].update(discount_code=code, amount=amount)
    result = ingest(payload)
    return result.event


# --- holdout --------------------------------------------------------------------------------


def test_the_holdout_position_is_sticky_per_journey_and_customer():
    first = [holdout.holdout_position(slug="winback", customer_id=i) for i in range(100)]
    again = [holdout.holdout_position(slug="winback", customer_id=i) for i in range(100)]
    other = [holdout.holdout_position(slug="welcome", customer_id=i) for i in range(100)]
    assert first == again
    assert first != other  # another journey draws its own group
    assert all(0 <= p < 100 for p in first)


def test_ten_percent_of_2000_enrolled_customers_are_held_out():
    journey = make_journey(slug="winback", holdout_percent=10, trigger="user_registered")
    items = []
    for index in range(2000):
        payload = make_event(f"r{index}", "user_registered", user=f"c{index}", at=minutes_ago(1))
        data, errors = event_validate(payload)
        assert data is not None, errors
        items.append((data, payload))
    for start in range(0, len(items), 500):
        marketing_services.events_ingest_batch(
            source=Event.Source.WEBHOOK, items=items[start : start + 500]
        )
    services.events_apply_pending()

    enrolments = list(Enrollment.objects.filter(journey=journey))
    assert len(enrolments) == 2000
    held = [e for e in enrolments if e.held_out]
    # binomial(2000, 0.1): mean 200, standard deviation 13.4; 4 of them either side
    assert 146 <= len(held) <= 254, len(held)
    # the decision is the hash's, customer by customer
    assert all(
        e.held_out == holdout.enrollment_held_out(journey, e.customer_id) for e in enrolments
    )
    sends = ScheduledSend.objects.filter(journey=journey)
    assert sends.filter(status=Status.SKIPPED).count() == len(held)
    assert set(sends.filter(status=Status.SKIPPED).values_list("reason", flat=True)) == {
        "held out (10% holdout group)"
    }


def test_held_out_sends_never_go_out_and_never_get_a_code():
    make_journey(
        slug="half",
        holdout_percent="100",
        steps=[
            {
                "delay": "PT10M",
                "channel": "email",
                "template": {"subject": "Hi", "body": "{{ discount.code }}"},
                "discount": {"percent_off": 10, "valid_for": "P7D"},
            }
        ],
    )
    ingest(make_event("c1", "checkout_started", user="u_1", cart="k1", at=minutes_ago(11)))

    (send,) = ScheduledSend.objects.all()
    assert send.enrollment.held_out
    assert (send.status, send.reason, send.discount_code) == (
        Status.SKIPPED,
        "held out (100% holdout group)",
        None,
    )
    assert dispatch_due() == {}
    assert mail.outbox == []
    send.refresh_from_db()
    assert send.status == Status.SKIPPED and send.sent_at is None


def test_no_holdout_by_default():
    journey = make_journey()
    assert journey.holdout_percent == 0
    ingest(make_event("c1", "checkout_started", user="u_1", cart="k1", at=minutes_ago(1)))
    assert not Enrollment.objects.get().held_out
    assert ScheduledSend.objects.get().status == Status.PENDING


def test_holdout_fields_round_trip_through_journeys_as_code():
    journey = make_journey(holdout_percent=2.5, conversion_window="P3D")
    assert journey.holdout_percent == Decimal("2.50")
    assert journey.conversion_window == timedelta(days=3)
    from journeys.selectors import journey_spec, known_event_types

    spec = journey_spec(journey)
    assert (spec["holdout_percent"], spec["conversion_window"]) == (2.5, "P3D")
    parsed, errors = journey_spec_parse(spec, known_types=known_event_types())
    assert errors == [] and parsed is not None
    assert parsed.holdout_percent == Decimal("2.5") and parsed.conversion_window == timedelta(
        days=3
    )
    assert journey_spec(make_journey(slug="ten", holdout_percent=10))["holdout_percent"] == 10


@pytest.mark.parametrize("value", [-1, 100.5, "ten", True, None, 1.234, "NaN", [10]])
def test_a_bad_holdout_percent_is_refused_by_name(value):
    from journeys.selectors import known_event_types

    spec = {
        "slug": "j",
        "name": "J",
        "trigger": "checkout_started",
        "holdout_percent": value,
        "steps": [{"delay": "PT1M", "channel": "sms", "template": {"body": "hi"}}],
    }
    parsed, errors = journey_spec_parse(spec, known_types=known_event_types())
    assert parsed is None
    assert any(e.startswith("holdout_percent:") for e in errors), errors


def test_a_zero_conversion_window_is_refused():
    from journeys.selectors import known_event_types

    spec = {
        "slug": "j",
        "name": "J",
        "trigger": "checkout_started",
        "conversion_window": "PT0S",
        "steps": [{"delay": "PT1M", "channel": "sms", "template": {"body": "hi"}}],
    }
    _, errors = journey_spec_parse(spec, known_types=known_event_types())
    assert any(e.startswith("conversion_window:") for e in errors), errors


# --- attribution ----------------------------------------------------------------------------


def _sent(journey_slug: str, user: str, event_id: str, **kwargs: Any) -> ScheduledSend:
    """A trigger of the journey `journey_slug` (one 10-minute step) 11 minutes ago, sent."""
    journey = Journey.objects.get(slug=journey_slug)
    ingest(make_event(event_id, journey.trigger, user=user, at=minutes_ago(11), **kwargs))
    dispatch_due()
    return ScheduledSend.objects.get(journey=journey, customer__external_id=user)


def test_a_payment_within_the_window_after_a_send_is_its_conversion():
    make_journey(exit_on=[])
    send = _sent("j", "u_1", "c1", cart="k1")
    assert send.status == Status.SENT

    event = pay("p1", user="u_1", payment="p_1", amount="67.92")

    conversion = Conversion.objects.get()
    assert (conversion.send_id, conversion.journey_id, conversion.kind) == (
        send.pk,
        send.journey_id,
        Conversion.Kind.WINDOW,
    )
    assert not conversion.held_out and conversion.first_for_enrollment
    assert (conversion.amount, conversion.currency) == (Decimal("67.92"), "EUR")
    assert conversion.converted_at == event.occurred_at
    assert conversion.payment.external_id == "p_1"


def test_a_payment_after_the_window_is_no_conversion():
    make_journey(exit_on=[], conversion_window="P5D")
    send = _sent("j", "u_1", "c1", cart="k1")
    ScheduledSend.objects.filter(pk=send.pk).update(sent_at=timezone.now() - timedelta(days=6))
    pay("p1", user="u_1", payment="p_1")
    assert not Conversion.objects.exists()


def test_the_last_touch_across_journeys_wins():
    make_journey(slug="first", exit_on=[])
    make_journey(slug="second", trigger="user_registered", exit_on=[])
    earlier = _sent("first", "u_1", "c1", cart="k1")
    later = _sent("second", "u_1", "r1")
    assert earlier.sent_at < later.sent_at

    pay("p1", user="u_1", payment="p_1")

    assert Conversion.objects.get().send_id == later.pk


def test_a_redeemed_code_beats_the_last_touch():
    make_journey(
        slug="coded",
        exit_on=[],
        steps=[
            {
                "delay": "PT10M",
                "channel": "email",
                "template": {"subject": "Hi", "body": "{{ discount.code }}"},
                "discount": {"percent_off": 10, "valid_for": "P7D"},
            }
        ],
    )
    make_journey(slug="later", trigger="user_registered", exit_on=[])
    coded = _sent("coded", "u_1", "c1", cart="k1")
    _sent("later", "u_1", "r1")
    assert coded.discount_code

    pay("p1", user="u_1", payment="p_1", code=coded.discount_code)

    conversion = Conversion.objects.get()
    assert (conversion.send_id, conversion.kind) == (coded.pk, Conversion.Kind.CODE)


def test_a_code_counts_however_long_ago_it_was_sent():
    make_journey(
        slug="coded",
        exit_on=[],
        conversion_window="P1D",
        steps=[
            {
                "delay": "PT10M",
                "channel": "email",
                "template": {"subject": "Hi", "body": "{{ discount.code }}"},
                "discount": {"percent_off": 10, "valid_for": "P30D"},
            }
        ],
    )
    coded = _sent("coded", "u_1", "c1", cart="k1")
    ScheduledSend.objects.filter(pk=coded.pk).update(sent_at=timezone.now() - timedelta(days=20))
    pay("p1", user="u_1", payment="p_1", code=coded.discount_code)
    assert Conversion.objects.get().kind == Conversion.Kind.CODE


def test_a_payment_after_a_held_out_sends_due_time_is_a_holdout_conversion():
    make_journey(holdout_percent=100, exit_on=[])
    ingest(make_event("c1", "checkout_started", user="u_1", cart="k1", at=minutes_ago(11)))
    held = ScheduledSend.objects.get()
    assert held.due_at < timezone.now()

    pay("p1", user="u_1", payment="p_1")

    conversion = Conversion.objects.get()
    assert conversion.held_out and conversion.send_id == held.pk
    assert conversion.kind == Conversion.Kind.WINDOW


def test_a_payment_before_a_held_out_sends_due_time_is_no_conversion():
    make_journey(holdout_percent=100, exit_on=[])
    ingest(make_event("c1", "checkout_started", user="u_1", cart="k1", at=minutes_ago(2)))
    assert ScheduledSend.objects.get().due_at > timezone.now()
    pay("p1", user="u_1", payment="p_1")
    assert not Conversion.objects.exists()


def test_a_payment_is_credited_once_and_an_enrolment_converts_once():
    make_journey(exit_on=[])
    _sent("j", "u_1", "c1", cart="k1")
    first = pay("p1", user="u_1", payment="p_1")
    assert conversions_record(events=[first]) == []  # applied again: nothing new
    pay("p2", user="u_1", payment="p_2")

    conversions = list(Conversion.objects.order_by("pk"))
    assert [c.payment.external_id for c in conversions] == ["p_1", "p_2"]
    assert [c.first_for_enrollment for c in conversions] == [True, False]


def test_attribution_reads_a_chunk_at_once(django_assert_max_num_queries):
    make_journey(exit_on=[])
    events = []
    for index in range(20):
        _sent("j", f"u_{index}", f"c{index}", cart=f"k{index}")
    for index in range(20):
        payload = make_event(
            f"p{index}", "payment_finished", user=f"u_{index}", at=timezone.now(),
            payment=f"p_{index}",
        )  # fmt: skip
        data, _ = event_validate(payload)
        assert data is not None
        events.append(
            marketing_services.event_ingest(
                source=Event.Source.WEBHOOK, data=data, payload=payload
            ).event
        )
    # payments, journeys' version, candidate sends, converted enrolments, the INSERT
    with django_assert_max_num_queries(6):
        recorded = conversions_record(events=events)
    assert len(recorded) == 20 == Conversion.objects.count()


# --- the figures: rollup and deltas against a direct count ----------------------------------


def _assert_rollup_matches_rows(journey: Journey, start: date, end: date) -> None:
    counted = stats.journey_figures_counted(journey, start, end).as_dict()
    assert stats.journey_figures(journey, start, end).as_dict() == counted
    rollup.journey_stats_fold()
    assert stats.journey_figures(journey, start, end).as_dict() == counted


def test_the_rollup_equals_a_count_over_the_rows_after_every_kind_of_change():
    journey = make_journey(
        slug="mixed",
        exit_on=["payment_finished"],
        holdout_percent=30,
        steps=[
            {"delay": "PT10M", "channel": "email", "template": {"subject": "a", "body": "b"}},
            {"delay": "PT20M", "channel": "email", "template": {"subject": "a", "body": "b"}},
        ],
    )
    for index in range(40):
        at = minutes_ago(15 if index % 2 else 300)  # half of them stale at enrolment
        ingest(make_event(f"c{index}", "checkout_started", user=f"u_{index}", cart=f"k{index}",
                          at=at))  # fmt: skip
    yesterday, today, tomorrow = _today() - timedelta(days=1), _today(), _tomorrow()
    _assert_rollup_matches_rows(journey, yesterday, tomorrow)
    dispatch_due()  # the first step of the fresh ones goes out
    _assert_rollup_matches_rows(journey, today, tomorrow)
    for index in range(0, 40, 3):  # payments: cancellations and conversions
        pay(f"p{index}", user=f"u_{index}", payment=f"p_{index}", amount=f"{index}.50")
    _assert_rollup_matches_rows(journey, today, tomorrow)

    pending = list(ScheduledSend.objects.filter(journey=journey, status=Status.PENDING)[:4])
    assert len(pending) == 4
    for send, reason in zip(
        pending,
        ["capped: 1 SMS per 24 h (sent 3 Dec)", "quiet hours (21:00-09:00): later", " odd ", ""],
        strict=True,
    ):
        ScheduledSend.objects.filter(pk=send.pk).update(
            status=Status.FAILED, reason=reason, updated_at=timezone.now()
        )
    _assert_rollup_matches_rows(journey, today, tomorrow)
    # a failed send re-driven leaves the failed figures; one moved to yesterday moves its day
    scheduled_sends_redrive(send_ids=[pending[0].pk], by="test")
    ScheduledSend.objects.filter(pk=pending[1].pk).update(
        updated_at=timezone.now() - timedelta(days=1)
    )
    ScheduledSend.objects.filter(journey=journey, status=Status.SENT).update(
        discount_redeemed_at=timezone.now()
    )
    for start, end in [(yesterday, today), (today, tomorrow), (yesterday, tomorrow)]:
        _assert_rollup_matches_rows(journey, start, end)

    figures = stats.journey_figures(journey, yesterday, tomorrow)
    assert figures.total(rollup.ENROLLED) == 40
    assert figures.by_label(Status.FAILED) == {"quiet hours": 1, "odd": 1, "": 1}
    assert figures.total(Status.SENT) > 0 and figures.total(rollup.CONVERSIONS) > 0
    assert "held out" in figures.by_label(Status.SKIPPED)
    assert "stale" in figures.by_label(Status.SKIPPED)
    assert figures.total(rollup.CODES_REDEEMED) == figures.total(Status.SENT)
    assert JourneyDayStat.objects.filter(journey=journey).exists()


def test_the_reason_label_is_the_same_in_python_and_in_sql():
    journey = make_journey(slug="labels", exit_on=[], holdout_percent=0)
    reasons = [
        "capped: 1 SMS per 24 h (sent 3 Dec 10:02 UTC)",
        "held out (10% holdout group)",
        "quiet hours (09:00-21:00): moved",
        "no discount code: pool 'winter' is empty",
        "  spaced label  : x",
        "plain",
        "",
        "x" * 300,
        "(leading paren) text",
        "a (b: c)",
        "cancelled by payment p_9",
        "cancelled by payment p_10",
        "superseded by checkout c_3",
        "cancelled by alice in admin",
        "cancelled by user_registered evt_1",
    ]
    for index, reason in enumerate(reasons):
        ingest(make_event(f"c{index}", "checkout_started", user=f"u_{index}", cart=f"k{index}",
                          at=minutes_ago(1)))  # fmt: skip
        ScheduledSend.objects.filter(customer__external_id=f"u_{index}").update(
            status=Status.SKIPPED, reason=reason, updated_at=timezone.now()
        )
    rolled = stats.journey_figures(journey, _today(), _tomorrow()).by_label(Status.SKIPPED)
    assert rolled == dict(Counter(rollup.reason_label(r) for r in reasons))
    assert rolled == stats.journey_figures_counted(journey, _today(), _tomorrow()).by_label(
        Status.SKIPPED
    )
    assert rollup.reason_label(reasons[0]) == "capped"
    assert rollup.reason_label(reasons[1]) == "held out"
    assert rollup.reason_label(reasons[2]) == "quiet hours"
    # an exit's reason names the kind of event, not the event (one label for all payments)
    assert rolled["cancelled by payment"] == 2
    assert rolled["superseded by checkout"] == 1
    assert rolled["cancelled by alice in admin"] == 1
    assert rolled["cancelled by user_registered"] == 1


def test_the_fold_moves_the_deltas_once():
    journey = make_journey(exit_on=[])
    ingest(make_event("c1", "checkout_started", user="u_1", cart="k1", at=minutes_ago(11)))
    dispatch_due()
    assert rollup.journey_stats_fold() > 0
    assert rollup.journey_stats_fold() == 0
    figures = stats.journey_figures(journey, _today(), _tomorrow())
    assert (figures.total(rollup.ENROLLED), figures.total(Status.SENT)) == (1, 1)


def test_the_rollup_schedule_exists_once_and_follows_the_setting(settings):
    from django_q.models import Schedule

    settings.NUDGE_STATS_ROLLUP_MINUTES = 1
    rollup.journey_stats_schedule_ensure()
    schedule = rollup.journey_stats_schedule_ensure()
    assert schedule is not None
    assert Schedule.objects.filter(name=rollup.SCHEDULE_NAME).count() == 1
    assert (schedule.func, schedule.minutes) == (rollup.FOLD_TASK, 1)
    settings.NUDGE_STATS_ROLLUP_MINUTES = 0
    assert rollup.journey_stats_schedule_ensure() is None
    assert not Schedule.objects.filter(name=rollup.SCHEDULE_NAME).exists()


# --- the comparison's statistics ------------------------------------------------------------


def test_the_lift_interval_is_katz_log_risk_ratio():
    # 30/100 vs 10/100: risk ratio 3, se of its log sqrt(1/30 - 1/100 + 1/10 - 1/100) = 0.33665,
    # 3 * exp(±1.96 * 0.33665) - 1
    interval = stats.lift_interval(30, 100, 10, 100)
    assert interval is not None
    low, high = interval
    assert (round(low, 4), round(high, 4)) == (0.5508, 4.8033)
    assert stats.lift_interval(0, 100, 10, 100) is None
    assert stats.lift_interval(5, 100, 0, 0) is None


def test_the_difference_interval_is_newcombes_hybrid_score():
    # Newcombe (1998), Statistics in Medicine 17:873, table II, example (a): 56/70 vs 48/80
    interval = stats.difference_interval(56, 70, 48, 80)
    assert interval is not None
    low, high = interval
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    assert stats.difference_interval(1, 10, 0, 0) is None


# --- the API --------------------------------------------------------------------------------


def _client(*codenames: str) -> APIClient:
    user = User.objects.create_user(f"user{User.objects.count()}", password="x" * 12)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="journeys", codename__in=codenames)
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_the_stats_api_end_to_end_from_signed_events(settings):
    settings.NUDGE_API_TOKEN_RATE = None
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET]
    make_journey(slug="reminder", holdout_percent=50, exit_on=["payment_finished"])
    web = Client()
    users = [f"u_{index}" for index in range(30)]
    for index, user in enumerate(users):
        payload = make_event(f"c{index}", "checkout_started", user=user, cart=f"k{index}",
                             at=minutes_ago(11))  # fmt: skip
        assert post_signed(web, "/api/events/", payload).status_code == 202
    services.events_apply_pending()
    dispatch_due()
    held = {
        e.customer.external_id
        for e in Enrollment.objects.filter(held_out=True).select_related("customer")
    }
    assert 0 < len(held) < 30
    for index, user in enumerate(users[:10]):  # a third of each group pays, after its touch
        payload = make_event(f"p{index}", "payment_finished", user=user, at=timezone.now(),
                             payment=f"p_{index}", cart=f"k{index}")  # fmt: skip
        assert post_signed(web, "/api/events/", payload).status_code == 202
    services.events_apply_pending()
    rollup.journey_stats_fold()

    api = _client("view_journey")
    response = api.get(
        "/api/journeys/reminder/stats/", {"from": _today().isoformat(), "to": _tomorrow()}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    paid_held = len(held & set(users[:10]))
    assert body["journey"] == "reminder" and body["time_zone"] == "UTC"
    assert (body["from"], body["to"]) == (_today().isoformat(), _tomorrow().isoformat())
    assert (body["enrolled"], body["held_out"]) == (30, len(held))
    assert body["sent"] == 30 - len(held)
    assert body["skipped"] == {"total": len(held), "by_reason": {"held out": len(held)}}
    assert body["conversions"]["sent_group"] == {
        "total": 10 - paid_held,
        "by_kind": {"window": 10 - paid_held} if 10 - paid_held else {},
    }
    assert body["conversions"]["holdout_group"]["total"] == paid_held
    assert body["groups"]["sent"] == {
        "enrolled": 30 - len(held),
        "converted": 10 - paid_held,
        "conversion_rate": round((10 - paid_held) / (30 - len(held)), 6),
    }
    assert body["groups"]["holdout"]["converted"] == paid_held
    assert body["revenue"]["sent_group"] == (
        {"EUR": f"{120 * (10 - paid_held)}.00"} if 10 - paid_held else {}
    )
    assert body["holdout_percent"] == "50" and body["conversion_window"] == "P5D"
    rate_sent = body["groups"]["sent"]["conversion_rate"]
    rate_held = body["groups"]["holdout"]["conversion_rate"]
    if rate_held:
        assert body["lift"]["relative"] == pytest.approx(
            (rate_sent - rate_held) / rate_held, abs=1e-4
        )
    assert body["difference"]["absolute"] == pytest.approx(rate_sent - rate_held, abs=1e-5)
    # what a direct count over the rows says
    journey = Journey.objects.get(slug="reminder")
    direct = stats.figures_report(
        journey,
        _today(),
        _tomorrow(),
        stats.journey_figures_counted(journey, _today(), _tomorrow()),
    )
    assert json.loads(json.dumps(direct, default=str))["groups"] == body["groups"]


def test_the_stats_api_needs_a_token_and_the_permission():
    make_journey(slug="reminder")
    assert APIClient().get("/api/journeys/reminder/stats/").status_code == 401
    assert _client().get("/api/journeys/reminder/stats/").status_code == 403
    response = _client("view_journey").get("/api/journeys/reminder/stats/")
    assert response.status_code == 200
    body = response.json()
    assert (body["from"], body["to"]) == (
        (_tomorrow() - timedelta(days=30)).isoformat(),
        _tomorrow().isoformat(),
    )
    assert body["groups"]["holdout"] == {"enrolled": 0, "converted": 0, "conversion_rate": None}
    assert body["lift"]["relative"] is None and body["lift"]["ci95"] is None


def test_an_unknown_journey_is_a_json_404():
    response = _client("view_journey").get("/api/journeys/nope/stats/")
    assert response.status_code == 404
    assert response.json() == {"detail": "No Journey matches the given query."}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": "2026-13-01"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-12-01T00:00:00Z"}, "to"),
        ({"from": "2026-12-03", "to": "2026-12-03"}, "to"),
        ({"from": "2026-12-03", "to": "2026-12-01"}, "to"),
        ({"from": "2000-01-01", "to": "2026-01-01"}, "to"),
        ({"from": "0001-01-01", "to": "9999-12-31"}, "to"),
    ],
)
def test_bad_dates_are_a_json_400_naming_the_parameter(query, field):
    make_journey(slug="reminder")
    response = _client("view_journey").get("/api/journeys/reminder/stats/", query)
    assert response.status_code == 400
    assert field in response.json()


def test_the_edges_of_the_calendar_are_fine():
    make_journey(slug="reminder")
    api = _client("view_journey")
    assert api.get("/api/journeys/reminder/stats/", {"from": "9999-12-30"}).status_code == 200
    assert api.get("/api/journeys/reminder/stats/", {"to": "0001-01-02"}).status_code == 200


def test_erased_customers_still_count():
    make_journey(exit_on=[])
    send = _sent("j", "u_1", "c1", cart="k1")
    from journeys.services import erasure

    erasure.customers_erase(customer_ids=[Customer.objects.get(external_id="u_1").pk])
    journey = send.journey
    _assert_rollup_matches_rows(journey, _today(), _tomorrow())
    assert stats.journey_figures(journey, _today(), _tomorrow()).total(Status.SENT) == 1


# --- the admin ------------------------------------------------------------------------------


@pytest.fixture
def admin_client_logged_in(client):
    User.objects.create_superuser("root", password="x" * 12)
    client.login(username="root", password="x" * 12)
    return client


def test_the_admin_sets_the_holdout_and_the_conversion_window(admin_client_logged_in):
    from tests.journeys.test_admin import journey_form

    response = admin_client_logged_in.post(
        "/admin/journeys/journey/add/",
        journey_form(holdout_percent="12.5", conversion_window="3 00:00:00"),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    journey = Journey.objects.get(slug="winback")
    assert journey.holdout_percent == Decimal("12.5")
    assert journey.conversion_window == timedelta(days=3)
    page = admin_client_logged_in.get(f"/admin/journeys/journey/{journey.pk}/change/")
    assert "holdout" in page.content.decode().lower()


def test_the_admin_leaves_no_holdout_and_five_days_when_left_empty(admin_client_logged_in):
    from tests.journeys.test_admin import journey_form

    response = admin_client_logged_in.post(
        "/admin/journeys/journey/add/", journey_form(holdout_percent="", conversion_window="")
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    journey = Journey.objects.get(slug="winback")
    assert (journey.holdout_percent, journey.conversion_window) == (0, timedelta(days=5))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("holdout_percent", "100.5"),
        ("holdout_percent", "-1"),
        ("holdout_percent", "1.234"),
        ("conversion_window", "00:00:00"),
    ],
)
def test_the_admin_refuses_a_bad_holdout_or_window(admin_client_logged_in, field, value):
    from tests.journeys.test_admin import journey_form

    response = admin_client_logged_in.post(
        "/admin/journeys/journey/add/", journey_form(**{field: value})
    )
    assert response.status_code == 200
    assert not Journey.objects.exists()
    assert "errorlist" in response.content.decode()


def test_the_conversions_are_listed_read_only_in_the_admin(admin_client_logged_in):
    make_journey(exit_on=[])
    _sent("j", "u_1", "c1", cart="k1")
    pay("p1", user="u_1", payment="p_1")
    conversion = Conversion.objects.get()
    listing = admin_client_logged_in.get("/admin/journeys/conversion/")
    assert listing.status_code == 200 and "p_1" in listing.content.decode()
    detail = admin_client_logged_in.get(f"/admin/journeys/conversion/{conversion.pk}/change/")
    assert detail.status_code == 200
    assert admin_client_logged_in.get("/admin/journeys/conversion/add/").status_code == 403


# --- a held-out send stands for the pending send it replaces --------------------------------


def test_dedupe_first_ignores_a_second_trigger_of_a_held_out_customer_as_of_a_sent_one():
    make_journey(slug="first", holdout_percent=100, dedupe="first", exit_on=["payment_finished"])
    ingest(make_event("c1", "checkout_started", user="u_1", cart="k1", at=minutes_ago(2)))
    ingest(make_event("c2", "checkout_started", user="u_1", cart="k2", at=minutes_ago(1)))
    assert Enrollment.objects.count() == 1  # as for a customer whose send is pending

    pay("p1", user="u_1", payment="p_1")  # the exit: the held-out send is out of the running
    ingest(make_event("c3", "checkout_started", user="u_1", cart="k3", at=timezone.now()))
    assert Enrollment.objects.count() == 2
    assert set(ScheduledSend.objects.values_list("status", "reason")) == {
        (Status.SKIPPED, "held out (100% holdout group)")
    }


def test_dedupe_first_in_one_chunk_for_held_out_customers():
    make_journey(slug="first", holdout_percent=100, dedupe="first", exit_on=[])
    items = []
    for index in range(3):
        payload = make_event(f"c{index}", "checkout_started", user="u_1", cart=f"k{index}",
                             at=minutes_ago(3 - index))  # fmt: skip
        data, _ = event_validate(payload)
        assert data is not None
        items.append((data, payload))
    marketing_services.events_ingest_batch(source=Event.Source.WEBHOOK, items=items)
    services.events_apply_pending()
    assert Enrollment.objects.count() == 1


def test_dedupe_latest_supersedes_a_held_out_send_without_touching_its_row():
    make_journey(slug="latest", holdout_percent=100, dedupe="latest", exit_on=[])
    ingest(make_event("c1", "checkout_started", user="u_1", cart="k1", at=minutes_ago(2)))
    ingest(make_event("c2", "checkout_started", user="u_1", cart="k2", at=minutes_ago(1)))
    assert Enrollment.objects.count() == 2
    assert set(ScheduledSend.objects.values_list("status", flat=True)) == {Status.SKIPPED}


def test_a_held_out_send_past_its_due_time_no_longer_blocks():
    make_journey(slug="first", holdout_percent=100, dedupe="first", exit_on=[])
    ingest(make_event("c1", "checkout_started", user="u_1", cart="k1", at=minutes_ago(11)))
    ingest(make_event("c2", "checkout_started", user="u_1", cart="k2", at=minutes_ago(1)))
    assert Enrollment.objects.count() == 2
