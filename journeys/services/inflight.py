"""Who waits for a provider call in flight: the per-customer advisory locks (PostgreSQL).

Dispatch keeps many provider calls in flight at once and holds no row lock across them.
Instead it holds, on its own database session, one advisory lock per customer whose message
is in flight (`pg_try_advisory_lock`, taken before the send is re-checked and released once
its outcome is committed). Whatever must not race a message out — a payment's cancellation,
a customer's opt-out — takes the same key shared for its transaction
(`pg_advisory_xact_lock_shared`) before it touches the customer's sends, and so:

- waits for that one call at most when the customer has a message in flight, and for
  nothing otherwise (a chunk being dispatched holds no lock of other customers);
- or, when it came first, makes dispatch's try-lock fail (the send is tried again moments
  later, and then sees the cancellation or the opt-out).

Dispatch only ever tries the lock and never waits for it, so no cycle of waits (deadlock)
can include it. A killed worker's session ends and its locks go with it. The key is the
customer's id in the two-int form, under a namespace of Nudge's own; two customers whose ids
agree modulo 2**31 - 1 share a key, which costs a wait, never a wrong answer.
"""

from __future__ import annotations

from django.db import connection

NAMESPACE = 20053  # 0x4E55, "NU": the first key of every lock here
# The second key: the customer id modulo 2**31 - 1, as the int advisory locks take.
_KEY = "20053, mod({column}, 2147483647)::int"


def wait_clause(column: str) -> str:
    """A shared transaction lock of the customer whose id is the SQL expression `column`,
    as a WHERE condition: the subquery keeps the (volatile) lock call from being optimised
    away, and it is evaluated before the row it filters is locked (LockRows sits above
    the scan). `column` is a column name of our own statements, never input."""
    lock = "pg_advisory_xact_lock_shared(" + _KEY.format(column=column) + ")"
    return "(SELECT count(*) FROM (SELECT " + lock + ") w) = 1"  # noqa: S608 (no input)


_AWAIT_SQL = (
    "SELECT count(pg_advisory_xact_lock_shared(20053, mod(c, 2147483647)::int)) "
    "FROM unnest(%s::bigint[]) AS c"
)
_TRY_SQL = (
    "SELECT pg_try_advisory_lock(20053, mod(c, 2147483647)::int) "
    "FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(c, n) ORDER BY n"
)
_UNLOCK_SQL = (
    "SELECT count(pg_advisory_unlock(20053, mod(c, 2147483647)::int)) "
    "FROM unnest(%s::bigint[]) AS c"
)


def customers_await_calls(customer_ids: list[int]) -> None:
    """Inside the caller's transaction: wait for the provider calls in flight to these
    customers, and keep any new one from starting until the transaction ends."""
    if connection.vendor != "postgresql" or not customer_ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(_AWAIT_SQL, [sorted(set(customer_ids))])


def customers_try_lock(customer_ids: list[int]) -> list[bool]:
    """Take this session's exclusive lock of each customer (one entry per id, repeats
    counted: unlock as many times); whether each was taken."""
    with connection.cursor() as cursor:
        cursor.execute(_TRY_SQL, [customer_ids])
        return [bool(taken) for (taken,) in cursor.fetchall()]


def customers_unlock(customer_ids: list[int]) -> None:
    if customer_ids:
        with connection.cursor() as cursor:
            cursor.execute(_UNLOCK_SQL, [customer_ids])
