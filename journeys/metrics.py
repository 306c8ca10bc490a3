"""What the sends, events and providers tables say about the messaging cluster, read at
scrape time (`GET /metrics`, nudge.metrics) and by `GET /healthz` (config.health).

The tables are the queues, so they are the one record that is the same from every process on
every machine. Each read is bounded, whatever the size of the table (100M sends):

- **Exact, through a partial index**: the sets the partial indexes hold (due and pending
  sends: `send_pending_due`; in flight: `send_in_flight`; events not applied:
  `event_unapplied`) are counted by reading at most `limit` index entries (and their rows, for
  the channel), oldest first. Below `limit` the count is exact; at `limit` it is replaced by
  the planner's estimate (below), and `nudge_metric_exact` says which it was.
- **Exact, one index entry**: the oldest due send, the oldest claim in flight, the oldest event
  not applied (min() or ORDER BY … LIMIT 1 on the same indexes).
- **Estimated by the planner**: how many sends are in each status (sent, cancelled, … have no
  index of their own: counting them exactly reads the table). `EXPLAIN` of the count's
  predicate gives PostgreSQL's row estimate: the table's size now (pages, scaled from
  pg_class) times the fraction of the last ANALYZE's statistics. Cheap (planning only) and
  rough: the fractions move only when autovacuum analyzes the table again.
- **Exact, small table**: the providers' rows (journeys.models.ProviderState).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from journeys.models import ProviderState, ScheduledSend
from journeys.sqlnames import sql
from marketing.models import Channel, Event

# The sets counted through a partial index: their predicate and the index's order.
_SETS = {
    "due": ("status = {pending} AND due_at <= now()", "due_at"),
    "pending": ("status = {pending}", "due_at"),
    "in_flight": ("status = {sending}", "claimed_at"),
}
_COUNT_BY_CHANNEL = {
    name: sql(
        f"SELECT channel, count(*) FROM (SELECT channel FROM {{send}} WHERE {where} "  # noqa: S608
        f"ORDER BY {order} LIMIT %s) s GROUP BY channel"
    )
    for name, (where, order) in _SETS.items()
}
_ESTIMATE_SET = {
    name: sql(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {{send}} WHERE {where} AND channel = %s")  # noqa: S608
    for name, (where, _) in _SETS.items()
}
_ESTIMATE_STATUS = sql(
    "EXPLAIN (FORMAT JSON) SELECT 1 FROM {send} WHERE status = %s AND channel = %s"
)

# Ages in seconds (NULL when the set is empty), each from the first entry of its index.
_AGES_SQL = sql("""
SELECT extract(epoch FROM now() - (SELECT min(due_at) FROM {send}
                                    WHERE status = {pending} AND due_at <= now())),
       extract(epoch FROM now() - (SELECT min(claimed_at) FROM {send}
                                    WHERE status = {sending})),
       extract(epoch FROM now() - (SELECT received_at FROM {event}
                                    WHERE applied_at IS NULL AND apply_attempts < %s
                                    ORDER BY id LIMIT 1))
""")

# The oldest due sends (at most %s): how late each is, into the buckets below.
LATENESS_BUCKETS = (1.0, 5.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
_LATENESS_SQL = sql(
    "SELECT "  # noqa: S608 (constants and the model's names)
    + ", ".join(f"count(*) FILTER (WHERE late <= {bound!r})" for bound in LATENESS_BUCKETS)
    + """, count(*), coalesce(sum(late), 0)
  FROM (SELECT extract(epoch FROM now() - due_at) AS late FROM {send}
         WHERE status = {pending} AND due_at <= now() ORDER BY due_at LIMIT %s) s
"""
)

# What /healthz calls stalled, each count at most `cap`: sends due for more than `stall`
# seconds; sends in flight more than `stall` seconds past their lease; events not applied
# (and not given up) more than their lease and `stall` after they arrived, among the `cap`
# oldest (ids follow arrival, so the late ones come first).
_STALL_SQL = sql("""
SELECT (SELECT count(*) FROM (SELECT 1 FROM {send}
                               WHERE status = {pending}
                                 AND due_at <= now() - %(stall)s * interval '1 second'
                               ORDER BY due_at LIMIT %(cap)s) d),
       (SELECT count(*) FROM (SELECT 1 FROM {send}
                               WHERE status = {sending}
                                 AND claimed_at <= now()
                                     - (%(send_lease)s + %(stall)s) * interval '1 second'
                               ORDER BY claimed_at LIMIT %(cap)s) f),
       (SELECT count(*) FILTER (WHERE received_at <= now()
                                      - (%(event_lease)s + %(stall)s) * interval '1 second')
          FROM (SELECT received_at FROM {event}
                 WHERE applied_at IS NULL AND apply_attempts < %(attempts)s
                 ORDER BY id LIMIT %(cap)s) e)
""")

_EVENTS_SQL = sql("""
SELECT (SELECT count(*) FROM (SELECT 1 FROM {event}
                               WHERE applied_at IS NULL AND apply_attempts < %(attempts)s
                               ORDER BY id LIMIT %(limit)s) w),
       (SELECT count(*) FROM (SELECT 1 FROM {event}
                               WHERE applied_at IS NULL AND apply_attempts >= %(attempts)s
                               ORDER BY id LIMIT %(limit)s) g)
""")

_PROVIDERS_SQL = f"""
SELECT name, failures, opens, last_error,
       CASE WHEN open_until IS NULL THEN 'closed'
            WHEN open_until > now() THEN 'open' ELSE 'half_open' END,
       greatest(0, extract(epoch FROM open_until - now())),
       greatest(0, extract(epoch FROM next_at - now()))
  FROM {ProviderState._meta.db_table} ORDER BY name
"""  # noqa: S608 (the model's table)
CIRCUIT_STATES = ("closed", "open", "half_open")


@dataclass(frozen=True)
class Stall:
    """What /healthz reports as a stalled cluster (each count at most `cap`)."""

    sends_due: int
    sends_past_lease: int
    events_waiting: int
    stall_seconds: float
    cap: int

    def describe(self) -> str:
        """ "" when nothing is stalled, else what is, e.g. "80 sends due for more than 120 s"."""
        late = []
        stall = f"{self.stall_seconds:g}"
        if self.sends_due:
            late.append(f"{self._n(self.sends_due)} sends due for more than {stall} s")
        if self.sends_past_lease:
            late.append(
                f"{self._n(self.sends_past_lease)} sends in flight more than {stall} s "
                "past their lease"
            )
        if self.events_waiting:
            lease = f"{settings.NUDGE_APPLY_LEASE_SECONDS + self.stall_seconds:g}"
            late.append(
                f"{self._n(self.events_waiting)} events not applied for more than {lease} s"
            )
        return "; ".join(late)

    def _n(self, count: int) -> str:
        return f"at least {self.cap}" if count >= self.cap else str(count)


def cluster_stall_read(*, stall_seconds: float, cap: int = 10_000) -> Stall:
    """One bounded statement (three index range scans of at most `cap` entries); the ORM
    on SQLite (one machine, small tables)."""
    if connection.vendor != "postgresql":
        return _cluster_stall_read_orm(stall_seconds, cap)
    with connection.cursor() as cursor:
        cursor.execute(
            _STALL_SQL,
            {
                "stall": stall_seconds,
                "cap": cap,
                "send_lease": settings.NUDGE_SEND_LEASE_SECONDS,
                "event_lease": settings.NUDGE_APPLY_LEASE_SECONDS,
                "attempts": settings.NUDGE_SEND_MAX_ATTEMPTS,
            },
        )
        due, past_lease, events = cursor.fetchone()
    return Stall(due, past_lease, events, stall_seconds, cap)


def _cluster_stall_read_orm(stall_seconds: float, cap: int) -> Stall:
    now = timezone.now()
    send_lease = settings.NUDGE_SEND_LEASE_SECONDS
    event_lease = settings.NUDGE_APPLY_LEASE_SECONDS
    due = ScheduledSend.objects.pending().filter(due_at__lte=now - timedelta(seconds=stall_seconds))
    past_lease = ScheduledSend.objects.in_flight_since(
        now - timedelta(seconds=send_lease + stall_seconds)
    )
    events = Event.objects.filter(
        applied_at__isnull=True,
        apply_attempts__lt=settings.NUDGE_SEND_MAX_ATTEMPTS,
        received_at__lte=now - timedelta(seconds=event_lease + stall_seconds),
    )
    due_count, past_lease_count, events_count = (
        query.values("pk")[:cap].count() for query in (due, past_lease, events)
    )
    return Stall(due_count, past_lease_count, events_count, stall_seconds, cap)


def _plan_rows(sql_text: str, params: Sequence[str]) -> float:
    """The planner's row estimate for a query (EXPLAIN: planning only, nothing is read)."""
    with connection.cursor() as cursor:
        cursor.execute(sql_text, params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return float(plan[0]["Plan"]["Plan Rows"])


def sends_count(name: str, *, limit: int) -> tuple[dict[str, float], bool]:
    """Sends of the set `name` ("due", "pending", "in_flight") by channel, and whether the
    counts are exact (fewer than `limit`) or the planner's estimates."""
    with connection.cursor() as cursor:
        cursor.execute(_COUNT_BY_CHANNEL[name], [limit])
        counts = {channel: float(count) for channel, count in cursor.fetchall()}
    if sum(counts.values()) < limit:
        return {channel: counts.get(channel, 0.0) for channel in Channel.values}, True
    estimates = {channel: _plan_rows(_ESTIMATE_SET[name], [channel]) for channel in Channel.values}
    # the estimate never says fewer than were just counted
    scale = max(1.0, limit / max(1.0, sum(estimates.values())))
    return {channel: value * scale for channel, value in estimates.items()}, False


class JourneysCollector(Collector):
    """Nudge's own metrics, read from the database at each scrape (see the module)."""

    def __init__(self, *, limit: int | None = None) -> None:
        self.limit = limit

    def collect(self) -> Iterator[Metric]:
        limit = self.limit or settings.NUDGE_METRICS_EXACT_LIMIT
        attempts = settings.NUDGE_SEND_MAX_ATTEMPTS
        exact = GaugeMetricFamily(
            "nudge_metric_exact",
            "1 when the gauge was counted exactly at this scrape, 0 when it is the planner's "
            "estimate (a set of NUDGE_METRICS_EXACT_LIMIT rows or more)",
            labels=["metric"],
        )
        for name, help_text in (
            ("due", "Sends pending and due (due_at <= now): not claimed yet"),
            ("pending", "Sends pending, due or not"),
            ("in_flight", "Sends claimed, not finished (status sending), retries waiting too"),
        ):
            counts, is_exact = sends_count(name, limit=limit)
            family = GaugeMetricFamily(f"nudge_sends_{name}", help_text, labels=["channel"])
            for channel, value in counts.items():
                family.add_metric([channel], value)
            yield family
            exact.add_metric([f"nudge_sends_{name}"], 1.0 if is_exact else 0.0)

        estimated = GaugeMetricFamily(
            "nudge_sends_estimated",
            "Sends in each status, the planner's estimate (no index counts them); "
            "deriv() gives a rough rate",
            labels=["status", "channel"],
        )
        for status in ScheduledSend.Status.values:
            for channel in Channel.values:
                estimated.add_metric(
                    [status, channel], _plan_rows(_ESTIMATE_STATUS, [status, channel])
                )
        yield estimated

        with connection.cursor() as cursor:
            cursor.execute(_AGES_SQL, [attempts])
            oldest_due, oldest_claim, oldest_event = cursor.fetchone()
            cursor.execute(_LATENESS_SQL, [limit])
            *buckets, late_count, late_sum = cursor.fetchone()
            cursor.execute(_EVENTS_SQL, {"attempts": attempts, "limit": limit})
            events_waiting, events_given_up = cursor.fetchone()
        lease = float(settings.NUDGE_SEND_LEASE_SECONDS)
        yield _gauge(
            "nudge_sends_oldest_due_seconds",
            "How late the oldest due send not claimed yet is (0: none due)",
            oldest_due,
        )
        yield _gauge(
            "nudge_sends_oldest_claim_past_lease_seconds",
            "How long past NUDGE_SEND_LEASE_SECONDS the oldest claim in flight is (0: none; "
            "the ticker hands such sends out again)",
            None if oldest_claim is None else max(0.0, float(oldest_claim) - lease),
        )
        lateness = GaugeHistogramMetricFamily(
            "nudge_sends_due_lateness_seconds",
            "How late the due sends waiting to be claimed are (the oldest "
            "NUDGE_METRICS_EXACT_LIMIT of them)",
            buckets=[
                *(
                    (str(bound), float(count))
                    for bound, count in zip(LATENESS_BUCKETS, buckets, strict=True)
                ),
                ("+Inf", float(late_count)),
            ],
            gsum_value=float(late_sum),
        )
        yield lateness

        yield _gauge(
            "nudge_events_unapplied",
            "Stored events waiting to be applied to journeys (enrolments)",
            events_waiting,
        )
        yield _gauge(
            "nudge_events_apply_given_up",
            "Events whose application failed NUDGE_SEND_MAX_ATTEMPTS times (admin, event log)",
            events_given_up,
        )
        yield _gauge(
            "nudge_events_oldest_unapplied_seconds",
            "Age of the oldest stored event waiting to be applied (0: none)",
            oldest_event,
        )
        exact.add_metric(["nudge_events_unapplied"], 1.0 if events_waiting < limit else 0.0)
        exact.add_metric(["nudge_events_apply_given_up"], 1.0 if events_given_up < limit else 0.0)
        yield exact
        yield from _providers()


def _gauge(name: str, help_text: str, value: float | Decimal | None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=float(value or 0))


def _providers() -> Iterator[Metric]:
    with connection.cursor() as cursor:
        cursor.execute(_PROVIDERS_SQL)
        rows = cursor.fetchall()
    state = GaugeMetricFamily(
        "nudge_provider_circuit_state",
        "The provider's circuit breaker: 1 for its state (closed, open, half_open)",
        labels=["provider", "state"],
    )
    failures = GaugeMetricFamily(
        "nudge_provider_failures_in_a_row",
        "Transient provider failures since its last success (NUDGE_CIRCUIT_FAILURES opens the "
        "circuit)",
        labels=["provider"],
    )
    opens = GaugeMetricFamily(
        "nudge_provider_circuit_opens_in_a_row",
        "Times the circuit opened again without a success in between",
        labels=["provider"],
    )
    open_for = GaugeMetricFamily(
        "nudge_provider_circuit_open_seconds",
        "Seconds until the open circuit lets a probe through (0: closed or half-open)",
        labels=["provider"],
    )
    rate_wait = GaugeMetricFamily(
        "nudge_provider_rate_wait_seconds",
        "Seconds until the provider's next free slot (rate limit or Retry-After; 0: free now)",
        labels=["provider"],
    )
    for name, failed, opened, _error, current, open_seconds, wait_seconds in rows:
        for candidate in CIRCUIT_STATES:
            state.add_metric([name, candidate], 1.0 if candidate == current else 0.0)
        failures.add_metric([name], float(failed))
        opens.add_metric([name], float(opened))
        open_for.add_metric([name], float(open_seconds or 0))
        rate_wait.add_metric([name], float(wait_seconds or 0))
    yield from (state, failures, opens, open_for, rate_wait)


def collect_in_one_snapshot(collector: Collector, *, timeout_ms: int = 2000) -> list[Metric]:
    """Run `collector` in one transaction with a statement timeout, so that no scrape can hold
    a connection for long whatever a plan does. The timeout is set for the transaction only
    and put back after (inside a caller's transaction, ATOMIC_REQUESTS, it would outlive the
    savepoint otherwise); a statement that fails rolls the savepoint, and the timeout, back."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('statement_timeout'), "
            "set_config('statement_timeout', %s, true)",
            [f"{timeout_ms}ms"],
        )
        previous = cursor.fetchone()[0]
        metrics = list(collector.collect())
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])
    return metrics
