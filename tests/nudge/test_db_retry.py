"""nudge.db.retry: a transaction PostgreSQL aborts to break a real deadlock runs again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg2
import pytest
from django.db import IntegrityError, OperationalError, connection, transaction

from marketing.models import Customer
from nudge.db.retry import atomic_retried, retried, retryable_reason

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="deadlocks need PostgreSQL"),
]

_LOCK = "SELECT id FROM marketing_customer WHERE id = %s FOR UPDATE"


def _dsn() -> str:
    params = connection.get_connection_params()
    return " ".join(
        f"{key}={params[key]}" for key in ("host", "port", "user", "dbname") if params.get(key)
    )


def _waiting_for_a_lock(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


def _with_a_deadlock_first(run: Callable[[Callable[[], str]], str]) -> tuple[str, list[int]]:
    """`run(work)`, where work's first attempt locks customer 1 and then 2 while another
    session locks 2 and then 1: a real deadlock, of which work is the victim (the other
    session notices cycles only after 10 s). Returns run's result and the attempts made."""
    first = Customer.objects.create(external_id="u_1").pk
    second = Customer.objects.create(external_id="u_2").pk
    other = psycopg2.connect(_dsn())
    other.autocommit = False
    with other.cursor() as cursor:
        cursor.execute("SET deadlock_timeout = '10s'")
        cursor.execute("SELECT pg_backend_pid()")
        other_pid = cursor.fetchone()[0]
    errors: list[BaseException] = []
    attempts: list[int] = []

    def other_locks_second_then_first() -> None:
        try:
            with other.cursor() as cursor:
                cursor.execute(_LOCK, [second])
                cursor.execute(_LOCK, [first])  # waits for us, then gets it on our rollback
            other.commit()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=other_locks_second_then_first)

    @transaction.atomic
    def work() -> str:
        attempts.append(len(attempts) + 1)
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL deadlock_timeout = '20ms'")
            cursor.execute(_LOCK, [first])
            if len(attempts) == 1:
                thread.start()
                deadline = time.monotonic() + 10
                while not _waiting_for_a_lock(other_pid):
                    assert time.monotonic() < deadline, "the other never waited for us"
                    time.sleep(0.01)
            cursor.execute(_LOCK, [second])  # the first time: the cycle, and we are its victim
            Customer.objects.filter(pk=second).update(first_name=f"attempt {len(attempts)}")
        return "committed"

    try:
        return run(work), attempts
    finally:
        if thread.is_alive() or thread.ident is not None:
            thread.join(10)
        other.close()
        assert errors == []


def _in_a_transaction(work: Callable[[], str]) -> str:
    with transaction.atomic():  # as the batch view calls the batch (a savepoint inside)
        return atomic_retried(work, what="test work")


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(lambda work: atomic_retried(work, what="test work"), id="atomic_retried"),
        pytest.param(_in_a_transaction, id="atomic_retried inside the caller's transaction"),
        pytest.param(lambda work: retried(work, what="test work"), id="retried"),
    ],
)
def test_a_transaction_aborted_by_a_deadlock_runs_again_and_commits(caplog, run):
    with caplog.at_level(logging.WARNING, logger="nudge.db.retry"):
        result, attempts = _with_a_deadlock_first(run)
    assert result == "committed"
    assert attempts == [1, 2]
    assert Customer.objects.get(external_id="u_2").first_name == "attempt 2"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "nudge.db.retry"]
    assert line.startswith("test work: deadlock, rolled back and retried (attempt 2 of 5) in ")


def test_retried_inside_the_callers_transaction_leaves_the_retry_to_the_caller():
    def run(work: Callable[[], str]) -> str:
        with transaction.atomic():
            return retried(work, what="test work")

    with pytest.raises(OperationalError) as raised:
        _with_a_deadlock_first(run)
    assert retryable_reason(raised.value) == "deadlock"


def test_other_database_errors_are_not_retried():
    Customer.objects.create(external_id="u_1")
    attempts: list[int] = []

    def work() -> None:
        attempts.append(1)
        Customer.objects.create(external_id="u_1")

    with pytest.raises(IntegrityError):
        atomic_retried(work, what="test work")
    assert attempts == [1]
