"""The model fields an event writes, described once from the models, and the bits of SQL every
statement builds from them.

A `Column` is one field: its model field name, where its value sits in the event (`key`, a
path inside the event's `user`, `cart` or `payment`), the database column, the PostgreSQL type
and the model's default. The statements in profiles.py and purchases.py (a single event's, a
batch's) and the ORM upserts beside them all iterate the same tuples of columns, so a field is
added by adding its model field and one `column(...)` line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Field, Model

# PostgreSQL type of each kind of model field an event writes (get_internal_type()).
_SQL_TYPES = {
    "CharField": "text",
    "TextField": "text",
    "BooleanField": "boolean",
    "DecimalField": "numeric",
    "JSONField": "jsonb",
    "DateTimeField": "timestamptz",
    "ForeignKey": "bigint",
}


@dataclass(frozen=True)
class Column:
    name: str  # the model field's name, also the statements' parameter name
    key: tuple[str, ...]  # the value's path in the event's object
    column: str  # quoted for SQL
    sql_type: str
    field: Field[Any, Any]

    @property
    def default(self) -> Any:
        """The model field's default (a new one each time: a list default is not shared)."""
        return self.field.get_default()

    @property
    def is_json(self) -> bool:
        return self.sql_type == "jsonb"

    @property
    def param_type(self) -> str:
        """The type the value is sent as: JSON as text, cast where it is used."""
        return "text" if self.is_json else self.sql_type

    def cast(self, expression: str) -> str:
        """`expression` as this column's type (PostgreSQL statements; JSON is sent as text)."""
        return f"{expression}::jsonb" if self.is_json else expression

    def given(self, section: dict[str, Any]) -> Any:
        """The event's value, None where the event leaves it out."""
        value = section.get(self.key[0])
        for part in self.key[1:]:  # on the webhook's hot path: most keys have one part
            value = value.get(part) if isinstance(value, dict) else None
        return value

    def stored(self, section: dict[str, Any]) -> Any:
        """The value to store: the event's, or the model's default; JSON as text."""
        value = self.given(section)
        if value is None:
            value = self.default
        return json.dumps(value) if self.is_json else value

    def place(self, section: dict[str, Any], value: Any) -> None:
        """Put a stored value where an event carries it (the inverse of `given`)."""
        for part in self.key[:-1]:
            section = section.setdefault(part, {})
        section[self.key[-1]] = str(value) if isinstance(value, Decimal) else value


def column(model: type[Model], name: str, *key: str) -> Column:
    """The model field `name`, carried in an event at `key` (by default, its own name)."""
    field = model._meta.get_field(name)
    assert isinstance(field, Field), f"{model.__name__}.{name} is not a concrete field"
    return Column(
        name=name,
        key=key or (name,),
        column=quote(field.column),
        sql_type=_SQL_TYPES[field.get_internal_type()],
        field=field,
    )


def table(model: type[Model]) -> str:
    """The model's table, quoted for SQL."""
    return quote(model._meta.db_table)


def quote(name: str) -> str:
    # A name that needs no quotes keeps none, so the statements read (and log) as written.
    if name.isidentifier() and name.islower():
        return name
    return connection.ops.quote_name(name)


def literal(value: Any) -> str:
    """A model default as an SQL literal, for the fixed statements' text."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, list | dict):
        value = json.dumps(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {value!r}")


def names(columns: tuple[Column, ...], template: str = "{}") -> str:
    """The columns' database names, each through `template`, comma-separated."""
    return ", ".join(template.format(c.column) for c in columns)
