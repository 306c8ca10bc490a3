"""The names journeys' SQL spells, taken from the models: table names from
`Model._meta.db_table`, status values from `ScheduledSend.Status`. A statement is written as a
template (`UPDATE {send} SET status = {cancelled}`) and formatted once, at import, by `sql()`:
its text stays fixed, as prepared statements and pg_stat_statements need, and a renamed table
or status reaches every statement (tests/journeys/test_sql_names.py checks that no SQL string
in journeys spells one itself)."""

from __future__ import annotations

from journeys.models import (
    Conversion,
    Enrollment,
    Journey,
    JourneyDayStat,
    JourneyStatDelta,
    JourneyStep,
    PooledCode,
    ScheduledSend,
)
from marketing.models import Cart, Customer, Event


def _literal(value: str) -> str:
    """A status value as an SQL string literal (the values are plain words)."""
    assert value.isidentifier(), value
    return f"'{value}'"


NAMES: dict[str, str] = {
    "send": ScheduledSend._meta.db_table,
    "enrollment": Enrollment._meta.db_table,
    "journey": Journey._meta.db_table,
    "step": JourneyStep._meta.db_table,
    "customer": Customer._meta.db_table,
    "cart": Cart._meta.db_table,
    "event": Event._meta.db_table,
    "pooled_code": PooledCode._meta.db_table,
    "conversion": Conversion._meta.db_table,
    "day_stat": JourneyDayStat._meta.db_table,
    "stat_delta": JourneyStatDelta._meta.db_table,
    # {pending}, {sending}, {sent}, {cancelled}, {skipped}, {failed}
    **{status.name.lower(): _literal(status.value) for status in ScheduledSend.Status},
    # the statuses of a send not decided yet (ScheduledSend.ACTIVE), as an IN list
    "active": ", ".join(_literal(status.value) for status in ScheduledSend.ACTIVE),
}


def sql(template: str) -> str:
    """`template` with the names above; `{{` and `}}` stay for a later `str.format`."""
    return template.format_map(NAMES)
