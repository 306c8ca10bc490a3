"""Provider gates, shared by every dispatching worker on every machine through one row per
provider (journeys.models.ProviderState, PostgreSQL):

- **Rate limit.** NUDGE_PROVIDER_RATES gives a provider at most so many calls per second.
  Each call takes the next free slot, 1/rate seconds after the one before (GCRA: the row
  keeps the next free slot). A take is granted the slots of the next
  NUDGE_PROVIDER_RATE_HORIZON_SECONDS, and each granted call waits for its slot's moment
  before it starts; the others wait, each for a slot later on. A provider's 429 moves the
  next free slot past its Retry-After (1 s without one), for every worker, rate or not.
- **Circuit breaker.** NUDGE_CIRCUIT_FAILURES transient failures in a row (no success in
  between, on any worker) open the circuit: the provider is left alone for
  NUDGE_CIRCUIT_OPEN_SECONDS, doubled at each failed probe up to
  NUDGE_CIRCUIT_MAX_OPEN_SECONDS. Then one call goes through as a probe: its success closes
  the circuit, its failure opens it again.

A send that a gate holds back costs no attempt: it stays in flight, with its reason
(`waiting: …`), until the moment given, when the timer hands it out again (services.claiming);
its max lateness still applies. A provider with no rate and a closed circuit costs one
primary-key read per take. The statements read the clock itself (clock_timestamp()), not
their transaction's start, wherever they run.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from journeys.models import ProviderState
from marketing.services.canonical import iso_utc

logger = logging.getLogger(__name__)

_TABLE = ProviderState._meta.db_table

# the providers this process last saw failing or open (it writes their successes down)
_troubled: set[str] = set()


@dataclass
class Admission:
    """What a gate lets through of `count` calls: the moment (database clock) at which each
    granted call may start, in order; for the others, the moment each may be tried again,
    and why they wait."""

    starts: list[datetime] = field(default_factory=list)
    waits: list[datetime] = field(default_factory=list)
    reason: str = ""


def calls_admit(*, provider: str, count: int) -> Admission:
    """Ask the provider's gates for `count` calls (autocommit: no lock outlives it)."""
    rate = float(settings.NUDGE_PROVIDER_RATES.get(provider) or 0)
    if count <= 0:
        return Admission()
    if connection.vendor != "postgresql":
        return Admission(starts=[timezone.now()] * count)
    now, next_at, open_until, failures, opens = _row_read(provider)
    if open_until is not None:
        _troubled.add(provider)
        return _circuit_admit(provider, count, now, open_until, failures, opens)
    if rate > 0:
        return _rate_admit(provider, count, rate)
    if next_at is None or next_at <= now:
        return Admission(starts=[now] * count)
    # no rate, but a provider's Retry-After holds every call until next_at
    reason = f"waiting: {provider} asked to wait (Retry-After)"
    return Admission(waits=_spread(next_at, count), reason=reason)


def outcomes_record(
    *,
    provider: str,
    ok: int,
    failed: int,
    started_first: datetime | None = None,
    retry_after: float | None = None,
    error: str = "",
) -> None:
    """Count the outcomes of calls that returned together: any success closes the circuit;
    failures only (transient ones: a permanent refusal says nothing of the provider's health)
    count towards opening it. `started_first` is when the earliest failed call started:
    calls started before the circuit opened do not count as failed probes. `retry_after`
    (seconds, from a 429) holds every worker's next call to this provider until then."""
    if connection.vendor != "postgresql":
        return
    if ok and provider not in _troubled and retry_after is None:
        return  # the common case: healthy, nothing to write
    with connection.cursor() as cursor:
        if retry_after:
            cursor.execute(_PAUSE_SQL, [retry_after, provider])
        if ok:
            cursor.execute(_CLOSE_SQL, [provider])
            if cursor.rowcount:
                logger.warning("provider %s: circuit closed, calls resume", provider)
            _troubled.discard(provider)
            return
        if not failed:
            return
        _troubled.add(provider)
        cursor.execute(
            _FAIL_SQL,
            {
                "name": provider,
                "failed": failed,
                "threshold": settings.NUDGE_CIRCUIT_FAILURES,
                "base": settings.NUDGE_CIRCUIT_OPEN_SECONDS,
                "max": settings.NUDGE_CIRCUIT_MAX_OPEN_SECONDS,
                "started": started_first or timezone.now(),
                "error": error[:500],
            },
        )
        row = cursor.fetchone()
    if row is not None and row[0]:
        logger.warning(
            "provider %s: circuit open until %s after %s failures in a row (last: %s)",
            provider,
            iso_utc(row[1]),
            row[2],
            error,
        )


def _row_read(provider: str) -> tuple[datetime, datetime | None, datetime | None, int, int]:
    """(the database's now, next_at, open_until, failures, opens), the row made if new."""
    with connection.cursor() as cursor:
        cursor.execute(_READ_SQL, [provider])
        row = cursor.fetchone()
        if row is None:
            cursor.execute(_INSERT_SQL, [provider])
            cursor.execute(_READ_SQL, [provider])
            row = cursor.fetchone()
    return row


def _circuit_admit(
    provider: str, count: int, now: datetime, open_until: datetime, failures: int, opens: int
) -> Admission:
    if open_until <= now:  # half-open: one taker sends a probe, and moves open_until on
        with connection.cursor() as cursor:
            cursor.execute(_PROBE_SQL, [_open_seconds(opens), provider])
            row = cursor.fetchone()
        if row is not None:
            probe_until = row[0]
            reason = f"waiting: {provider} circuit half-open, a probe is under way"
            return Admission(starts=[now], waits=_spread(probe_until, count - 1), reason=reason)
        open_until = _row_read(provider)[2] or now
    reason = (
        f"waiting: {provider} circuit open until {iso_utc(open_until)} "
        f"after {failures} failures in a row"
    )
    return Admission(waits=_spread(open_until, count), reason=reason)


def _spread(moment: datetime, count: int) -> list[datetime]:
    """`count` moments over the second after `moment`: the sends a closed circuit lets go
    do not all come back in the same tick (jitter, not a secret)."""
    return [moment + timedelta(seconds=random.uniform(0, 1)) for _ in range(count)]


def _rate_admit(provider: str, count: int, rate: float) -> Admission:
    with connection.cursor() as cursor:
        cursor.execute(
            _RATE_SQL,
            {
                "name": provider,
                "n": count,
                "rate": rate,
                "horizon": settings.NUDGE_PROVIDER_RATE_HORIZON_SECONDS,
            },
        )
        start, granted = cursor.fetchone()
    step = timedelta(seconds=1 / rate)
    starts = [start + i * step for i in range(granted)]
    later = start + granted * step
    waits = [later + i * step for i in range(count - granted)]
    reason = f"waiting: {provider} rate limit {rate:g}/s"
    return Admission(starts=starts, waits=waits, reason=reason)


def _open_seconds(opens: int) -> float:
    """How long the circuit stays open at its `opens`-th opening in a row (from 0)."""
    base = float(settings.NUDGE_CIRCUIT_OPEN_SECONDS)
    return min(float(settings.NUDGE_CIRCUIT_MAX_OPEN_SECONDS), base * 2 ** min(opens, 20))


_INSERT_SQL = f"""
INSERT INTO {_TABLE} (name, failures, opens, last_error, updated_at)
VALUES (%s, 0, 0, '', clock_timestamp()) ON CONFLICT (name) DO NOTHING
"""  # noqa: S608 (the table name is the model's)

_READ_SQL = f"""
SELECT clock_timestamp(), next_at, open_until, failures, opens FROM {_TABLE} WHERE name = %s
"""  # noqa: S608

# the taker that moves a past open_until on sends the probe; the others see it moved
_PROBE_SQL = f"""
WITH t AS (SELECT clock_timestamp() AS now)
UPDATE {_TABLE} SET open_until = t.now + %s * interval '1 second', updated_at = t.now
  FROM t WHERE name = %s AND open_until <= t.now
RETURNING open_until
"""  # noqa: S608

# GCRA: from the next free slot (or now), the slots that start within the horizon, at most n
_RATE_SQL = f"""
WITH t AS (SELECT clock_timestamp() AS now), cur AS (
    SELECT greatest(coalesce(next_at, t.now), t.now) AS start, t.now
      FROM {_TABLE}, t WHERE name = %(name)s FOR UPDATE OF {_TABLE}
), g AS (
    SELECT start, now, least(%(n)s, greatest(0, floor(
               (extract(epoch FROM now - start) + %(horizon)s) * %(rate)s
           )::int + 1)) AS granted
      FROM cur
)
UPDATE {_TABLE} p
   SET next_at = g.start + g.granted * interval '1 second' / %(rate)s, updated_at = g.now
  FROM g WHERE p.name = %(name)s
RETURNING g.start, g.granted
"""  # noqa: S608

_PAUSE_SQL = f"""
WITH t AS (SELECT clock_timestamp() AS now)
UPDATE {_TABLE}
   SET next_at = greatest(next_at, t.now + %s * interval '1 second'), updated_at = t.now
  FROM t WHERE name = %s
"""  # noqa: S608

_CLOSE_SQL = f"""
UPDATE {_TABLE} SET failures = 0, open_until = NULL, opened_at = NULL, opens = 0,
       updated_at = clock_timestamp()
 WHERE name = %s AND (failures > 0 OR open_until IS NOT NULL)
"""  # noqa: S608

# Failures while closed count up and open the circuit at the threshold. While open, only a
# call started after it opened (a probe) counts: it opens the circuit again, for longer.
# Returns (opened now?, open_until, failures).
_FAIL_SQL = f"""
WITH t AS (SELECT clock_timestamp() AS now), cur AS (
    SELECT name, failures + %(failed)s AS failures, open_until, opened_at, opens
      FROM {_TABLE} WHERE name = %(name)s FOR UPDATE
), d AS (
    SELECT cur.*, t.now,
           CASE WHEN open_until IS NULL THEN failures >= %(threshold)s
                ELSE %(started)s >= opened_at END AS opening,
           CASE WHEN open_until IS NULL THEN 0 ELSE opens + 1 END AS next_opens
      FROM cur, t
)
UPDATE {_TABLE} p
   SET failures = d.failures,
       open_until = CASE WHEN d.opening
                         THEN d.now + least(%(max)s, %(base)s * power(2, least(d.next_opens, 20)))
                                      * interval '1 second'
                         ELSE d.open_until END,
       opened_at = CASE WHEN d.opening THEN d.now ELSE d.opened_at END,
       opens = CASE WHEN d.opening THEN d.next_opens ELSE d.opens END,
       last_error = %(error)s, updated_at = d.now
  FROM d WHERE p.name = d.name
RETURNING d.opening, p.open_until, p.failures
"""  # noqa: S608
