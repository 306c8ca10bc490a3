"""A single event's statements run prepared on PostgreSQL (nudge.db.prepared): once per
connection, the same outcome as unprepared, and nothing lost behind a transaction pooler."""

from __future__ import annotations

import logging

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from journeys.models import ScheduledSend
from marketing.models import Event
from nudge.db import prepared
from tests.journeys.conftest import ingest, make_event, minutes_ago
from tests.webhook_client import SECRET, post_signed

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL sessions"),
]

NAMES = {"nudge_event_at_once", "nudge_cancel_one"}


def _forget_prepared() -> None:
    """Nothing prepared, in the server session and in this process's record of it."""
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    if hasattr(connection, "_nudge_prepared"):
        del connection._nudge_prepared


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch):
    """Each test starts as a new process would, and leaves the session as consistent for
    the next tests: nothing prepared, nothing turned off."""
    monkeypatch.setattr(prepared, "_broken", False)
    _forget_prepared()
    yield
    _forget_prepared()


def session_statements() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return {name for (name,) in cursor.fetchall()}


def registered(user: str) -> None:
    ingest(make_event(f"reg-{user}", "user_registered", user=user, at=minutes_ago(10)))


def payment(user: str) -> dict:
    return make_event(
        f"pay-{user}", "payment_finished", user=user, at=minutes_ago(1), payment=f"p-{user}"
    )


def prepared_calls(queries: CaptureQueriesContext) -> list[str]:
    """`PREPARE name` / `EXECUTE name` for each such statement sent, in order."""
    sent = [q["sql"] for q in queries]
    return [sql.split("(")[0].strip() for sql in sent if sql.startswith(("PREPARE", "EXECUTE"))]


def pay(user: str) -> list[str]:
    """A payment of `user`; the PREPAREs and EXECUTEs it sent."""
    with CaptureQueriesContext(connection) as queries:
        ingest(payment(user))
    return prepared_calls(queries)


def sends_of(user: str) -> set[tuple[str, str]]:
    return set(
        ScheduledSend.objects.filter(customer__external_id=user).values_list("status", "reason")
    )


def test_a_connection_prepares_each_statement_once_and_then_only_executes(demo_journeys):
    with CaptureQueriesContext(connection) as queries:
        registered("ana")
    assert prepared_calls(queries) == [
        "PREPARE nudge_event_at_once",
        "EXECUTE nudge_event_at_once",
    ]
    registered("bo")

    assert pay("ana") == [
        "EXECUTE nudge_event_at_once",
        "PREPARE nudge_cancel_one",
        "EXECUTE nudge_cancel_one",
    ]
    assert pay("bo") == ["EXECUTE nudge_event_at_once", "EXECUTE nudge_cancel_one"]
    assert session_statements() == NAMES
    for user in ("ana", "bo"):
        assert sends_of(user) == {("cancelled", f"cancelled by payment p-{user}")}


def test_turned_off_the_same_statements_run_as_text(demo_journeys, settings):
    settings.NUDGE_DB_PREPARED_STATEMENTS = False
    registered("ana")

    assert pay("ana") == []
    assert session_statements() == set()
    assert sends_of("ana") == {("cancelled", "cancelled by payment p-ana")}


def test_a_connection_per_request_prepares_nothing(demo_journeys, monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)
    registered("ana")

    assert pay("ana") == []
    assert session_statements() == set()


def test_a_pooler_handing_over_another_session_loses_nothing(
    demo_journeys, client, caplog, settings
):
    """Behind a pooler in transaction mode the next transaction may run in a server session
    where our statements were never prepared: the event is stored anyway, without them, and
    from then on the process does not prepare."""
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET]
    registered("ana")
    registered("bo")
    pay("ana")
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # what another server session looks like to us

    with (
        caplog.at_level(logging.ERROR, logger="nudge.db.prepared"),
        CaptureQueriesContext(connection) as queries,
    ):
        response = post_signed(client, "/api/events/", payment("bo"))

    assert response.status_code == 202, response.content
    assert Event.objects.filter(event_id="pay-bo").count() == 1
    assert sends_of("bo") == {("cancelled", "cancelled by payment p-bo")}
    assert "NUDGE_DB_PREPARED_STATEMENTS=false" in caplog.text
    sent = [q["sql"] for q in queries]
    failed = next(i for i, sql in enumerate(sent) if sql.startswith("EXECUTE"))
    assert sent[failed].startswith("EXECUTE nudge_event_at_once")
    assert not any(sql.startswith(("PREPARE", "EXECUTE")) for sql in sent[failed + 1 :])
    assert any(sql.lstrip().startswith("WITH upserted AS") for sql in sent[failed + 1 :])
    registered("cy")
    assert pay("cy") == []


def test_a_name_another_client_of_the_pooler_prepared_loses_nothing(demo_journeys):
    """The other way round: the server session has the name, this process has not prepared
    it (PREPARE fails as a duplicate)."""
    registered("ana")
    registered("bo")
    pay("ana")
    del connection._nudge_prepared  # type: ignore[attr-defined]

    assert pay("bo") == ["PREPARE nudge_event_at_once"]  # failed, then the plain statements
    assert sends_of("bo") == {("cancelled", "cancelled by payment p-bo")}
    assert prepared._broken


def test_a_repeat_rolls_back_and_keeps_the_statements(demo_journeys):
    """A repeated delivery rolls its transaction back; prepared statements outlive it."""
    registered("ana")
    paid = payment("ana")
    ingest(paid)
    with CaptureQueriesContext(connection) as queries:
        assert not ingest(paid).created

    assert "PREPARE" not in " ".join(q["sql"][:7] for q in queries)
    assert session_statements() == NAMES
    assert not prepared._broken


@pytest.mark.django_db(transaction=True)
def test_a_new_connection_prepares_again(demo_journeys):
    registered("ana")
    registered("bo")
    pay("ana")
    connection.close()  # CONN_MAX_AGE passed, or the database restarted

    assert pay("bo") == [
        "PREPARE nudge_event_at_once",
        "EXECUTE nudge_event_at_once",
        "PREPARE nudge_cancel_one",
        "EXECUTE nudge_cancel_one",
    ]
    assert sends_of("bo") == {("cancelled", "cancelled by payment p-bo")}


@pytest.mark.django_db(transaction=True)
def test_a_pooler_mid_way_loses_nothing_outside_any_other_transaction(demo_journeys):
    """As in production: event_ingest's transaction is the outermost one, rolled back whole
    and run again."""
    registered("ana")
    registered("bo")
    pay("ana")
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE nudge_cancel_one")  # fails on the second statement

    assert pay("bo") == ["EXECUTE nudge_event_at_once", "EXECUTE nudge_cancel_one"]
    assert sends_of("bo") == {("cancelled", "cancelled by payment p-bo")}
    assert Event.objects.filter(event_id="pay-bo").count() == 1
    assert prepared._broken
