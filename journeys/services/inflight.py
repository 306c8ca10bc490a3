"""Who waits for a provider call in flight: the per-customer advisory locks (PostgreSQL).

Dispatch keeps many provider calls in flight at once and holds no row lock across them.
Instead it holds, on its own database session, one advisory lock per customer whose message
is in flight (`pg_try_advisory_lock`, taken before the send is re-checked and released by
the statement that saves its outcome: a waiter that then reaches the send's row waits on that
UPDATE's row lock until it commits, and so always sees the outcome). Whatever must not race
a message out — a payment's cancellation, a customer's opt-out — takes the same key shared
for its transaction (`pg_advisory_xact_lock_shared`) before it touches the customer's sends, and so:

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


def lock_call(function: str, column: str) -> str:
    """`function(namespace, key)` for the customer id SQL expression `column`: the key is the
    id modulo 2**31 - 1, as the int advisory locks take. `column` is a column name of our
    own statements, never input."""
    return f"{function}({NAMESPACE}, mod({column}, 2147483647)::int)"


def wait_clause(column: str) -> str:
    """A shared transaction lock of the customer `column`, as a WHERE condition: the
    subquery keeps the (volatile) lock call from being optimised away, and it is evaluated
    before the row it filters is locked (LockRows sits above the scan)."""
    lock = lock_call("pg_advisory_xact_lock_shared", column)
    return f"(SELECT count(*) FROM (SELECT {lock}) w) = 1"  # noqa: S608 (no input)


_AWAIT_SQL = (
    f"SELECT count({lock_call('pg_advisory_xact_lock_shared', 'c')}) "  # noqa: S608 (no input)
    "FROM unnest(%s::bigint[]) AS c"
)
UNLOCK_SQL = (
    f"SELECT count({lock_call('pg_advisory_unlock', 'c')}) "  # noqa: S608 (no input)
    "FROM unnest(%s::bigint[]) AS c"
)


def customers_await_calls(customer_ids: list[int]) -> None:
    """Inside the caller's transaction: wait for the provider calls in flight to these
    customers, and keep any new one from starting until the transaction ends."""
    if connection.vendor != "postgresql" or not customer_ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(_AWAIT_SQL, [sorted(set(customer_ids))])


def customers_unlock(customer_ids: list[int]) -> None:
    """Release this session's customer locks, once per id (repeats counted)."""
    if customer_ids:
        with connection.cursor() as cursor:
            cursor.execute(UNLOCK_SQL, [customer_ids])
