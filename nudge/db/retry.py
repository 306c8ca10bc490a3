"""A transaction PostgreSQL aborted to break a deadlock, run again instead of failing.

Every path that locks several customers locks them in one order (primary key: see
marketing.services.batch and marketing.services.applying), so a deadlock between them should
not happen; one can still come from an order nobody controls (rows a concurrent transaction
committed between two statements, another table's locks). PostgreSQL then aborts one of the
transactions in the cycle (SQLSTATE 40P01) so that the others go on; the aborted one has
changed nothing and is safe to run again, after a short random pause (the others finish
meanwhile, and two victims do not meet again in step). A serialization failure (40001) is
the same kind of answer and is treated alike.

`atomic_retried` runs the work in `transaction.atomic()`: its own transaction, or a savepoint
of the caller's. Rolling back to the savepoint releases every lock taken after it, which is
what the other transactions wait for, so the caller's transaction carries on (the batch view
holds nothing before it).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import DatabaseError, connection, transaction

logger = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATEs after which running the whole transaction again is safe and expected to succeed
RETRYABLE = {"40P01": "deadlock", "40001": "serialization failure"}
ATTEMPTS = 5  # in all: the first one and up to four more
PAUSE_SECONDS = 0.05  # the first pause is at most this; each next one at most twice as long


def retryable_reason(exc: BaseException) -> str | None:
    """ "deadlock" or "serialization failure" when `exc` (Django's wrapper, or the driver's
    error itself) is PostgreSQL aborting the transaction for one; otherwise None."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "pgcode", None) or getattr(seen, "sqlstate", None)
        if code in RETRYABLE:
            return RETRYABLE[code]
        seen = seen.__cause__
    return None


def atomic_retried(work: Callable[[], T], *, what: str, attempts: int = ATTEMPTS) -> T:
    """`work()` inside `transaction.atomic()`, run again (up to `attempts` times in all, with
    a jittered, growing pause) when PostgreSQL aborts it for a deadlock or a serialization
    failure; any other error, or the last attempt's, propagates. `what` names the work in
    the log line each retry writes."""

    def atomically() -> T:
        with transaction.atomic():
            return work()

    return _retried(atomically, what=what, attempts=attempts)


def retried(work: Callable[[], T], *, what: str, attempts: int = ATTEMPTS) -> T:
    """`work()`, itself one transaction (an @transaction.atomic function), retried as
    atomic_retried does, when the caller is in no transaction; inside the caller's, `work()`
    runs once (its savepoint would not release what the caller locked before: the
    caller's own retry, if any, runs it all again). No savepoint of its own: for hot paths."""
    if connection.in_atomic_block:
        return work()
    return _retried(work, what=what, attempts=attempts)


def _retried(work: Callable[[], T], *, what: str, attempts: int) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except DatabaseError as exc:
            reason = retryable_reason(exc)
            if reason is None or attempt == attempts:
                raise
            pause = random.uniform(0, PAUSE_SECONDS * 2 ** (attempt - 1))
            logger.warning(
                "%s: %s, rolled back and retried (attempt %d of %d) in %.0f ms",
                what,
                reason,
                attempt + 1,
                attempts,
                pause * 1000,
            )
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover
