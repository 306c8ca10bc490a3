"""Bulk data for the benchmark, written with set-based SQL (a million rows in seconds)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from django.db import connection

# One statement per chunk: customers, one enrolment each, one pending send each (email unless
# told otherwise). Each customer has a number of its own (a valid US one, +1 415 NXX XXXX), so
# that a provider that knows a message only by its To (the fake Twilio) tells them apart.
# Their consent is granted (source "import"): under NUDGE_CONSENT_DEFAULT=deny an unknown one
# sends no marketing.
# The trigger occurred an hour ago, so any payment of these customers "now" exits them.
_SENDS_SQL = """
WITH c AS (
    INSERT INTO marketing_customer (external_id, email, phone, first_name, timezone,
                                    email_consent, email_consent_source, email_consent_at,
                                    sms_consent, sms_consent_source, sms_consent_at,
                                    created_at, updated_at)
    SELECT %(prefix)s || g, %(prefix)s || g || '@example.com', '+1415' || (2000000 + g %% 8000000),
           'Ana', 'UTC',
           'granted', 'import', now(), 'granted', 'import', now(), now(), now()
      FROM generate_series(%(first)s, %(last)s) g
    RETURNING id
), e AS (
    INSERT INTO journeys_enrollment (journey_id, customer_id, trigger_occurred_at,
                                     chain_started_at, created_at)
    SELECT %(journey)s, id, now() - interval '1 hour', now() - interval '1 hour', now()
      FROM c
    RETURNING id, customer_id
)
INSERT INTO journeys_scheduledsend (
    enrollment_id, journey_id, step_id, step_position, customer_id, channel,
    trigger_occurred_at, due_at, dedupe_key, status, reason, attempts, recipient, subject,
    body, provider_message_id, created_at, updated_at)
SELECT e.id, %(journey)s, %(step)s, 0, e.customer_id, %(channel)s, now() - interval '1 hour',
       %(due)s::timestamptz
         + (row_number() OVER (ORDER BY e.id) - 1) * %(spacing)s * interval '1 second',
       'bench:' || e.customer_id, 'pending', '', 0, '', '', '', '', now(), now()
  FROM e
"""


def sends_create(
    *,
    prefix: str,
    count: int,
    journey_id: int,
    step_id: int,
    due: datetime,
    spacing_s: float = 0.0,
    start: int = 1,
    chunk: int = 100_000,
    channel: str = "email",
) -> float:
    """`count` customers named <prefix><start>, <prefix><start + 1>, ..., each with one pending
    send; the k-th (from 0) is due at `due` + k * spacing_s. Returns the seconds it took."""
    started = time.monotonic()
    for first in range(start, start + count, chunk):
        last = min(start + count - 1, first + chunk - 1)
        with connection.cursor() as cursor:
            cursor.execute(
                _SENDS_SQL,
                {
                    "prefix": prefix,
                    "first": first,
                    "last": last,
                    "journey": journey_id,
                    "step": step_id,
                    "due": due + timedelta(seconds=(first - start) * spacing_s),
                    "spacing": spacing_s,
                    "channel": channel,
                },
            )
    return time.monotonic() - started


def vacuum_analyze() -> None:
    with connection.cursor() as cursor:
        for table in ("journeys_scheduledsend", "journeys_enrollment", "marketing_customer"):
            cursor.execute(f"VACUUM (ANALYZE) {table}")
