"""The journeys' figures, maintained as they change (journeys.stats reads them).

Every figure is a count (and, for revenue, an amount) per journey, UTC day, metric and label
(`JourneyDayStat`). A change adds a row to `JourneyStatDelta` *in the transaction that makes
it*, so the figures can never miss or double-count a change, whichever code path made it:
PostgreSQL statement-level triggers on the sends, enrolments and conversions tables compare
the rows before and after each statement (its transition tables) and insert what moved, one
row per (journey, day, metric, label) the statement touched, not one per row. The rollup job
(`journey_stats_fold`, a django-q2 schedule every NUDGE_STATS_ROLLUP_MINUTES) moves the deltas
into JourneyDayStat in one statement; the API reads both, so its figures are exact as of the
request and cost a few hundred rows whatever the number of sends.

What is counted, on which day (UTC), the rule the triggers (SQL) and
`journeys.stats.journey_figures_counted` (Python, straight from the rows) both follow:

| metric | label | day | rows |
| --- | --- | --- | --- |
| enrolled, held_out | "" | enrolment's created_at | every enrolment; held out ones |
| sent | "" | sent_at | sends now sent |
| cancelled, skipped, failed | reason's label | updated_at (its last change) | sends now so |
| codes_redeemed | "" | discount_redeemed_at | sends whose code was redeemed |
| conversions(_holdout) | kind | converted_at | conversions of the sent (holdout) group |
| revenue(_holdout) | currency | converted_at | the same, with their amounts |
| converted(_holdout) | "" | the enrolment's created_at | enrolments' first conversions |

A reason's label is its text before the first ":" or " (", trimmed (`reason_label`):
"held out (10% holdout group)" -> "held out", "stale: 3 h late" -> "stale"; an exit's names
the kind of event, not the event: "cancelled by payment p_9" -> "cancelled by payment".

Pending and in-flight sends count nowhere; a failed send re-driven to pending leaves the
failed count of its day, and counts again when it is decided. Triggers are PostgreSQL's; on
another database the figures are counted from the rows at each request (journeys.stats).
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django_q.models import Schedule

from journeys.models import JourneyStatDelta, ScheduledSend
from journeys.sqlnames import NAMES, sql
from nudge import conf

Status = ScheduledSend.Status
DECIDED = (Status.SENT, Status.CANCELLED, Status.SKIPPED, Status.FAILED)
LABEL_MAX = JourneyStatDelta._meta.get_field("label").max_length or 100

ENROLLED, HELD_OUT = "enrolled", "held_out"
CODES_REDEEMED = "codes_redeemed"
CONVERSIONS, CONVERSIONS_HOLDOUT = "conversions", "conversions_holdout"
REVENUE, REVENUE_HOLDOUT = "revenue", "revenue_holdout"
CONVERTED, CONVERTED_HOLDOUT = "converted", "converted_holdout"

FOLD_TASK = "journeys.tasks.journey_stats_fold"
SCHEDULE_NAME = "nudge: stats rollup"
_FOLD_LOCK = 0x4E55_5354_4154  # "NUSTAT": one fold at a time
_SCHEDULE_LOCK = 0x4E55_5354_5343  # "NUSTSC"


# --- the label of a reason: its Python body and its SQL body, side by side -------------------


# The engine's exits and supersessions name the event ("cancelled by payment p_9",
# "superseded by checkout c_3", services.exits.describe_event): its id is dropped, or every
# payment would be a label of its own.
_EVENT_NAMED = r"^((cancelled|superseded) by [^ ]+) [^ ]+$"


def reason_label(reason: str) -> str:
    """The leading label of a reason: the text before the first ":" or " (", trimmed, less
    the event's id in "cancelled by payment p_9" (-> "cancelled by payment")."""
    label = reason.split(":", 1)[0].split(" (", 1)[0].strip()
    return re.sub(_EVENT_NAMED, r"\1", label)[:LABEL_MAX]


_LABEL_SQL = (
    "left(regexp_replace(btrim(split_part(split_part(reason, ':', 1), ' (', 1)), "
    f"'{_EVENT_NAMED}', '\\1'), {LABEL_MAX})"
)


# --- the triggers ---------------------------------------------------------------------------
# Each reads one statement's transition table ({rows}: the rows as they are after it, or as
# they were before it with {sign} -1) and says what those rows count: (journey, UTC day,
# metric, label, n, amount). The statuses and tables come from the models (journeys.sqlnames),
# the metrics from the names above.

_UTC_DAY = "((%s) AT TIME ZONE 'UTC')::date"
_NAMES = {
    "sent_day": _UTC_DAY % "CASE WHEN status = {sent} THEN coalesce(sent_at, updated_at) "
    "ELSE updated_at END",
    "updated_day": _UTC_DAY % "updated_at",
    "redeemed_day": _UTC_DAY % "discount_redeemed_at",
    "created_day": _UTC_DAY % "created_at",
    "converted_day": _UTC_DAY % "converted_at",
    "enrolled_day": _UTC_DAY % "enrolled_at",
    "label": _LABEL_SQL,
    **{
        name: f"'{value}'"
        for name, value in {
            "m_enrolled": ENROLLED,
            "m_held_out": HELD_OUT,
            "m_redeemed": CODES_REDEEMED,
            "m_conversions": CONVERSIONS,
            "m_conversions_holdout": CONVERSIONS_HOLDOUT,
            "m_revenue": REVENUE,
            "m_revenue_holdout": REVENUE_HOLDOUT,
            "m_converted": CONVERTED,
            "m_converted_holdout": CONVERTED_HOLDOUT,
        }.items()
    },
}

_SEND_ROWS = """
    SELECT journey_id, {sent_day} AS day, status AS metric,
           CASE WHEN status = {sent} THEN '' ELSE {label} END AS label,
           {{sign}} AS n, 0::numeric AS amount
      FROM {{rows}} WHERE status IN ({sent}, {cancelled}, {skipped}, {failed})
    UNION ALL
    SELECT journey_id, {redeemed_day}, {m_redeemed}, '', {{sign}}, 0
      FROM {{rows}} WHERE discount_redeemed_at IS NOT NULL"""
_ENROLLMENT_ROWS = """
    SELECT journey_id, {created_day} AS day, {m_enrolled} AS metric, '' AS label, 1 AS n,
           0::numeric AS amount
      FROM {{rows}}
    UNION ALL
    SELECT journey_id, {created_day}, {m_held_out}, '', 1, 0 FROM {{rows}} WHERE held_out"""
_CONVERSION_ROWS = """
    SELECT journey_id, {converted_day} AS day,
           CASE WHEN held_out THEN {m_conversions_holdout} ELSE {m_conversions} END AS metric,
           kind AS label, 1 AS n, 0::numeric AS amount
      FROM {{rows}}
    UNION ALL
    SELECT journey_id, {converted_day},
           CASE WHEN held_out THEN {m_revenue_holdout} ELSE {m_revenue} END, currency, 1, amount
      FROM {{rows}}
    UNION ALL
    SELECT journey_id, {enrolled_day},
           CASE WHEN held_out THEN {m_converted_holdout} ELSE {m_converted} END, '', 1, 0
      FROM {{rows}} WHERE first_for_enrollment"""
_DELTA_INSERT = """
INSERT INTO {stat_delta} (journey_id, day, metric, label, count, amount)
SELECT journey_id, day, metric, label, sum(n), sum(amount)
  FROM ({{rows}}) AS changed
 GROUP BY journey_id, day, metric, label
HAVING sum(n) <> 0 OR sum(amount) <> 0"""


def _names(template: str) -> str:
    """`template` with the models' names and the ones above ({{rows}}, {{sign}} stay)."""
    return template.format_map({**NAMES, **{k: sql(v) for k, v in _NAMES.items()}})


def _rows(template: str, rows: str, sign: int = 1) -> str:
    return _names(template).format(rows=rows, sign=sign)


def _delta_insert(rows_sql: str) -> str:
    """One INSERT of what the rows of `rows_sql` count, aggregated."""
    return _names(_DELTA_INSERT).format(rows=rows_sql)


_TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $nudge$
BEGIN
{body};
RETURN NULL;
END
$nudge$"""
_TRIGGER_CREATE = (
    "CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {tables} "
    "FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
)

# (trigger and function name, its body, table, event, transition tables)
_TRIGGERS = [
    (
        "nudge_stats_send_insert",
        _delta_insert(_rows(_SEND_ROWS, "new_rows")),
        NAMES["send"],
        "INSERT",
        "NEW TABLE AS new_rows",
    ),
    (
        "nudge_stats_send_update",
        _delta_insert(
            _rows(_SEND_ROWS, "new_rows") + "\n    UNION ALL" + _rows(_SEND_ROWS, "old_rows", -1)
        ),
        NAMES["send"],
        "UPDATE",
        "OLD TABLE AS old_rows NEW TABLE AS new_rows",
    ),
    (
        "nudge_stats_send_delete",
        _delta_insert(_rows(_SEND_ROWS, "old_rows", -1)),
        NAMES["send"],
        "DELETE",
        "OLD TABLE AS old_rows",
    ),
    (
        "nudge_stats_enrollment_insert",
        _delta_insert(_rows(_ENROLLMENT_ROWS, "new_rows")),
        NAMES["enrollment"],
        "INSERT",
        "NEW TABLE AS new_rows",
    ),
    (
        "nudge_stats_conversion_insert",
        _delta_insert(_rows(_CONVERSION_ROWS, "new_rows")),
        NAMES["conversion"],
        "INSERT",
        "NEW TABLE AS new_rows",
    ),
]
# The rows stored before the triggers, counted once (as if each had just been inserted).
_BACKFILL = [
    _delta_insert(_rows(_SEND_ROWS, NAMES["send"])),
    _delta_insert(_rows(_ENROLLMENT_ROWS, NAMES["enrollment"])),
    _delta_insert(_rows(_CONVERSION_ROWS, NAMES["conversion"])),
]
_FORGET = [sql("DELETE FROM {stat_delta}"), sql("DELETE FROM {day_stat}")]


def stats_triggers_install(schema_editor: Any) -> None:
    """Create (or replace) the triggers, then count every row already stored once (a
    migration calls this; the tables' write lock taken by CREATE TRIGGER keeps writers out
    until it commits, so nothing is counted twice or missed). PostgreSQL only."""
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for name, body, table, event, tables in _TRIGGERS:
            cursor.execute(_TRIGGER_FUNCTION.format(name=name, body=body))
            cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            cursor.execute(
                _TRIGGER_CREATE.format(name=name, event=event, table=table, tables=tables)
            )
        for statement in [*_FORGET, *_BACKFILL]:
            cursor.execute(statement)


def stats_triggers_remove(schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for name, _, table, _, _ in _TRIGGERS:
            cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            cursor.execute(f"DROP FUNCTION IF EXISTS {name}()")


# --- the rollup job -------------------------------------------------------------------------

# The deltas committed so far, moved into the rollup in one statement: DELETE ... RETURNING
# takes exactly the rows this snapshot sees (a delta committed meanwhile waits for the next
# run), and the upsert adds them to the day's figures.
_FOLD_SQL = sql("""
WITH moved AS (
    DELETE FROM {stat_delta} RETURNING journey_id, day, metric, label, count, amount
)
INSERT INTO {day_stat} AS s (journey_id, day, metric, label, count, amount)
SELECT m.journey_id, m.day, m.metric, m.label, sum(m.count), sum(m.amount)
  FROM moved m JOIN {journey} j ON j.id = m.journey_id
 GROUP BY m.journey_id, m.day, m.metric, m.label
ON CONFLICT (journey_id, day, metric, label)
   DO UPDATE SET count = s.count + excluded.count, amount = s.amount + excluded.amount
""")


def journey_stats_fold() -> int:
    """Move the changes recorded since the last run into the daily figures; returns how
    many (journey, day, metric, label) figures changed. One run at a time (an advisory
    lock); nothing to do on a database without the triggers."""
    if connection.vendor != "postgresql":
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_FOLD_LOCK])
        cursor.execute(_FOLD_SQL)
        return cursor.rowcount


def journey_stats_schedule_ensure(*, using: str = DEFAULT_DB_ALIAS) -> Schedule | None:
    """The rollup's django-q2 schedule, exactly once: every NUDGE_STATS_ROLLUP_MINUTES on
    the messaging cluster (none when 0, or on a database without the triggers). Called
    after every `migrate` (journeys.receivers), under an advisory lock as the sweeper's."""
    minutes = settings.NUDGE_STATS_ROLLUP_MINUTES
    db = connections[using]
    with transaction.atomic(using=using):
        if db.vendor == "postgresql":
            with db.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEDULE_LOCK])
        schedules = Schedule.objects.using(using).filter(name=SCHEDULE_NAME).order_by("pk")
        if not minutes or db.vendor != "postgresql":
            schedules.delete()
            return None
        keep = schedules.first()
        if keep is not None:
            schedules.exclude(pk=keep.pk).delete()
        schedule, _ = Schedule.objects.using(using).update_or_create(
            name=SCHEDULE_NAME,
            defaults={
                "func": FOLD_TASK,
                "schedule_type": Schedule.MINUTES,
                "minutes": minutes,
                "repeats": -1,
                "cluster": conf.messaging_cluster(),
                "args": None,
                "kwargs": None,
                "hook": None,
            },
        )
    return schedule
