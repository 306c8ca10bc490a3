"""The hot queries use their indexes at scale: EXPLAIN on a table of 20,000 sends.

Deterministic, not at the mercy of the planner's statistics: the fixture creates fixed data
and ANALYZEs every table these statements read (each is smaller than ANALYZE's sample of
30,000 rows, so the statistics are those of the whole table; a table left unanalyzed kept
whatever size an earlier test, or autovacuum, last recorded: that once gave "Seq Scan on
marketing_cart", then empty). The generic-plan test asks whether an index *can* serve each
read without the values, so it plans under enable_seqscan = off (see there)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from bench import data
from journeys.models import Enrollment, Journey, ScheduledSend
from journeys.services import claiming, dispatch, exits
from marketing import selectors as marketing_selectors
from marketing.models import Cart, Customer, Event, Payment
from marketing.services import applying as marketing_applying
from marketing.services import ingest as marketing_ingest
from marketing.validation import event_validate
from tests.webhook_client import event

SENDS, CUSTOMERS, EVENTS, CARTS = (
    model._meta.db_table for model in (ScheduledSend, Customer, Event, Cart)
)

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL plans"),
]

# a third of the customers registered, then a third of those paid; all applied but the last
# few, as on a live site
_EVENTS_SQL = """
INSERT INTO {events} (source, event_id, type, customer_id, occurred_at, received_at, payload,
                      body_sha256, applied_at, apply_attempts, apply_error)
SELECT 'webhook', 'ev' || id,
       CASE WHEN id % 9 = 0 THEN 'payment_finished' ELSE 'user_registered' END, id,
       now() - interval '1 day', now(), '{{}}', '-',
       CASE WHEN id > 19000 THEN NULL ELSE now() END, 0, ''
  FROM {customers} WHERE id % 3 = 0
"""
# and another third have a cart
_CARTS_SQL = """
INSERT INTO {carts} (external_id, customer_id, total, currency, checkout_url, items,
                     created_at, updated_at)
SELECT 'cart' || id, id, 10, 'EUR', '', '[]', now(), now() FROM {customers} WHERE id % 3 = 1
"""


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
        cursor.execute(_EVENTS_SQL.format(events=EVENTS, customers=CUSTOMERS))
        cursor.execute(_CARTS_SQL.format(carts=CARTS, customers=CUSTOMERS))
        for model in (ScheduledSend, Enrollment, Customer, Cart, Payment, Event):
            cursor.execute(f"ANALYZE {model._meta.db_table}")
    return journey


def test_the_claim_reads_the_pending_due_index(many_sends):
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT explain_claim")
        text = plan(claiming._CLAIM_SQL, [500])
        cursor.execute("ROLLBACK TO SAVEPOINT explain_claim")
    assert "send_pending_due" in text, text
    assert f"Seq Scan on {SENDS}" not in text, text


def test_the_event_claim_reads_the_unapplied_index(many_sends):
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT explain_claim")
        text = plan(marketing_applying._CLAIM_EVENTS_SQL, [5, timezone.now(), 500])
        cursor.execute("ROLLBACK TO SAVEPOINT explain_claim")
    assert "event_unapplied" in text, text
    assert f"Seq Scan on {EVENTS}" not in text, text


def test_cancelling_a_customers_sends_reads_the_active_customer_index(many_sends):
    customer_id = ScheduledSend.objects.filter(customer__external_id="future7").get().customer_id
    # a payment exiting one journey per customer and one per cart
    params = [[0, 0], [customer_id] * 2, [timezone.now()] * 2, ["cancelled by payment p"] * 2,
              [many_sends.pk] * 2, [False, True], ["c_1", "c_1"]]  # fmt: skip
    one = ["cancelled by payment p", customer_id, timezone.now(), [many_sends.pk], [], None]
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT explain_cancel")
        batch_plan = plan(exits._CANCEL_SQL, params)
        one_plan = plan(exits._CANCEL_ONE_SQL, one)
        cursor.execute("ROLLBACK TO SAVEPOINT explain_cancel")
    assert "send_active_customer" in batch_plan, batch_plan
    for text in (batch_plan, one_plan):  # by one of the two indexes on the customer
        assert "Index Cond: (customer_id = " in text, text
        assert f"Seq Scan on {SENDS}" not in text, text


def test_dispatch_locks_its_chunk_by_index(many_sends):
    ids = claiming.scheduled_sends_claim_due(limit=100)
    text = plan(*dispatch._sends_lock_query(ids))
    assert f"Seq Scan on {SENDS}" not in text, text


def test_exit_events_of_a_chunk_are_read_by_index(many_sends):
    customers = set(ScheduledSend.objects.values_list("customer_id", flat=True)[:100])
    sql, params = dispatch._exit_events_query(
        customer_ids=customers, types={"payment_finished"},
        since=timezone.now() - timedelta(hours=2),
    )  # fmt: skip
    text = plan(sql, params)
    assert f"Seq Scan on {EVENTS}" not in text, text


def test_prepared_statements_keep_their_indexes_in_a_generic_plan(many_sends):
    """After five executions PostgreSQL may run a prepared statement with a generic plan,
    made without the values: it must still be able to use the indexes (parameter types that
    match the indexed columns, no expression hiding a column from its index).

    Under enable_seqscan = off, because that is the question: with it on, whether a seq scan
    is cheaper for a small table (the fixture's carts) is the planner's call from the
    statistics, and a right one; what must never happen is a read that no index can serve,
    and only that still plans a Seq Scan with seq scans disabled."""
    customer_id = ScheduledSend.objects.filter(customer__external_id="future7").get().customer_id
    payload = event("explain-1", "payment_finished", user_id="future7")
    payload["payment"] = {"id": "p-x", "cart_id": "c-x", "amount": "1.00", "currency": "EUR"}
    data, errors = event_validate(payload)
    assert data is not None, errors
    event_values = marketing_ingest._event_at_once_params(
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
        cursor.execute("SET LOCAL enable_seqscan = off")
        for statement, values in (
            (
                marketing_ingest._EVENT_AT_ONCE,
                [event_values[n] for n in marketing_ingest._EVENT_AT_ONCE.names],
            ),
            (exits._CANCEL_ONE, cancel_values),
        ):
            # under another name: this session may have prepared the real one already
            name = f"explain_{statement.name}"
            cursor.execute(statement.prepare_sql.replace(statement.name, name, 1))
            plans[statement.name] = plan(
                statement.execute_sql.replace(statement.name, name, 1), values
            )
            cursor.execute(f"DEALLOCATE {name}")
        cursor.execute("ROLLBACK TO SAVEPOINT explain_prepared")

    for table in (SENDS, CUSTOMERS, EVENTS, CARTS):
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
    assert f"Seq Scan on {EVENTS}" not in text, text
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


def test_the_frequency_cap_count_reads_the_sent_and_active_indexes(many_sends):
    """A take's caps read its customers' sends by index: the sent ones on the partial index
    of sent rows, the active ones on the partial index of active rows (tens of thousands of
    other rows here, a thousand of them sent)."""
    from journeys.services import pacing

    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {SENDS} SET status = 'sent', sent_at = now() - interval '1 hour' "  # noqa: S608 (no input)
            f"WHERE id IN (SELECT id FROM {SENDS} ORDER BY id LIMIT 1000)"
        )
        cursor.execute(f"ANALYZE {SENDS}")
    customers = list(ScheduledSend.objects.values_list("customer_id", flat=True)[:100])
    params = {
        "customers": customers,
        "channels": ["email", "sms"],
        "since": timezone.now() - timedelta(days=7),
        "horizon": timezone.now() + timedelta(minutes=15),
        "taking": [0],
    }
    text = plan(pacing._CAPPED_SENDS_SQL, params)

    assert "send_sent_customer_channel" in text, text
    assert "send_active_customer" in text, text
    assert f"Seq Scan on {SENDS}" not in text, text
