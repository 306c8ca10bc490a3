"""The chaos run's checker (chaos/checker.py) on planted runs: real ScheduledSend rows in the
test database and a planted provider log, as bench/fake_provider.py --messages-file writes it.
A clean run passes; a planted loss, duplicate, late or forbidden delivery fails it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from chaos.checker import Expectation, Report, check, records_read, rows_load
from chaos.run import JOURNEYS, journeys_create
from journeys.models import Enrollment, Journey, ScheduledSend
from marketing.models import Customer

pytestmark = pytest.mark.django_db

WELCOME, CHECKOUT = JOURNEYS[0]["slug"], JOURNEYS[1]["slug"]


@pytest.fixture
def journeys() -> dict[str, Journey]:
    journeys_create()
    return {j.slug: j for j in Journey.objects.filter(slug__in=[WELCOME, CHECKOUT])}


def make_send(
    journey: Journey,
    customer: Customer,
    *,
    due: datetime,
    status: str = "sent",
    reason: str = "",
    code: str | None = None,
    attempt_log: list[dict[str, Any]] | None = None,
) -> ScheduledSend:
    enrollment = Enrollment.objects.create(
        journey=journey,
        customer=customer,
        trigger_occurred_at=due - timedelta(seconds=20),
        chain_started_at=due - timedelta(seconds=20),
    )
    return ScheduledSend.objects.create(
        enrollment=enrollment,
        journey=journey,
        step=journey.steps.get(position=0),
        step_position=0,
        customer=customer,
        channel="sms",
        trigger_occurred_at=due - timedelta(seconds=20),
        due_at=due,
        dedupe_key=f"{customer.pk}-{journey.pk}-{ScheduledSend.objects.count()}",
        status=status,
        reason=reason,
        discount_code=code,
        attempt_log=attempt_log or [],
    )


def make_customer(external_id: str) -> Customer:
    return Customer.objects.create(external_id=external_id, phone="+14155550101")


class Log:
    """A planted provider log, one JSON line per message request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def request(self, send: ScheduledSend, at: datetime, fate: str = "delivered") -> None:
        body = f"Hi Ana, code {send.discount_code} gives 10% off." if send.discount_code else "Hi"
        status = 503 if fate == "error" else 200
        record = {"t": at.timestamp(), "send_id": str(send.pk), "status": status, "fate": fate}
        self.lines.append(json.dumps({**record, "body": body}))

    def verdict(self, customers: dict[str, Expectation], **counts: int) -> Report:
        self.path.write_text("\n".join(self.lines) + "\n")
        return check(
            records=records_read(self.path),
            rows=rows_load(journey_slugs=[WELCOME, CHECKOUT]),
            customers=customers,
            **counts,
        )


@pytest.fixture
def planted(tmp_path: Path, journeys: dict[str, Journey]) -> tuple[Log, dict[str, Any]]:
    """Two customers who must get both messages, each delivered once on time; one who paid
    early (cancelled); a send called again after the provider took it (a replay)."""
    now = timezone.now()
    log = Log(tmp_path / "provider.messages")
    ana, bob, cem = (make_customer(name) for name in ("ana", "bob", "cem"))
    sends: dict[str, tuple[ScheduledSend, ScheduledSend]] = {}
    for customer in (ana, bob):
        welcome = make_send(journeys[WELCOME], customer, due=now, code=f"CODE{customer.pk:06d}")
        checkout = make_send(journeys[CHECKOUT], customer, due=now)
        log.request(welcome, now + timedelta(seconds=1))
        log.request(checkout, now + timedelta(seconds=2))
        sends[str(customer.external_id)] = (welcome, checkout)
    log.request(sends["bob"][1], now + timedelta(seconds=1), fate="error")
    log.request(sends["bob"][1], now + timedelta(seconds=4), fate="replay")
    make_send(journeys[WELCOME], cem, due=now, status="cancelled", reason="cancelled by payment")
    customers = {
        "ana": Expectation(must={WELCOME, CHECKOUT}),
        "bob": Expectation(must={WELCOME, CHECKOUT}),
        "cem": Expectation(may={WELCOME}, paid_at=(now - timedelta(seconds=5)).timestamp()),
    }
    return log, {"now": now, "customers": customers, "sends": sends, "journeys": journeys}


def test_a_clean_run_passes_with_its_ambiguous_window_counted_apart(
    planted: tuple[Log, dict[str, Any]],
) -> None:
    log, run = planted
    report = log.verdict(run["customers"])
    assert report.ok, report.line()
    assert report.counts["ambiguous"] == 1  # bob's checkout, replayed: no violation
    assert report.ambiguous_replays == 1
    assert report.line().startswith("CHAOS lost=0 duplicated=0 ambiguous=1 paid_before_send=0")


def test_a_planted_loss_and_duplicate_fail_the_run(planted: tuple[Log, dict[str, Any]]) -> None:
    log, run = planted
    ana_welcome, ana_checkout = run["sends"]["ana"]
    # the loss: ana's checkout marked sent, but the provider never had it
    log.lines = [line for line in log.lines if json.loads(line)["send_id"] != str(ana_checkout.pk)]
    # the duplicate: a second row of ana's welcome, delivered as well
    twice = make_send(run["journeys"][WELCOME], ana_welcome.customer, due=run["now"])
    log.request(twice, run["now"] + timedelta(seconds=3))
    report = log.verdict(run["customers"])
    assert not report.ok
    # the row marked sent that never reached the provider, and the promise it did not keep
    assert report.counts["lost"] == 2
    assert report.counts["duplicated"] == 1
    assert report.line().startswith("CHAOS lost=2 duplicated=1 ")
    assert set(report.violations) == {"lost", "duplicated"}


def test_a_delivery_twice_of_one_send_is_a_duplicate(planted: tuple[Log, dict[str, Any]]) -> None:
    log, run = planted
    log.request(run["sends"]["ana"][0], run["now"] + timedelta(seconds=9))
    report = log.verdict(run["customers"])
    assert report.violations == {"duplicated": 1}


def test_deliveries_after_a_payment_or_opt_out_late_or_early_fail(
    planted: tuple[Log, dict[str, Any]],
) -> None:
    log, run = planted
    now, journeys = run["now"], run["journeys"]
    dan, eve = make_customer("dan"), make_customer("eve")
    paid = make_send(journeys[WELCOME], dan, due=now)
    log.request(paid, now + timedelta(seconds=2))  # dan paid 1 s in
    opted = make_send(journeys[CHECKOUT], eve, due=now)
    log.request(opted, now + timedelta(seconds=2))  # eve opted out 1 s in
    late = make_send(journeys[WELCOME], eve, due=now - timedelta(minutes=11))
    log.request(late, now)  # max lateness 10 min
    early = make_send(journeys[WELCOME], dan, due=now + timedelta(minutes=1))
    log.request(early, now)
    one_second_in = (now + timedelta(seconds=1)).timestamp()
    customers = {
        **run["customers"],
        "dan": Expectation(paid_at=one_second_in),
        "eve": Expectation(opted_out_at=one_second_in),
    }
    report = log.verdict(customers)
    assert report.counts["paid_before_send"] == 1
    assert report.counts["opted_out"] == 1
    assert report.counts["past_max_lateness"] == 1
    assert report.counts["early"] == 1
    assert report.counts["duplicated"] == 1  # dan's welcome went out twice (paid and early)


def test_rows_without_reason_infrastructure_failures_and_second_codes_fail(
    planted: tuple[Log, dict[str, Any]],
) -> None:
    log, run = planted
    now, journeys = run["now"], run["journeys"]
    fay = make_customer("fay")
    make_send(journeys[WELCOME], fay, due=now, status="pending")
    make_send(journeys[CHECKOUT], fay, due=now, status="skipped", reason="")
    gus = make_customer("gus")
    make_send(
        journeys[WELCOME],
        gus,
        due=now,
        status="failed",
        reason="failed: no outcome recorded after 5 provider calls",
    )
    make_send(
        journeys[CHECKOUT],
        gus,
        due=now,
        status="failed",
        reason="failed after 5 attempts: provider error: SMS provider answered 503",
        attempt_log=[{"at": "2026-01-01T00:00:00Z", "ms": 3, "outcome": "transient error: 503"}],
    )
    ana_welcome = run["sends"]["ana"][0]
    log.lines.append(
        json.dumps(
            {
                "t": now.timestamp() + 5,
                "send_id": str(ana_welcome.pk),
                "status": 503,
                "fate": "error",
                "body": "Hi Ana, code OTHERCODE1 gives 10% off.",
            }
        )
    )
    report = log.verdict(run["customers"], unapplied_events=3, not_ingested=1)
    assert report.counts["unsent_without_reason"] == 2
    assert report.counts["failed_without_provider_error"] == 1  # gus's first, not his second
    assert report.counts["second_codes"] == 2  # the send, and ana's promise of one code
    assert report.counts["unapplied_events"] == 3
    assert report.counts["not_ingested"] == 1
    assert not report.ok
