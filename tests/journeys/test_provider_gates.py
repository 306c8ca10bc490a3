"""The provider gates (journeys.services.providers) through the real dispatch path and the
generic HTTP backend on a loopback server: the circuit breaker, the rate limit shared by every
worker, and a 429's Retry-After holding every call to that provider."""

# ruff: noqa: F811 (the fixtures imported from test_sms_channel are this module's arguments)
from __future__ import annotations

import itertools
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from journeys import services
from journeys.models import ProviderState, ScheduledSend
from tests.journeys.conftest import sends
from tests.journeys.test_sms_channel import (  # noqa: F401 (fixtures)
    FakeProvider,
    due_sms,
    provider,
    sms_journey,
    sms_url,
)

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the gates' shared row is PostgreSQL's"
    ),
]

Status = ScheduledSend.Status


def setup_sms(provider: FakeProvider, sms_url, customers: int) -> None:
    sms_url(f"http://{provider.host}/sms")
    sms_journey()
    for n in range(customers):
        due_sms(f"u_{n}")


def dispatch_claimed() -> dict[int, str]:
    """One worker's task for everything due: one pipelined run (takes of many sends)."""
    claimed = services.scheduled_sends_claim_due(limit=10_000)
    return services.scheduled_sends_dispatch(send_ids=claimed)


def hand_out_again() -> dict[int, str]:
    """What the timer does once a waiting send's moment has come: hand it out again."""
    ScheduledSend.objects.filter(status=Status.SENDING).update(
        claimed_at=timezone.now() - timedelta(hours=1)
    )
    recovered = services.scheduled_sends_recover(lease=timedelta(minutes=2), limit=10_000)
    return services.scheduled_sends_dispatch(send_ids=recovered)


def state(name: str = "http") -> ProviderState:
    return ProviderState.objects.get(name=name)


def test_failures_in_a_row_open_the_circuit_its_sends_wait_for_no_attempt_and_a_probe_closes_it(
    provider, sms_url, settings
):
    settings.NUDGE_CIRCUIT_FAILURES = 3
    setup_sms(provider, sms_url, customers=4)
    for _ in range(4):
        provider.answer(503, {"message": "down for maintenance"})

    dispatch_claimed()

    opened = state()
    assert opened.failures == 4
    assert opened.open_until is not None
    assert opened.open_until > timezone.now() + timedelta(seconds=4)
    assert "down for maintenance" in opened.last_error
    assert {(s.status, s.attempts) for s in sends()} == {(Status.SENDING, 1)}

    # a new send while the circuit is open: it waits, no call, no attempt
    due_sms("u_late")
    dispatch_claimed()
    late = ScheduledSend.objects.get(customer__external_id="u_late")
    assert (late.status, late.attempts) == (Status.SENDING, 0)
    assert late.reason.startswith("waiting: http circuit open until ")
    assert "after 4 failures in a row" in late.reason
    assert late.claimed_at is not None
    next_try = late.claimed_at + timedelta(seconds=settings.NUDGE_SEND_LEASE_SECONDS)
    assert opened.open_until <= next_try <= opened.open_until + timedelta(seconds=1)
    assert len(provider.requests) == 4

    # the time is up and the provider is back: one probe goes, it closes the circuit
    ProviderState.objects.filter(name="http").update(open_until=timezone.now())
    hand_out_again()  # the probe, the others wait for it
    assert provider.accepted == 1
    assert state().open_until is None and state().failures == 0
    hand_out_again()

    done = sends()
    assert {s.status for s in done} == {Status.SENT}
    assert provider.accepted == 5 == len(provider.requests) - 4  # each one message
    assert sorted(s.attempts for s in done) == [1, 2, 2, 2, 2]


def test_a_failed_probe_opens_the_circuit_again_for_twice_as_long(provider, sms_url, settings):
    settings.NUDGE_CIRCUIT_FAILURES = 2
    settings.NUDGE_CIRCUIT_OPEN_SECONDS = 5
    setup_sms(provider, sms_url, customers=3)
    for _ in range(4):
        provider.answer(503, {"message": "still down"})
    dispatch_claimed()
    assert state().opens == 0

    ProviderState.objects.filter(name="http").update(open_until=timezone.now())
    before = timezone.now()
    hand_out_again()

    assert len(provider.requests) == 4  # three, then one probe only
    again = state()
    assert again.opens == 1
    assert again.open_until is not None
    assert before + timedelta(seconds=9) < again.open_until < before + timedelta(seconds=12)
    waiting = [s for s in sends() if s.attempts == 1]
    assert len(waiting) == 2
    assert all(s.reason.startswith("waiting: http circuit") for s in waiting)


def test_permanent_refusals_do_not_open_the_circuit(provider, sms_url, settings):
    settings.NUDGE_CIRCUIT_FAILURES = 2
    setup_sms(provider, sms_url, customers=3)
    for _ in range(3):
        provider.answer(400, {"message": "bad number"})
    dispatch_claimed()

    assert {s.status for s in sends()} == {Status.FAILED}
    assert ProviderState.objects.get(name="http").open_until is None


def test_the_rate_limit_spaces_the_calls_and_holds_for_every_worker(provider, sms_url, settings):
    settings.NUDGE_PROVIDER_RATES = {"http": 20}
    settings.NUDGE_PROVIDER_RATE_HORIZON_SECONDS = 1.0
    setup_sms(provider, sms_url, customers=40)
    arrivals: list[float] = []
    original = provider.accept

    def timed(path, body):
        arrivals.append(time.monotonic())
        return original(path, body)

    provider.accept = timed

    dispatch_claimed()

    # the slots of the next second: 21 calls (at 0, 50 ms, ..., 1 s), 50 ms apart
    assert provider.accepted == 21
    arrivals.sort()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert arrivals[-1] - arrivals[0] >= 0.9
    # 50 ms apart, less the server threads' scheduling noise; the first call opens the
    # connection, so it may arrive late, close to the second (21.6 ms once in CI)
    assert min(gaps[1:]) >= 0.025
    waiting = sorted(
        (s for s in sends() if s.status == Status.SENDING), key=lambda s: s.claimed_at or s.due_at
    )
    assert len(waiting) == 19
    assert all(s.attempts == 0 for s in waiting)
    assert all(s.reason.startswith("waiting: http rate limit 20/s (next try at ") for s in waiting)
    tries = [s.claimed_at for s in waiting]
    assert all(
        timedelta(milliseconds=40) <= b - a <= timedelta(milliseconds=60)
        for a, b in itertools.pairwise(tries)
    )

    # once their moments come, they go on at the rate
    while any(s.status == Status.SENDING for s in sends()):
        hand_out_again()
    assert provider.accepted == 40
    assert {s.status for s in sends()} == {Status.SENT}
    assert arrivals[-1] - arrivals[0] >= 39 / 20 - 0.1


@pytest.mark.django_db(transaction=True)
def test_two_workers_at_once_share_one_rate_limit(provider, sms_url, settings):
    settings.NUDGE_PROVIDER_RATES = {"http": 10}
    settings.NUDGE_PROVIDER_RATE_HORIZON_SECONDS = 1.0
    setup_sms(provider, sms_url, customers=30)
    claimed = services.scheduled_sends_claim_due(limit=100)
    halves = [claimed[::2], claimed[1::2]]
    ready = threading.Barrier(2)

    def worker(ids: list[int]) -> None:
        try:
            ready.wait()
            services.scheduled_sends_dispatch(send_ids=ids)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(half,)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # together, the slots of one second at 10/s: 11 calls, not 11 each
    assert provider.accepted == 11
    waiting = [s for s in sends() if s.status == Status.SENDING]
    assert len(waiting) == 19
    assert all(s.attempts == 0 for s in waiting)


def test_a_429_retry_after_holds_every_call_to_that_provider(provider, sms_url):
    setup_sms(provider, sms_url, customers=1)
    provider.answer(429, {"message": "slow down"}, {"Retry-After": "30"})
    dispatch_claimed()

    paused = state().next_at
    assert paused is not None
    assert paused > timezone.now() + timedelta(seconds=25)

    due_sms("u_other")
    dispatch_claimed()

    other = ScheduledSend.objects.get(customer__external_id="u_other")
    assert (other.status, other.attempts) == (Status.SENDING, 0)
    assert other.reason.startswith("waiting: http asked to wait (Retry-After)")
    assert len(provider.requests) == 1
