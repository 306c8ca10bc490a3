"""The stats scenario of `make bench` (issue 15): a journey with N sends (1,000,000 by
default) decided over 30 days, with a 10% holdout group and conversions, then
GET /api/journeys/{slug}/stats/ timed through the real HTTP endpoint (gunicorn with the
production web settings, as the ingest scenario), after the rollup ran.

1. N customers, enrolments and pending sends with the bench's set-based INSERTs
   (bench.data), then set-based UPDATEs decide them, spread over the last 30 days: 10% held
   out (skipped, "held out (10% holdout group)"), then of the others 80% sent, 8% cancelled
   by payment, 6% skipped stale, 6% failed; 2% of the sent ones and 2% of the held-out ones
   convert (a payment and its Conversion), a third of the sent ones by code. The statement
   triggers record every change as they would in production.
2. The rollup (`journey_stats_fold`) folds them into the daily figures; the run checks that
   the API's figures equal a direct count over the rows for the whole range.
3. `--stats-requests` GETs one after another over a keep-alive connection, for 30 and 365
   days (alternating): p50 and p99 of the client-side time, from the request's first byte to
   the response's last.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.run import BenchFailure, db_now, fmt, log, sql, web_server

SLUG = "bench-stats"

# Decide the sends by their position k (0..N-1) in the run: k %% 100 says what happens, and
# k spreads them over the last 30 days (the day each is counted on). One statement per
# chunk of ids, so each statement's transition tables stay small.
_DECIDE_SQL = """
UPDATE journeys_scheduledsend s
   SET status = d.status, reason = d.reason, updated_at = d.at,
       sent_at = CASE WHEN d.status = 'sent' THEN d.at END, due_at = d.at
  FROM (
    SELECT id,
           CASE WHEN k %% 100 < 10 THEN 'skipped'
                WHEN k %% 100 < 82 THEN 'sent'
                WHEN k %% 100 < 89 THEN 'cancelled'
                WHEN k %% 100 < 95 THEN 'skipped'
                ELSE 'failed' END AS status,
           CASE WHEN k %% 100 < 10 THEN 'held out (10%% holdout group)'
                WHEN k %% 100 < 82 THEN ''
                WHEN k %% 100 < 89 THEN 'cancelled by payment p_' || k
                WHEN k %% 100 < 95 THEN 'stale: 3 h late'
                ELSE 'failed after 5 attempts: provider error: 503' END AS reason,
           %(now)s::timestamptz - (k %% 30) * interval '1 day' - (k %% 997) * interval '1 minute'
             AS at
      FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 + %(offset)s AS k
              FROM journeys_scheduledsend
             WHERE journey_id = %(journey)s AND id BETWEEN %(first)s AND %(last)s) n
  ) d
 WHERE s.id = d.id
"""
_HELD_OUT_SQL = """
UPDATE journeys_enrollment e SET held_out = true
  FROM journeys_scheduledsend s
 WHERE s.enrollment_id = e.id AND s.journey_id = %(journey)s AND s.reason LIKE 'held out%%'
"""
# The enrolments' held_out flag is written after their INSERT above (the bench writes rows
# set-based); the trigger counts enrolments on INSERT only, so the held-out count is recorded
# here, as the enrolment path records it at once.
_HELD_OUT_DELTA_SQL = """
INSERT INTO journeys_journeystatdelta (journey_id, day, metric, label, count, amount)
SELECT journey_id, (created_at AT TIME ZONE 'UTC')::date, 'held_out', '', count(*), 0
  FROM journeys_enrollment WHERE journey_id = %(journey)s AND held_out
 GROUP BY 1, 2
"""
_CONVERT_SQL = """
WITH chosen AS (
    SELECT s.id, s.customer_id, s.enrollment_id, s.journey_id, s.status, s.due_at, s.sent_at,
           e.created_at AS enrolled_at, e.held_out, row_number() OVER (ORDER BY s.id) AS k
      FROM journeys_scheduledsend s JOIN journeys_enrollment e ON e.id = s.enrollment_id
     WHERE s.journey_id = %(journey)s AND (s.status = 'sent' OR e.held_out)
       AND s.id %% 50 = 0
), paid AS (
    INSERT INTO marketing_payment (external_id, customer_id, amount, currency, discount_code,
                                   created_at)
    SELECT %(prefix)s || c.id, c.customer_id, 20 + c.k %% 80, 'EUR', '', now() FROM chosen c
    RETURNING id, customer_id
)
INSERT INTO journeys_conversion (payment_id, journey_id, send_id, enrollment_id, customer_id,
                                 kind, held_out, first_for_enrollment, enrolled_at, amount,
                                 currency, converted_at, created_at)
SELECT p.id, c.journey_id, c.id, c.enrollment_id, c.customer_id,
       CASE WHEN NOT c.held_out AND c.k %% 3 = 0 THEN 'code' ELSE 'window' END, c.held_out,
       true, c.enrolled_at, 20 + c.k %% 80, 'EUR',
       coalesce(c.sent_at, c.due_at) + interval '1 hour', now()
  FROM paid p JOIN chosen c ON c.customer_id = p.customer_id
"""


def run(args: Any, prefix: str, logs: Path) -> dict[str, float]:
    from django.contrib.auth.models import Permission, User
    from rest_framework.authtoken.models import Token

    from bench import data
    from journeys import services, stats
    from journeys.models import Journey
    from journeys.services import stats as rollup

    n = args.stats_sends
    spec = {
        "journeys": [
            {
                "slug": SLUG,
                "name": "Bench stats",
                "trigger": "bench_stats_never",
                "holdout_percent": 10,
                "steps": [
                    {"delay": "PT1H", "channel": "email", "template": {"subject": "a", "body": "b"}}
                ],
            }
        ]
    }
    from django.conf import settings

    settings.NUDGE_EXTRA_EVENT_TYPES = [*settings.NUDGE_EXTRA_EVENT_TYPES, "bench_stats_never"]
    services.journeys_import(data=spec)
    journey = Journey.objects.get(slug=SLUG)
    step = journey.steps.get()
    log(f"stats: {n:,} sends of one journey, decided over 30 days")
    first = int(sql("SELECT coalesce(max(id), 0) FROM journeys_scheduledsend")[0][0]) + 1
    started = time.monotonic()
    data.sends_create(prefix=prefix, count=n, journey_id=journey.pk, step_id=step.pk, due=db_now())
    last = int(sql("SELECT max(id) FROM journeys_scheduledsend")[0][0])
    now = db_now()
    chunk = 100_000
    for low in range(first, last + 1, chunk):
        sql(
            _DECIDE_SQL,
            {
                "now": now,
                "journey": journey.pk,
                "first": low,
                "last": low + chunk - 1,
                "offset": low - first,
            },
        )
    sql(_HELD_OUT_SQL, {"journey": journey.pk})
    sql(_HELD_OUT_DELTA_SQL, {"journey": journey.pk})
    sql(_CONVERT_SQL, {"journey": journey.pk, "prefix": f"{prefix}pay"})
    write_s = time.monotonic() - started
    fold_started = time.monotonic()
    rollup.journey_stats_fold()
    fold_s = time.monotonic() - fold_started
    data.vacuum_analyze()
    log(f"  written and decided in {write_s:.0f} s; rollup {fold_s:.1f} s")

    start, end = (now - timedelta(days=30)).date(), now.date() + timedelta(days=1)
    counted_started = time.monotonic()
    counted = stats.journey_figures_counted(journey, start, end)
    counted_s = time.monotonic() - counted_started
    if stats.journey_figures(journey, start, end).as_dict() != counted.as_dict():
        raise BenchFailure("stats: the rollup's figures differ from a count over the rows")
    if (
        counted.total("sent")
        + counted.total("skipped")
        + counted.total("cancelled")
        + (counted.total("failed"))
        != n
    ):
        raise BenchFailure(f"stats: {n} sends written, the figures count another number")
    log(f"  rollup = direct count over the rows (which took {counted_s:.1f} s)")

    user, _ = User.objects.get_or_create(username=f"{prefix}stats")
    user.user_permissions.add(Permission.objects.get(codename="view_journey"))
    token = Token.objects.get_or_create(user=user)[0].key
    # the measurement, not the per-user throttle (600/min by default)
    os.environ["NUDGE_API_TOKEN_RATE"] = "none"
    times: list[float] = []
    with web_server(logs) as (port, _):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        ranges = [(start, end), (end - timedelta(days=365), end)]
        for index in range(args.stats_requests + 10):
            since, until = ranges[index % 2]
            path = f"/api/journeys/{SLUG}/stats/?from={since.isoformat()}&to={until.isoformat()}"
            began = time.perf_counter()
            connection.request(
                "GET",
                path,
                headers={
                    "Authorization": f"Token {token}",
                    "Host": "127.0.0.1",
                    "X-Forwarded-Proto": "https",
                },
            )
            response = connection.getresponse()
            body = response.read()
            elapsed = (time.perf_counter() - began) * 1000
            if response.status != 200:
                raise BenchFailure(f"stats API answered {response.status}: {body[:300]!r}")
            if index >= 10:  # the first requests load the worker's code and connection
                times.append(elapsed)
            if index == 0:
                answer = json.loads(body)
                if answer["sent"] != counted.total("sent"):
                    raise BenchFailure(f"stats API: sent {answer['sent']}, rows say otherwise")
        connection.close()
    os.environ.pop("NUDGE_API_TOKEN_RATE", None)
    figures = {
        "sends": float(n),
        "p50_ms": statistics.median(times),
        "p99_ms": statistics.quantiles(times, n=100)[98],
        "max_ms": max(times),
        "fold_s": fold_s,
        "counted_s": counted_s,
    }
    log(
        f"  GET stats x{len(times)}: p50 {fmt(figures['p50_ms'])} ms, p99 "
        f"{fmt(figures['p99_ms'])} ms (a direct count: {counted_s * 1000:.0f} ms)"
    )
    return figures


def bench_line(figures: dict[str, float] | None, sends: int) -> str:
    if figures is None:
        return f"BENCH stats sends={sends} p99_ms=nan"
    return f"BENCH stats sends={int(figures['sends'])} p99_ms={fmt(figures['p99_ms'])}"
