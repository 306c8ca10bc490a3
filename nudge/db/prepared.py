"""Server-side prepared statements for the fixed statements of a single event (PostgreSQL).

A single event's statements are long (data-modifying CTEs, a locking UPDATE over a table with
many indexes), and PostgreSQL spends more time parsing and planning them than running them:
for a payment, 0.74 to 1.04 ms of planning against 0.31 to 0.43 ms of execution (four runs,
pg_stat_statements). So a connection prepares each of them once (`PREPARE`) and then sends
only `EXECUTE name(values)`.

Prepared statements live in the server session. A pooler in transaction mode (PgBouncer,
pgcat) gives each transaction whichever server connection is free, where a statement prepared
through another one is unknown: set NUDGE_DB_PREPARED_STATEMENTS=false behind one. If they
are on there anyway, the first failure turns them off for the process (logged once) and
`event_ingest` stores the event again without them: nothing is lost.

Statements run prepared only inside `within()` (event_ingest, which can retry); anywhere else
`Statement.execute` runs the same text unprepared.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection

logger = logging.getLogger(__name__)

# SQLSTATEs of a pooler handing over another server session: the statement is unknown there
# (invalid_sql_statement_name), or another client prepared the same name (duplicate_prepared_
# statement).
_POOLED_SESSION = {"26000", "42P05"}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")

_scope: ContextVar[bool] = ContextVar("nudge_prepared_scope", default=False)
_broken = False  # set once a pooler has been detected in this process


class Unavailable(DatabaseError):
    """A prepared statement failed because the server session changed under it; prepared
    statements are now off in this process, and the transaction must be run again."""


def usable() -> bool:
    """On PostgreSQL, unless turned off; and not with CONN_MAX_AGE=0, where every request
    has a new session and would prepare (a round trip more) what it runs once."""
    return (
        connection.vendor == "postgresql"
        and bool(settings.NUDGE_DB_PREPARED_STATEMENTS)
        and connection.settings_dict.get("CONN_MAX_AGE") != 0
        and not _broken
    )


@contextmanager
def within() -> Iterator[None]:
    """Statements executed inside run prepared (if usable())."""
    token = _scope.set(True)
    try:
        yield
    finally:
        _scope.reset(token)


class Statement:
    """One fixed statement, with `%(name)s` or `%s` placeholders as for cursor.execute, and
    the PostgreSQL type of each parameter: {name: type} for named ones, [type, ...] in order
    for positional ones."""

    def __init__(self, name: str, sql: str, types: Mapping[str, str] | Sequence[str]) -> None:
        self.name, self.sql = name, sql
        self.names: list[str] = []  # named parameters, in $n order
        positional = 0

        def number(match: re.Match[str]) -> str:
            nonlocal positional
            if match.group(1) is None:
                positional += 1
                return f"${positional}"
            if match.group(1) not in self.names:
                self.names.append(match.group(1))
            return f"${self.names.index(match.group(1)) + 1}"

        body = _PLACEHOLDER.sub(number, sql).replace("%%", "%")
        if self.names and positional:
            raise ValueError(f"{name}: mixes named and positional parameters")
        if isinstance(types, Mapping):
            if set(types) != set(self.names):
                raise ValueError(f"{name}: types for {sorted(types)}, parameters {self.names}")
            ordered = [types[n] for n in self.names]
        elif len(types) == positional:
            ordered = list(types)
        else:
            raise ValueError(f"{name}: {positional} parameters, {len(types)} types")
        count = len(ordered)
        self.prepare_sql = f"PREPARE {name} ({', '.join(ordered)}) AS {body}"
        self.execute_sql = f"EXECUTE {name} ({', '.join(['%s'] * count)})"

    def execute(self, cursor: Any, params: Sequence[Any] | Mapping[str, Any]) -> None:
        """cursor.execute(sql, params), through the connection's prepared statement when
        inside within() and usable()."""
        if not (_scope.get() and usable()):
            cursor.execute(self.sql, params)
            return
        values = [params[n] for n in self.names] if isinstance(params, Mapping) else params
        in_session = _prepared_names()
        try:
            if self.name not in in_session:
                cursor.execute(self.prepare_sql)
                in_session.add(self.name)
            cursor.execute(self.execute_sql, values)
        except DatabaseError as exc:
            if getattr(exc.__cause__, "pgcode", None) not in _POOLED_SESSION:
                raise
            _turn_off(exc)
            raise Unavailable(str(exc)) from exc


def _prepared_names() -> set[str]:
    """The names prepared in the current server session: Django opens a new one (a new
    DB-API connection) after CONN_MAX_AGE or an error, and it starts empty."""
    state: tuple[Any, set[str]] | None = getattr(connection, "_nudge_prepared", None)
    if state is None or state[0] is not connection.connection:
        state = (connection.connection, set())
        connection._nudge_prepared = state  # type: ignore[attr-defined]
    return state[1]


def _turn_off(exc: Exception) -> None:
    global _broken
    if not _broken:
        _broken = True
        logger.error(
            "prepared statements turned off in this process: the database session changed "
            "between transactions (%s). Behind a pooler in transaction mode, set "
            "NUDGE_DB_PREPARED_STATEMENTS=false.",
            exc,
        )
