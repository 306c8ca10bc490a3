"""A customer's profile: the fields an event's `user` sets, defined once (CUSTOMER_PROFILE and,
for `user.consent`, CUSTOMER_CONSENT), and the three bodies that write them, side by side: the
ORM upsert (admin, demo, the host's code), the single event's statement, and the batch's two
statements.

The rule, in every body: a field the event leaves out (None) is kept, and a new customer gets
the model's default for it; an event older than the profile's last update (profile_as_of, the
occurred_at that set it) changes none of its fields, since events can arrive out of order.
Consent has its own time per channel (`<channel>_consent_at`): the event's consent is
recorded as granted or revoked, with source "event:<event id>" and its occurred_at as the
time (the same state stated again keeps its source, and moves its time), unless the stored
consent is newer (a later event's, an operator's or the customer's
own word since) or the customer's own opt-out holds the channel (ConsentColumns.held_by: an
unsubscribe click, a STOP); so a late sign-up still records the consent it carries when a
newer event without consent came first. services.consent.consent_decide is that rule in
Python, `_consent_takes` in SQL. The row stays locked until the transaction commits,
which serialises everything that happens to one customer (enrolment, cancellation) across
processes. tests/marketing/test_profiles.py feeds the same cases to every body.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from marketing.models import ConsentState, Customer
from marketing.services.columns import Column, column, literal, table
from marketing.services.consent import (
    CONSENT_FIELDS,
    EVENT_SOURCE_PREFIX,
    OPT_OUT_FIELDS,
    consent_assign,
    consent_decide,
    consent_restate,
)

# The profile an event's `user` carries. A new field: its model field, a line here, and (for
# the ORM callers) a keyword of customer_upsert.
CUSTOMER_PROFILE = (
    column(Customer, "email"),
    column(Customer, "phone"),
    column(Customer, "first_name"),
    column(Customer, "timezone"),
)
CUSTOMER_TABLE = table(Customer)


class ConsentColumns:
    """One channel's consent as an event carries it (`user.consent.<key>`, a boolean; the
    statements' parameter `param`) and the columns it sets: state, source, time; and the
    opt-out column that holds it."""

    def __init__(self, channel: str, key: str) -> None:
        self.channel, self.key, self.param = channel, key, f"consent_{key}"
        state, source, at = CONSENT_FIELDS[channel]
        self.state: Column = column(Customer, state)
        self.source: Column = column(Customer, source)
        self.at: Column = column(Customer, at)
        self.held_by: Column = column(Customer, OPT_OUT_FIELDS[channel][0])

    @property
    def columns(self) -> tuple[Column, Column, Column]:
        return self.state, self.source, self.at


CUSTOMER_CONSENT = (ConsentColumns("email", "email"), ConsentColumns("sms", "sms"))
_CONSENT_COLUMNS = ", ".join(col.column for c in CUSTOMER_CONSENT for col in c.columns)
_GRANTED, _REVOKED, _UNKNOWN = (
    literal(str(ConsentState.GRANTED)),
    literal(str(ConsentState.REVOKED)),
    literal(str(ConsentState.UNKNOWN)),
)
_EVENT_PREFIX = literal(EVENT_SOURCE_PREFIX)


# (field, key, key inside it or None): Column.given, unrolled for the webhook's hot path.
_PROFILE_KEYS = [(c.name, c.key[0], c.key[1] if len(c.key) > 1 else None) for c in CUSTOMER_PROFILE]
assert all(len(c.key) <= 2 for c in CUSTOMER_PROFILE)


def customer_profile(user: dict[str, Any]) -> dict[str, Any]:
    """The statements' values for an event's `user`: its id, each profile field, None where
    the event leaves it out (the customer keeps it), then each channel's consent (a boolean,
    None when the event says nothing)."""
    profile = {"id": user["id"]}
    for name, key, inner in _PROFILE_KEYS:
        value = user.get(key)
        if inner is not None:
            value = value.get(inner) if isinstance(value, dict) else None
        profile[name] = value
    consent = user.get("consent")
    for c in CUSTOMER_CONSENT:
        profile[c.param] = consent.get(c.key) if isinstance(consent, dict) else None
    return profile


def _profile_set(column_name: str, value: str, row: str) -> str:
    """The SQL bodies' SET of one profile field: the event's value (NULL: the stored one)."""
    return f"{column_name} = COALESCE({value}, {row}.{column_name})"


def _consent_new(c: ConsentColumns, value: str, event_id: str, as_of: str) -> str:
    """A new customer's consent columns (state, source, time) from the event's value."""
    return (
        f"CASE WHEN {value} IS NULL THEN {_UNKNOWN} WHEN {value} THEN {_GRANTED} "
        f"ELSE {_REVOKED} END,\n       "
        f"CASE WHEN {value} IS NULL THEN '' ELSE {_EVENT_PREFIX} || {event_id} END,\n       "
        f"CASE WHEN {value} IS NULL THEN NULL ELSE {as_of} END"
    )


def _consent_takes(c: ConsentColumns, value: str, as_of: str, row: str) -> str:
    """consent_decide in SQL: the event says something, the customer's own opt-out does not
    hold the channel, and the stored consent is not newer."""
    at = f"{row}.{c.at.column}"
    return (
        f"({value} IS NOT NULL AND {row}.{c.held_by.column} IS NULL "
        f"AND ({at} IS NULL OR {at} <= {as_of}))"
    )


def _new_state(value: str) -> str:
    return f"CASE WHEN {value} THEN {_GRANTED} ELSE {_REVOKED} END"


def _consent_set(c: ConsentColumns, value: str, event_id: str, as_of: str, row: str) -> str:
    """The SQL bodies' SETs of one channel's consent (the stored one unless it takes; a
    statement of the state already stored keeps its source and moves its time)."""
    takes = _consent_takes(c, value, as_of, row)
    state, source, at = (col.column for col in c.columns)
    return (
        f"{state} = CASE WHEN {takes} THEN {_new_state(value)} ELSE {row}.{state} END,\n       "
        f"{source} = CASE WHEN {takes} AND {row}.{state} <> {_new_state(value)} "
        f"THEN {_EVENT_PREFIX} || {event_id} ELSE {row}.{source} END,\n       "
        f"{at} = CASE WHEN {takes} THEN {as_of} ELSE {row}.{at} END"
    )


def customer_upsert(
    *,
    external_id: str,
    as_of: datetime | None = None,
    email: str | None = None,
    phone: str | None = None,
    first_name: str | None = None,
    timezone_name: str | None = None,
    consent_email: bool | None = None,
    consent_sms: bool | None = None,
    consent_source: str | None = None,
) -> Customer:
    """Create or update a customer through the ORM (its post_save is the host's event), holding
    its row lock until the transaction commits. Fields left None are kept; data older than the
    last update (`as_of`) is ignored. Without `as_of` (an operator's edit) the fields are set.
    A consent given is recorded with `consent_source` (required with it: "demo", "import",
    "event:<id>"...) at `as_of` (else now), by services.consent's rule (consent_decide)."""
    values = {
        "email": email,
        "phone": phone,
        "first_name": first_name,
        "timezone": timezone_name,
    }
    consent = {
        c.channel: granted
        for c, granted in zip(CUSTOMER_CONSENT, (consent_email, consent_sms), strict=True)
        if granted is not None
    }
    if consent and not (consent_source or "").strip():
        raise ValueError("a consent needs its source (consent_source)")
    given = {c.name: values[c.name] for c in CUSTOMER_PROFILE if values[c.name] is not None}
    consent_at = as_of or timezone.now()
    with transaction.atomic():
        customer = Customer.objects.select_for_update().filter(external_id=external_id).first()
        if customer is None:
            customer = Customer(external_id=external_id, profile_as_of=as_of, **given)
            for channel, granted in consent.items():
                consent_assign(
                    customer, channel, granted=granted, source=str(consent_source), at=consent_at
                )
            try:
                with transaction.atomic():
                    customer.save(force_insert=True)
                    return customer
            except IntegrityError:  # created concurrently: wait for it and lock it
                customer = Customer.objects.select_for_update().get(external_id=external_id)
        changed = []
        if not (as_of and customer.profile_as_of and as_of < customer.profile_as_of):
            changed = [name for name, value in given.items() if getattr(customer, name) != value]
            for name in changed:
                setattr(customer, name, given[name])
            if as_of and customer.profile_as_of != as_of:
                customer.profile_as_of = as_of
                changed.append("profile_as_of")
        for channel, granted in consent.items():
            if consent_decide(customer, channel, consent_at):
                changed += consent_restate(
                    customer, channel, granted=granted, source=str(consent_source), at=consent_at
                )
        if changed:
            customer.save(update_fields=[*changed, "updated_at"])
        return customer


def _new_values(value: Callable[[str], str], event_id: str, as_of: str) -> str:
    """A new customer's profile values (the event's, else the model's defaults), then its
    consent columns: the INSERTs' list, for parameters named through `value`."""
    return ",\n       ".join(
        [
            *(f"COALESCE({value(c.name)}, {literal(c.default)})" for c in CUSTOMER_PROFILE),
            *(_consent_new(c, value(c.param), event_id, as_of) for c in CUSTOMER_CONSENT),
        ]
    )


def _profile_newer(as_of: str, row: str) -> str:
    """The event is no older than the stored profile (profile_as_of)."""
    return f"({row}.profile_as_of IS NULL OR {row}.profile_as_of <= {as_of})"


def _update_sets(value: Callable[[str], str], event_id: str, as_of: str, row: str) -> str:
    """The UPDATEs' SET list against the stored `row`: the profile's fields and time when the
    event is no older than the profile, each channel's consent when it takes (its own time)."""
    newer = _profile_newer(as_of, row)
    return ",\n       ".join(
        [
            *(
                f"{c.column} = CASE WHEN {newer} THEN COALESCE({value(c.name)}, {row}.{c.column})"
                f" ELSE {row}.{c.column} END"
                for c in CUSTOMER_PROFILE
            ),
            f"profile_as_of = CASE WHEN {newer} THEN {as_of} ELSE {row}.profile_as_of END",
            *(_consent_set(c, value(c.param), event_id, as_of, row) for c in CUSTOMER_CONSENT),
        ]
    )


def _update_where(value: Callable[[str], str], as_of: str, row: str) -> str:
    """Whether the event changes the stored `row` at all: a profile no newer than it, or a
    consent it may set."""
    return "\n    OR ".join(
        [
            _profile_newer(as_of, row),
            *(_consent_takes(c, value(c.param), as_of, row) for c in CUSTOMER_CONSENT),
        ]
    )


def _named(name: str) -> str:
    return f"%({name})s"


def _in_v(name: str) -> str:
    return f"v.{name}"


_INSERT_COLUMNS = f"{', '.join(c.column for c in CUSTOMER_PROFILE)}, {_CONSENT_COLUMNS}"

# The single event's upsert, in one statement (PostgreSQL and SQLite >= 3.35); it returns no
# row when the event changes nothing (its profile older than the stored one, and no consent
# it may set).
CUSTOMER_UPSERT_SQL = f"""
INSERT INTO {CUSTOMER_TABLE}
       (external_id, {_INSERT_COLUMNS}, profile_as_of, created_at, updated_at)
VALUES (%(id)s, {_new_values(_named, "%(event_id)s", "%(as_of)s")},
        %(as_of)s, %(now)s, %(now)s)
ON CONFLICT (external_id) DO UPDATE
   SET {_update_sets(_named, "%(event_id)s", "%(as_of)s", CUSTOMER_TABLE)},
       updated_at = excluded.updated_at
 WHERE {_update_where(_named, "%(as_of)s", CUSTOMER_TABLE)}
RETURNING id
"""  # noqa: S608 - the models' names only, no input
# The upsert's parameters and their PostgreSQL types (for a prepared statement).
CUSTOMER_UPSERT_TYPES = {
    "id": "text",
    **{c.name: c.param_type for c in CUSTOMER_PROFILE},
    **{c.param: "boolean" for c in CUSTOMER_CONSENT},
    "event_id": "text",
    "as_of": "timestamptz",
    "now": "timestamptz",
}
_CUSTOMER_ID_SQL = f"SELECT id FROM {CUSTOMER_TABLE} WHERE external_id = %s"  # noqa: S608


def customer_store(*, user: dict[str, Any], as_of: datetime, event_id: str) -> int:
    """Insert or update an event's customer and return its id (CUSTOMER_UPSERT_SQL);
    `event_id` is the event's id, its consent's source."""
    params = {
        **customer_profile(user),
        "event_id": event_id,
        "as_of": connection.ops.adapt_datetimefield_value(as_of),
        "now": connection.ops.adapt_datetimefield_value(timezone.now()),
    }
    with connection.cursor() as cursor:
        cursor.execute(CUSTOMER_UPSERT_SQL, params)
        row = cursor.fetchone()
        if row is None:  # the stored profile is newer than this event: it stays
            cursor.execute(_CUSTOMER_ID_SQL, [user["id"]])
            row = cursor.fetchone()
    return int(row[0])


# A batch's profiles (PostgreSQL), one row per customer: its id, the profile fields (NULL =
# not given), each channel's consent (NULL = not given), the event's id and occurred_at.
_PROFILES = f"""unnest(%s::text[], {", ".join(f"%s::{c.param_type}[]" for c in CUSTOMER_PROFILE)},
              {", ".join("%s::boolean[]" for _ in CUSTOMER_CONSENT)}, %s::text[], %s::timestamptz[])
       AS v(id, {", ".join(c.name for c in CUSTOMER_PROFILE)},
            {", ".join(c.param for c in CUSTOMER_CONSENT)}, event_id, as_of)"""
# A batch's customers in two steps, so that they are locked in primary-key order, the order
# appliers (marketing.services.applying) and every other path lock several customers in (the
# external id order this once used deadlocked with them whenever customers had arrived out of
# id order). First the new ones, inserted with the profile of their first event, in external
# id order: the only order two batches inserting one new id can agree on before it has a
# primary key. DO NOTHING takes no lock on a known customer (it waits only for a concurrent
# insert of the same id to end); it returns the inserted rows.
BATCH_CUSTOMERS_INSERT_SQL = f"""
INSERT INTO {CUSTOMER_TABLE}
       (external_id, {_INSERT_COLUMNS}, profile_as_of, created_at, updated_at)
SELECT v.id, {_new_values(_in_v, "v.event_id", "v.as_of")},
       v.as_of, %s, %s
  FROM {_PROFILES}
 ORDER BY v.id
ON CONFLICT (external_id) DO NOTHING
RETURNING external_id
"""  # noqa: S608 - the models' names only, no input
# Then all of them, new and known, locked in primary-key order (LockRows sits above the sort),
# to be updated next.
BATCH_CUSTOMERS_LOCK_SQL = f"""
SELECT external_id, id FROM {CUSTOMER_TABLE} WHERE external_id = ANY(%s::text[])
 ORDER BY id FOR UPDATE
"""  # noqa: S608 - the models' names only, no input
BATCH_CUSTOMERS_UPDATE_SQL = f"""
UPDATE {CUSTOMER_TABLE} c
   SET {_update_sets(_in_v, "v.event_id", "v.as_of", "c")},
       updated_at = %s
  FROM {_PROFILES}
 WHERE c.external_id = v.id AND ({_update_where(_in_v, "v.as_of", "c")})
"""  # noqa: S608 - the models' names only, no input


def customer_profiles_arrays(
    rows: list[tuple[dict[str, Any], datetime, str]],
) -> list[list[Any]]:
    """The batch statements' unnest() arrays for (user, occurred_at, event id) rows, in
    _PROFILES' order."""
    profiles = [customer_profile(user) for user, _, _ in rows]
    return [
        [profile["id"] for profile in profiles],
        *([profile[c.name] for profile in profiles] for c in CUSTOMER_PROFILE),
        *([profile[c.param] for profile in profiles] for c in CUSTOMER_CONSENT),
        [event_id for _, _, event_id in rows],
        [as_of for _, as_of, _ in rows],
    ]
