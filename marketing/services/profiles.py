"""A customer's profile: the fields an event's `user` sets, defined once (CUSTOMER_PROFILE), and
the three bodies that write them, side by side: the ORM upsert (admin, demo, the host's code),
the single event's statement, and the batch's two statements.

The rule, in every body: a field the event leaves out (None) is kept, and a new customer gets
the model's default for it; an event older than the profile's last update (profile_as_of, the
occurred_at that set it) changes nothing, since events can arrive out of order; a field the
customer's own opt-out holds (HELD_BY_OPT_OUT: email consent after an unsubscribe click) is
kept. The row stays locked until the transaction commits, which serialises everything that
happens to one customer (enrolment, cancellation) across processes.
tests/marketing/test_profiles.py feeds the same cases to every body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from marketing.models import Customer
from marketing.services.columns import column, literal, table

# The profile an event's `user` carries. A new field: its model field, a line here, and (for
# the ORM callers) a keyword of customer_upsert.
CUSTOMER_PROFILE = (
    column(Customer, "email"),
    column(Customer, "phone"),
    column(Customer, "first_name"),
    column(Customer, "timezone"),
    column(Customer, "consent_email", "consent", "email"),
    column(Customer, "consent_sms", "consent", "sms"),
)
CUSTOMER_TABLE = table(Customer)
# A profile field the customer's own opt-out holds (marketing.services.consent): while the
# opt-out's column is set, no event changes the field (an event's consent.email=true does
# not re-subscribe someone who clicked unsubscribe); only the customer's re-subscribe does.
HELD_BY_OPT_OUT = {"consent_email": "email_opted_out_at", "consent_sms": "sms_opted_out_at"}


# (field, key, key inside it or None): Column.given, unrolled for the webhook's hot path.
_PROFILE_KEYS = [(c.name, c.key[0], c.key[1] if len(c.key) > 1 else None) for c in CUSTOMER_PROFILE]
assert all(len(c.key) <= 2 for c in CUSTOMER_PROFILE)


def customer_profile(user: dict[str, Any]) -> dict[str, Any]:
    """The statements' values for an event's `user`: its id, then each profile field, None
    where the event leaves it out (the customer keeps it)."""
    profile = {"id": user["id"]}
    for name, key, inner in _PROFILE_KEYS:
        value = user.get(key)
        if inner is not None:
            value = value.get(inner) if isinstance(value, dict) else None
        profile[name] = value
    return profile


def _profile_set(name: str, column_name: str, value: str, row: str) -> str:
    """The SQL bodies' SET of one profile field: the event's value (NULL: the stored one),
    unless the customer's opt-out holds the field."""
    new = f"COALESCE({value}, {row}.{column_name})"
    held_by = HELD_BY_OPT_OUT.get(name)
    if held_by is None:
        return f"{column_name} = {new}"
    held = column(Customer, held_by).column
    return f"{column_name} = CASE WHEN {row}.{held} IS NULL THEN {new} ELSE {row}.{column_name} END"


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
) -> Customer:
    """Create or update a customer through the ORM (its post_save is the host's event), holding
    its row lock until the transaction commits. Fields left None are kept; data older than the
    last update (`as_of`) is ignored. Without `as_of` (an operator's edit) the fields are set."""
    values = {
        "email": email,
        "phone": phone,
        "first_name": first_name,
        "timezone": timezone_name,
        "consent_email": consent_email,
        "consent_sms": consent_sms,
    }
    given = {c.name: values[c.name] for c in CUSTOMER_PROFILE if values[c.name] is not None}
    with transaction.atomic():
        customer = Customer.objects.select_for_update().filter(external_id=external_id).first()
        if customer is None:
            try:
                with transaction.atomic():
                    return Customer.objects.create(
                        external_id=external_id, profile_as_of=as_of, **given
                    )
            except IntegrityError:  # created concurrently: wait for it and lock it
                customer = Customer.objects.select_for_update().get(external_id=external_id)
        if as_of and customer.profile_as_of and as_of < customer.profile_as_of:
            return customer
        held = {name for name, by in HELD_BY_OPT_OUT.items() if getattr(customer, by) is not None}
        changed = [
            name
            for name, value in given.items()
            if getattr(customer, name) != value and name not in held
        ]
        for name in changed:
            setattr(customer, name, given[name])
        if as_of and customer.profile_as_of != as_of:
            customer.profile_as_of = as_of
            changed.append("profile_as_of")
        if changed:
            customer.save(update_fields=[*changed, "updated_at"])
        return customer


# The single event's upsert, in one statement (PostgreSQL and SQLite >= 3.35); it returns no
# row when the stored profile is newer than the event.
CUSTOMER_UPSERT_SQL = f"""
INSERT INTO {CUSTOMER_TABLE}
       (external_id, {", ".join(c.column for c in CUSTOMER_PROFILE)},
        profile_as_of, created_at, updated_at)
VALUES (%(id)s, {", ".join(f"COALESCE(%({c.name})s, {literal(c.default)})" for c in CUSTOMER_PROFILE)},
        %(as_of)s, %(now)s, %(now)s)
ON CONFLICT (external_id) DO UPDATE
   SET {", ".join(_profile_set(c.name, c.column, f"%({c.name})s", CUSTOMER_TABLE) for c in CUSTOMER_PROFILE)},
       profile_as_of = excluded.profile_as_of, updated_at = excluded.updated_at
 WHERE {CUSTOMER_TABLE}.profile_as_of IS NULL
    OR {CUSTOMER_TABLE}.profile_as_of <= excluded.profile_as_of
RETURNING id
"""  # noqa: E501, S608 - the models' names only, no input
# The upsert's parameters and their PostgreSQL types (for a prepared statement).
CUSTOMER_UPSERT_TYPES = {
    "id": "text",
    **{c.name: c.param_type for c in CUSTOMER_PROFILE},
    "as_of": "timestamptz",
    "now": "timestamptz",
}
_CUSTOMER_ID_SQL = f"SELECT id FROM {CUSTOMER_TABLE} WHERE external_id = %s"  # noqa: S608


def customer_store(*, user: dict[str, Any], as_of: datetime) -> int:
    """Insert or update an event's customer and return its id (CUSTOMER_UPSERT_SQL)."""
    params = {
        **customer_profile(user),
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
# not given), the event's occurred_at.
_PROFILES = f"""unnest(%s::text[], {", ".join(f"%s::{c.param_type}[]" for c in CUSTOMER_PROFILE)},
              %s::timestamptz[])
       AS v(id, {", ".join(c.name for c in CUSTOMER_PROFILE)}, as_of)"""
# A batch's customers in two steps, so that they are locked in primary-key order, the order
# appliers (marketing.services.applying) and every other path lock several customers in (the
# external id order this once used deadlocked with them whenever customers had arrived out of
# id order). First the new ones, inserted with the profile of their first event, in external
# id order: the only order two batches inserting one new id can agree on before it has a
# primary key. DO NOTHING takes no lock on a known customer (it waits only for a concurrent
# insert of the same id to end); it returns the inserted rows.
BATCH_CUSTOMERS_INSERT_SQL = f"""
INSERT INTO {CUSTOMER_TABLE}
       (external_id, {", ".join(c.column for c in CUSTOMER_PROFILE)},
        profile_as_of, created_at, updated_at)
SELECT v.id, {", ".join(f"COALESCE(v.{c.name}, {literal(c.default)})" for c in CUSTOMER_PROFILE)},
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
   SET {", ".join(_profile_set(c.name, c.column, f"v.{c.name}", "c") for c in CUSTOMER_PROFILE)},
       profile_as_of = v.as_of, updated_at = %s
  FROM {_PROFILES}
 WHERE c.external_id = v.id AND (c.profile_as_of IS NULL OR c.profile_as_of <= v.as_of)
"""  # noqa: S608 - the models' names only, no input


def customer_profiles_arrays(rows: list[tuple[dict[str, Any], datetime]]) -> list[list[Any]]:
    """The batch statements' unnest() arrays for (user, occurred_at) rows, in _PROFILES' order."""
    profiles = [customer_profile(user) for user, _ in rows]
    return [
        [profile["id"] for profile in profiles],
        *([profile[c.name] for profile in profiles] for c in CUSTOMER_PROFILE),
        [as_of for _, as_of in rows],
    ]
