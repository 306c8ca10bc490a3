"""The verbs journeys applies stored events with: claim, lock, mark applied, record a failure."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.db.transaction import TransactionManagementError

from marketing import services
from marketing.models import Event
from tests.webhook_client import event

pytestmark = pytest.mark.django_db
LEASE = timedelta(minutes=2)


def stored(event_id: str, user_id: str) -> Event:
    return services.event_record(
        source=Event.Source.WEBHOOK, payload=event(event_id, user_id=user_id)
    ).event


def test_lock_for_apply_returns_the_unapplied_events_in_id_order_with_their_customers():
    first, second, third = stored("e_1", "u_b"), stored("e_2", "u_a"), stored("e_3", "u_b")
    services.events_mark_applied(event_ids=[second.pk])

    with transaction.atomic():
        locked = services.events_lock_for_apply(event_ids=[third.pk, second.pk, first.pk])

    assert [e.pk for e in locked] == [first.pk, third.pk]
    assert [e.customer.external_id for e in locked] == ["u_b", "u_b"]
    assert locked[0].customer is locked[1].customer  # one row, locked once


@pytest.mark.django_db(transaction=True)  # no test transaction around it
def test_lock_for_apply_refuses_to_run_outside_a_transaction():
    event = stored("e_1", "u_1")

    with pytest.raises(TransactionManagementError):
        services.events_lock_for_apply(event_ids=[event.pk])


def test_marked_events_leave_the_queue_and_lose_their_error():
    one, other = stored("e_1", "u_1"), stored("e_2", "u_1")
    services.event_apply_failed(event_id=one.pk, error="boom")

    services.events_mark_applied(event_ids=[one.pk])

    one.refresh_from_db()
    assert (one.applied_at is not None, one.apply_error, one.apply_attempts) == (True, "", 1)
    assert services.events_unapplied_ids() == [other.pk]
    assert services.events_claim_unapplied(limit=10, lease=LEASE) == [other.pk]


def test_a_failure_is_kept_short_and_counted_until_the_claim_gives_up(settings):
    settings.NUDGE_SEND_MAX_ATTEMPTS = 2
    bad = stored("e_1", "u_1")

    services.event_apply_failed(event_id=bad.pk, error="x" * 5000)
    services.event_apply_failed(event_id=bad.pk, error="again")

    bad.refresh_from_db()
    assert (bad.apply_error, bad.apply_attempts) == ("again", 2)
    assert services.events_claim_unapplied(limit=10, lease=LEASE) == []
    assert services.events_unapplied_ids() == [bad.pk]  # not applied, only no longer claimed
    services.event_apply_failed(event_id=bad.pk, error="y" * 5000)
    bad.refresh_from_db()
    assert len(bad.apply_error) == 2000
