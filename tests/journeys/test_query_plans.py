"""The hot queries use their indexes at scale: EXPLAIN on a table of 20,000 sends."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from bench import data
from journeys import services
from journeys.models import Journey, ScheduledSend
from marketing import selectors as marketing_selectors
from marketing import services as marketing_services
from marketing.validation import event_validate
from tests.webhook_client import event

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL plans"),
]


def plan(sql: str, params: object = None) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.fixture
def many_sends(demo_journeys):
    journey = Journey.objects.get(slug="welcome-email")
    step = journey.steps.get()
    data.sends_create(prefix="future", count=20_000, journey_id=journey.pk, step_id=step.pk,
                      due=timezone.now() + timedelta(days=30))  # fmt: skip
    data.sends_create(prefix="due", count=200, journey_id=journey.pk, step_id=step.pk,
                      due=timezone.now() - timedelta(minutes=1))  # fmt: skip
    with connection.cursor() as cursor:
        # a third of the customers registered, then a third of those paid
        cursor.execute(
            "INSERT INTO marketing_event (source, event_id, type, customer_id, occurred_at, "
            "received_at, payload, body_sha256, applied_at, apply_attempts, apply_error) "
            "SELECT 'webhook', 'ev' || id, "
            "CASE WHEN id % 9 = 0 THEN 'payment_finished' ELSE 'user_registered' END, id, "
            "now() - interval '1 day', now(), '{}', '-', "
            # all applied but the last few, as on a live site
            "CASE WHEN id > 19000 THEN NULL ELSE now() END, 0, '' "
            "FROM marketing_customer WHERE id % 3 = 0"
        )
        for table in ("journeys_scheduledsend", "marketing_customer", "marketing_event"):
            cursor.execute(f"ANALYZE {table}")
    return journey


def test_the_claim_reads_the_pending_due_index(many_sends):
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT explain_claim")
        text = plan(services._CLAIM_SQL, [500])
        cursor.execute("ROLLBACK TO SAVEPOINT explain_claim")
    assert "send_pending_due" in text, text
    assert "Seq Scan on journeys_scheduledsend" not in text, text


def test_the_event_claim_reads_the_unapplied_index(many_sends):
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT explain_claim")
        text = plan(marketing_services._CLAIM_EVENTS_SQL, [5, timezone.now(), 500])
        cursor.execute("ROLLBACK TO SAVEPOINT explain_claim")
    assert "event_unapplied" in text, text
    assert "Seq Scan on marketing_event" not in text, text


def test_cancelling_a_customers_sends_reads_the_active_customer_index(many_sends):
    customer_id = ScheduledSend.objects.filter(customer__external_id="future7").get().customer_id
    # a payment exiting one journey per customer and one per cart
    params = [[0, 0], [customer_id] * 2, [timezone.now()] * 2, ["cancelled by payment p"] * 2,
              [many_sends.pk] * 2, [None, "c_1"]]  # fmt: skip
    one = ["cancelled by payment p", customer_id, timezone.now(), [many_sends.pk], [], None]
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT explain_cancel")
        batch_plan = plan(services._CANCEL_SQL, params)
        one_plan = plan(services._CANCEL_ONE_SQL, one)
        cursor.execute("ROLLBACK TO SAVEPOINT explain_cancel")
    assert "send_active_customer" in batch_plan, batch_plan
    for text in (batch_plan, one_plan):  # by one of the two indexes on the customer
        assert "Index Cond: (customer_id = " in text, text
        assert "Seq Scan on journeys_scheduledsend" not in text, text


def test_dispatch_locks_its_chunk_by_index(many_sends):
    ids = services.scheduled_sends_claim_due(limit=100)
    text = plan(*services._sends_lock_query(ids))
    assert "Seq Scan on journeys_scheduledsend" not in text, text


def test_exit_events_of_a_chunk_are_read_by_index(many_sends):
    customers = set(ScheduledSend.objects.values_list("customer_id", flat=True)[:100])
    sql, params = services._exit_events_query(
        customer_ids=customers, types={"payment_finished"},
        since=timezone.now() - timedelta(hours=2),
    )  # fmt: skip
    text = plan(sql, params)
    assert "Seq Scan on marketing_event" not in text, text


def test_prepared_statements_keep_their_indexes_in_a_generic_plan(many_sends):
    """After five executions PostgreSQL may run a prepared statement with a generic plan,
    made without the values: it must still use the indexes."""
    customer_id = ScheduledSend.objects.filter(customer__external_id="future7").get().customer_id
    payload = event("explain-1", "payment_finished", user_id="future7")
    payload["payment"] = {"id": "p-x", "cart_id": "c-x", "amount": "1.00", "currency": "EUR"}
    data, errors = event_validate(payload)
    assert data is not None, errors
    event_values = marketing_services._event_at_once_params(
        "webhook", data, payload, "-", timezone.now()
    )
    cancel_values = [
        "cancelled by payment p",
        customer_id,
        timezone.now(),
        [many_sends.pk],
        [],
        None,
    ]
    plans = {}
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT explain_prepared")
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        for statement, values in (
            (
                marketing_services._EVENT_AT_ONCE,
                [event_values[n] for n in marketing_services._EVENT_AT_ONCE.names],
            ),
            (services._CANCEL_ONE, cancel_values),
        ):
            # under another name: this session may have prepared the real one already
            name = f"explain_{statement.name}"
            cursor.execute(statement.prepare_sql.replace(statement.name, name, 1))
            plans[statement.name] = plan(
                statement.execute_sql.replace(statement.name, name, 1), values
            )
            cursor.execute(f"DEALLOCATE {name}")
        cursor.execute("ROLLBACK TO SAVEPOINT explain_prepared")

    for table in (
        "journeys_scheduledsend",
        "marketing_customer",
        "marketing_event",
        "marketing_cart",
    ):
        for text in plans.values():
            assert f"Seq Scan on {table}" not in text, text
    # the customer's sends by one of the two indexes on customer_id (the generic plan takes
    # the FK's; the custom one, above, the partial index of active sends)
    cancel = plans["nudge_cancel_one"]
    assert "send_active_customer" in cancel or "scheduledsend_customer_id" in cancel, cancel


def test_the_event_logs_types_are_read_by_the_type_index(many_sends):
    """The journey form, the importer and the event list's type filter read the log's types:
    by the type index,
    once per type, never by reading every event (~6,700 here)."""
    text = plan(marketing_selectors._EVENT_TYPES_SQL)

    assert "event_type" in text, text
    assert "Seq Scan on marketing_event" not in text, text
    assert marketing_selectors.event_types_received() == ["payment_finished", "user_registered"]


def test_no_write_pays_for_an_index_that_another_one_covers():
    """Every insert and every status change updates each index of the table: none may be a
    LIKE-only copy (unique=True on a CharField adds one) or a leading prefix of another."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT t.relname, i.relname, pg_get_indexdef(x.indexrelid),
                   x.indkey::int2[], x.indpred IS NOT NULL
              FROM pg_index x
              JOIN pg_class i ON i.oid = x.indexrelid
              JOIN pg_class t ON t.oid = x.indrelid
             WHERE t.relname ~ '^(marketing|journeys|media_tasks)_'
            """
        )
        indexes = cursor.fetchall()
    assert len(indexes) > 20
    like = [name for _, name, definition, _, _ in indexes if "pattern_ops" in definition]
    assert not like
    covered = [
        name
        for table, name, _, columns, partial in indexes
        if not partial
        for other_table, other, _, other_columns, other_partial in indexes
        if other_table == table and other != name and not other_partial
        and len(other_columns) > len(columns) and other_columns[: len(columns)] == columns
    ]  # fmt: skip
    assert not covered
