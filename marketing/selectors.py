"""Reads of marketing's tables that several callers share (the admin, journeys)."""

from __future__ import annotations

from django.db import connection

from marketing.models import Event
from marketing.services.columns import table

_EVENT_TABLE = table(Event)

# The event log's distinct types, one probe of the `event_type` index per type (a loose index
# scan): the smallest type, then the smallest one after it, and so on. `SELECT DISTINCT type`
# reads every event (175-210 ms at a million), and Django's `.distinct()` on Event also
# selected the model's ordering column (received_at), so it fetched one row per event.
# PostgreSQL and SQLite alike.
_EVENT_TYPES_SQL = f"""
WITH RECURSIVE seen(type) AS (
    SELECT min(type) FROM {_EVENT_TABLE}
    UNION ALL
    SELECT (SELECT min(e.type) FROM {_EVENT_TABLE} e WHERE e.type > seen.type)
      FROM seen
     WHERE seen.type IS NOT NULL
)
SELECT type FROM seen WHERE type IS NOT NULL
"""  # noqa: S608 - the model's table only, no input


def event_types_received() -> list[str]:
    """Every type in the event log, in order, in a few milliseconds however long the log is."""
    with connection.cursor() as cursor:
        cursor.execute(_EVENT_TYPES_SQL)
        return [row[0] for row in cursor.fetchall()]
