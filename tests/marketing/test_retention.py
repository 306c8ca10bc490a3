"""The skeleton a purged or erased event's payload keeps (marketing.services.retention): its
Python body and its PostgreSQL body give the same for the same payloads, and only applied
events not purged yet are touched."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from marketing.models import Event
from marketing.services.retention import event_payloads_purge, payload_skeleton

pytestmark = pytest.mark.django_db

PAYLOADS: list[dict[str, Any]] = [
    {
        "id": "e1",
        "type": "checkout_started",
        "occurred_at": "2026-11-28T12:00:00Z",
        "user": {"id": "u_1", "email": "ana@example.com", "phone": "+14155550101"},
        "cart": {"id": "c_1", "checkout_url": "https://shop.example/c_1", "items": [{"n": 1}]},
    },
    {
        "id": "e2",
        "type": "payment_finished",
        "occurred_at": "2026-11-28T12:00:00Z",
        "user": {"id": "u_1", "first_name": "Ana"},
        "payment": {"id": "p_1", "cart_id": "c_1", "amount": "12.00", "discount_code": "X"},
    },
    {
        "id": "e3",
        "type": "payment_finished",
        "occurred_at": "2026-11-28T12:00:00Z",
        "user": {"id": "u_1"},
        "payment": {"id": "p_2", "cart_id": None},
    },
    {"id": "e4", "type": "user_registered", "user": {"id": "u_1"}, "cart": "not an object"},
    {"id": "e5", "type": "custom", "occurred_at": None, "cart": {"items": []}},
]


def _events(payloads: list[dict[str, Any]], *, applied: bool = True) -> list[Event]:
    now = timezone.now()
    return [
        Event.objects.create(
            source=Event.Source.WEBHOOK,
            event_id=payload["id"],
            type=payload["type"],
            occurred_at=now,
            payload=payload,
            body_sha256="0" * 64,
            applied_at=now if applied else None,
            apply_error="",
        )
        for payload in payloads
    ]


def test_the_sql_and_the_python_skeletons_agree():
    assert connection.vendor == "postgresql"
    events = _events(PAYLOADS)

    assert event_payloads_purge(event_ids=[e.pk for e in events]) == len(PAYLOADS)

    for event, payload in zip(events, PAYLOADS, strict=True):
        event.refresh_from_db()
        assert event.payload == payload_skeleton(payload, purged="retention")
    assert PAYLOADS[1]["payment"]["amount"] == "12.00"  # the input itself is left alone
    assert payload_skeleton(PAYLOADS[1], purged="retention") == {
        "id": "e2",
        "type": "payment_finished",
        "occurred_at": "2026-11-28T12:00:00Z",
        "payment": {"id": "p_1", "cart_id": "c_1"},
        "purged": "retention",
    }


def test_an_unapplied_or_purged_event_is_left():
    (unapplied,) = _events(PAYLOADS[:1], applied=False)
    (applied,) = _events(PAYLOADS[1:2])
    ids = [unapplied.pk, applied.pk]

    assert event_payloads_purge(event_ids=ids) == 1
    assert event_payloads_purge(event_ids=ids) == 0  # purged once only

    unapplied.refresh_from_db()
    assert unapplied.payload == PAYLOADS[0]
