"""Model instances from the rows of a hand-written SELECT, exactly as the ORM loads them.

A hot path that writes its SELECT once (Django compiled the equivalent queryset anew for every
chunk of a dispatch, ~1.2 ms) still wants what a queryset gives: values converted as the ORM
converts them (SQLite's datetimes and booleans, JSON, decimals), instances that know their
database, and relations cached so that reading them queries nothing. That needs Django's
loading internals (`sql.Query`, the compiler's converters, `Model.from_db`, the related-object
cache), which are not a public API: they live here only, and tests/nudge/test_rows.py pins
what they give against a normal queryset, so that a Django upgrade that changes them fails
there and not silently in a hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Model
from django.db.models.sql import Query

# A model and the alias of its table in the SELECT ("s" in "FROM journeys_scheduledsend s").
Part = tuple[type[Model], str]


@cache
def _layout(parts: tuple[Part, ...], using: str) -> tuple[list[list[str]], list[Any], str]:
    """Each part's field names (attnames), the columns as the ORM's Cols, and the SELECT
    list they make, in the models' concrete field order (built once per process)."""
    quote = connections[using].ops.quote_name
    names, cols = [], []
    for model, alias in parts:
        fields = model._meta.concrete_fields
        names.append([f.attname for f in fields])
        cols += [f.get_col(alias) for f in fields]
    select = ", ".join(f"{col.alias}.{quote(col.target.column)}" for col in cols)
    return names, cols, select


def select_list(parts: Sequence[Part], *, using: str = DEFAULT_DB_ALIAS) -> str:
    """The SELECT list for `parts`: every concrete column of each model, qualified by its
    alias, in the order rows_as_instances() reads them."""
    return _layout(tuple(parts), using)[2]


def rows_as_instances(
    parts: Sequence[Part], rows: Iterable[Sequence[Any]], *, using: str = DEFAULT_DB_ALIAS
) -> list[list[Any]]:
    """For each row of a SELECT of select_list(parts), one instance per part (None for a
    part whose primary key is NULL: a LEFT JOIN that found nothing), with the values the ORM
    would have given them."""
    key = tuple(parts)
    names, cols, _ = _layout(key, using)
    connection = connections[using]
    compiler = connection.ops.compiler("SQLCompiler")(Query(key[0][0]), connection, using)
    values: Iterable[Sequence[Any]] = rows
    if converters := compiler.get_converters(cols):
        values = compiler.apply_converters(rows, converters)
    loaded = []
    for row in values:
        instances: list[Any] = []
        start = 0
        for (model, _), fields in zip(key, names, strict=True):
            part = row[start : start + len(fields)]
            start += len(fields)
            instances.append(None if part[0] is None else model.from_db(using, fields, part))
        loaded.append(instances)
    return loaded


@cache
def _relation(model: type[Model], name: str) -> Any:
    return model._meta.get_field(name)


def related_set(instance: Model, name: str, value: Model | None) -> None:
    """Make `instance.<name>` (a forward foreign key) return `value` without a query, as
    select_related() would: the related-object cache directly (the descriptor's checks cost
    more than the rest of a dispatch's per-send work)."""
    _relation(type(instance), name).set_cached_value(instance, value)
