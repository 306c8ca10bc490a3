"""A journey's figures over a range of UTC days [start, end) (GET
/api/journeys/{slug}/stats/): read from the daily rollup plus the changes not folded into it
yet (services.stats), or counted from the rows (`journey_figures_counted`, the same rule
written against the rows: on a database without the triggers, and in the tests that prove
both agree).

The comparison of the sent group and the holdout group is by enrolment, intent to treat:
every enrolment not held out is in the sent group, whether its messages went out or were
cancelled (a customer who paid before the first message is in both groups alike: no touch,
so no conversion, in either). An enrolment converted when a payment was credited to one of
its sends (services.attribution); it counts on the enrolment's day, beside its group's
enrolments, so that a rate is "of the enrolments of these days, the share that converted".
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, Q, Sum

from journeys.models import (
    Conversion,
    Enrollment,
    Journey,
    ScheduledSend,
)
from journeys.services import stats as metrics
from journeys.sqlnames import sql

Status = ScheduledSend.Status
Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


@dataclass
class Figures:
    """Counts per (metric, label) and amounts per (metric, label) over the range."""

    counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    amounts: dict[tuple[str, str], Decimal] = field(
        default_factory=lambda: defaultdict(lambda: Decimal(0))
    )

    def add(self, metric: str, label: str, count: int, amount: Decimal | None = None) -> None:
        self.counts[metric, label] += count
        if amount:
            self.amounts[metric, label] += amount

    def total(self, metric: str) -> int:
        return sum(n for (m, _), n in self.counts.items() if m == metric)

    def by_label(self, metric: str) -> dict[str, int]:
        found = {label: n for (m, label), n in self.counts.items() if m == metric and n}
        return dict(sorted(found.items(), key=lambda item: (-item[1], item[0])))

    def money(self, metric: str) -> dict[str, str]:
        found = {
            label: amount for (m, label), amount in self.amounts.items() if m == metric and amount
        }
        return {currency: f"{found[currency]:.2f}" for currency in sorted(found)}

    def as_dict(self) -> dict[tuple[str, str], tuple[int, Decimal]]:
        """Non-zero figures, for comparisons."""
        keys = {k for k, n in self.counts.items() if n} | {k for k, a in self.amounts.items() if a}
        return {k: (self.counts.get(k, 0), self.amounts.get(k, Decimal(0))) for k in keys}


def _bounds(start: date, end: date) -> tuple[datetime, datetime]:
    return (
        datetime.combine(start, time.min, tzinfo=UTC),
        datetime.combine(end, time.min, tzinfo=UTC),
    )


# the folded figures and the changes not folded yet, each on its (journey, day) index
_ROLLUP_SQL = sql("""
SELECT metric, label, sum(count), sum(amount) FROM (
    SELECT metric, label, count, amount FROM {day_stat}
     WHERE journey_id = %(journey)s AND day >= %(start)s AND day < %(end)s
    UNION ALL
    SELECT metric, label, count, amount FROM {stat_delta}
     WHERE journey_id = %(journey)s AND day >= %(start)s AND day < %(end)s
) AS f
GROUP BY metric, label
""")


def journey_figures(journey: Journey, start: date, end: date) -> Figures:
    """The figures of [start, end): rollup plus pending deltas (PostgreSQL: a few hundred
    rows on two indexes, whatever the number of sends), else counted from the rows."""
    if connection.vendor != "postgresql":
        return journey_figures_counted(journey, start, end)
    figures = Figures()
    with connection.cursor() as cursor:
        cursor.execute(_ROLLUP_SQL, {"journey": journey.pk, "start": start, "end": end})
        for metric, label, count, amount in cursor.fetchall():
            figures.add(metric, label, int(count), Decimal(amount))
    return figures


def journey_figures_counted(journey: Journey, start: date, end: date) -> Figures:
    """The same figures counted from the rows (services.stats's table): a scan, for small
    databases and for the proof that the rollup agrees."""
    low, high = _bounds(start, end)
    figures = Figures()
    enrolments = Enrollment.objects.filter(
        journey=journey, created_at__gte=low, created_at__lt=high
    ).aggregate(enrolled=Count("pk"), held_out=Count("pk", filter=Q(held_out=True)))
    figures.add(metrics.ENROLLED, "", enrolments["enrolled"])
    figures.add(metrics.HELD_OUT, "", enrolments["held_out"])
    sends = ScheduledSend.objects.filter(journey=journey)
    figures.add(
        Status.SENT,
        "",
        sends.filter(status=Status.SENT)
        .filter(
            Q(sent_at__gte=low, sent_at__lt=high)
            | Q(sent_at__isnull=True, updated_at__gte=low, updated_at__lt=high)
        )
        .count(),
    )
    for status, reason, count in (
        sends.filter(
            status__in=[Status.CANCELLED, Status.SKIPPED, Status.FAILED],
            updated_at__gte=low,
            updated_at__lt=high,
        )
        .values_list("status", "reason")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        figures.add(status, metrics.reason_label(reason), count)
    figures.add(
        metrics.CODES_REDEEMED,
        "",
        sends.filter(discount_redeemed_at__gte=low, discount_redeemed_at__lt=high).count(),
    )
    conversions = Conversion.objects.filter(journey=journey)
    for held_out, kind, currency, count, amount in (
        conversions.filter(converted_at__gte=low, converted_at__lt=high)
        .values_list("held_out", "kind", "currency")
        .annotate(n=Count("pk"), amount=Sum("amount"))
        .order_by()
    ):
        group = (
            (metrics.CONVERSIONS_HOLDOUT, metrics.REVENUE_HOLDOUT)
            if held_out
            else (metrics.CONVERSIONS, metrics.REVENUE)
        )
        figures.add(group[0], kind, count)
        figures.add(group[1], currency, count, amount)
    for held_out, count in (
        conversions.filter(first_for_enrollment=True, enrolled_at__gte=low, enrolled_at__lt=high)
        .values_list("held_out")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        figures.add(metrics.CONVERTED_HOLDOUT if held_out else metrics.CONVERTED, "", count)
    return figures


# --- the comparison -------------------------------------------------------------------------


def _rate(converted: int, enrolled: int) -> float | None:
    return converted / enrolled if enrolled else None


def _wilson(converted: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion."""
    p = converted / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(x1: int, n1: int, x0: int, n0: int) -> tuple[float, float] | None:
    """Newcombe's hybrid score interval (his method 10) of p1 - p0, 95%; None when a group
    is empty."""
    if not n1 or not n0:
        return None
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = _wilson(x1, n1)
    l0, u0 = _wilson(x0, n0)
    d = p1 - p0
    return (
        d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2),
        d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2),
    )


def lift_interval(x1: int, n1: int, x0: int, n0: int) -> tuple[float, float] | None:
    """95% interval of the relative lift p1/p0 - 1, from the log of the risk ratio (Katz):
    exp(ln(p1/p0) ± z·sqrt(1/x1 - 1/n1 + 1/x0 - 1/n0)) - 1; None when a group is empty or
    has no conversion (the log is then undefined)."""
    if not (n1 and n0 and x1 and x0):
        return None
    log_ratio = math.log((x1 / n1) / (x0 / n0))
    se = math.sqrt(1 / x1 - 1 / n1 + 1 / x0 - 1 / n0)
    return math.exp(log_ratio - Z95 * se) - 1, math.exp(log_ratio + Z95 * se) - 1


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def figures_report(journey: Journey, start: date, end: date, figures: Figures) -> dict[str, Any]:
    """The API's answer (journeys.api.serializers.JourneyStatsSerializer)."""
    enrolled = figures.total(metrics.ENROLLED)
    held_out = figures.total(metrics.HELD_OUT)
    sent_group = enrolled - held_out
    converted = figures.total(metrics.CONVERTED)
    converted_holdout = figures.total(metrics.CONVERTED_HOLDOUT)
    rate_sent = _rate(converted, sent_group)
    rate_holdout = _rate(converted_holdout, held_out)
    lift = (
        (rate_sent - rate_holdout) / rate_holdout
        if rate_sent is not None and rate_holdout
        else None
    )
    lift_ci = lift_interval(converted, sent_group, converted_holdout, held_out)
    difference = (
        rate_sent - rate_holdout if rate_sent is not None and rate_holdout is not None else None
    )
    difference_ci = difference_interval(converted, sent_group, converted_holdout, held_out)

    def decided(status: str) -> dict[str, Any]:
        return {"total": figures.total(status), "by_reason": figures.by_label(status)}

    return {
        "journey": journey.slug,
        "from": start,
        "to": end,
        "time_zone": "UTC",
        "holdout_percent": f"{journey.holdout_percent.normalize():f}",
        "conversion_window": journey.conversion_window,
        "enrolled": enrolled,
        "held_out": held_out,
        "sent": figures.total(Status.SENT),
        "cancelled": decided(Status.CANCELLED),
        "skipped": decided(Status.SKIPPED),
        "failed": decided(Status.FAILED),
        "codes_redeemed": figures.total(metrics.CODES_REDEEMED),
        "conversions": {
            "sent_group": {
                "total": figures.total(metrics.CONVERSIONS),
                "by_kind": figures.by_label(metrics.CONVERSIONS),
            },
            "holdout_group": {
                "total": figures.total(metrics.CONVERSIONS_HOLDOUT),
                "by_kind": figures.by_label(metrics.CONVERSIONS_HOLDOUT),
            },
        },
        "revenue": {
            "sent_group": figures.money(metrics.REVENUE),
            "holdout_group": figures.money(metrics.REVENUE_HOLDOUT),
        },
        "groups": {
            "sent": {
                "enrolled": sent_group,
                "converted": converted,
                "conversion_rate": _rounded(rate_sent),
            },
            "holdout": {
                "enrolled": held_out,
                "converted": converted_holdout,
                "conversion_rate": _rounded(rate_holdout),
            },
        },
        "lift": {
            "relative": _rounded(lift),
            "ci95": None if lift_ci is None else [_rounded(v) for v in lift_ci],
            "method": "relative lift (rate_sent - rate_holdout) / rate_holdout; 95% interval "
            "from the log risk ratio (Katz)",
        },
        "difference": {
            "absolute": _rounded(difference),
            "ci95": None if difference_ci is None else [_rounded(v) for v in difference_ci],
            "method": "rate_sent - rate_holdout; 95% Newcombe hybrid score interval",
        },
    }


def stats_range_default(today: date) -> tuple[date, date]:
    """The last 30 days, today included."""
    end = today + timedelta(days=1)
    return end - timedelta(days=30), end
