"""A payment racing a due send, on real PostgreSQL with real commits."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest
from django.db import connection, connections

from journeys import services
from journeys.channels import OutgoingMessage, get_channel
from journeys.models import ScheduledSend
from marketing.models import Event
from tests.journeys.conftest import ingest, make_event, minutes_ago
from tests.journeys.test_engine import make_journey

pytestmark = pytest.mark.django_db(transaction=True)
ROUNDS = 200


class WitnessChannel:
    """Records, at the instant of the provider call, whether the payment was committed,
    as seen from an independent connection."""

    dsn: str = ""
    calls: list[tuple[int, bool, float]] = []
    payment_event_id = ""

    def send(self, message: OutgoingMessage) -> str:
        called_at = time.monotonic()
        with psycopg2.connect(WitnessChannel.dsn) as witness, witness.cursor() as cursor:
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM marketing_event WHERE event_id = %s)",
                [WitnessChannel.payment_event_id],
            )
            committed = cursor.fetchone()[0]
        witness.close()
        WitnessChannel.calls.append((message.send_id, committed, called_at))
        return "witness"


def _dsn() -> str:
    params = connection.get_connection_params()
    return " ".join(
        f"{key}={params[key]}" for key in ("host", "port", "user", "dbname") if params.get(key)
    )


@pytest.fixture
def witness_channel(settings):
    settings.NUDGE_CHANNELS = {
        **settings.NUDGE_CHANNELS,
        "email": "tests.journeys.test_race.WitnessChannel",
    }
    get_channel.cache_clear()
    WitnessChannel.dsn = _dsn()
    WitnessChannel.calls = []
    yield WitnessChannel
    get_channel.cache_clear()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL")
def test_payment_racing_dispatch_never_leads_to_a_send_after_the_payment_committed(
    witness_channel,
):
    make_journey()
    outcomes = {"sent": 0, "cancelled": 0}
    for round_ in range(ROUNDS):
        user = f"racer_{round_}"
        ingest(
            make_event(
                f"co_{round_}",
                "checkout_started",
                user=user,
                at=minutes_ago(11),
                cart=f"c_{round_}",
            )
        )
        (send_id,) = services.scheduled_sends_claim_due(limit=10)
        payment = make_event(
            f"pay_{round_}", "payment_finished", user=user, at=minutes_ago(0.01),
            cart=f"c_{round_}", payment=f"p_{round_}",
        )  # fmt: skip
        witness_channel.payment_event_id = payment["id"]
        barrier = threading.Barrier(2)
        committed_at: list[float] = []
        errors: list[BaseException] = []

        def pay(barrier=barrier, payment=payment, committed_at=committed_at, errors=errors) -> None:
            try:
                barrier.wait()
                ingest(payment)
                committed_at.append(time.monotonic())
            except BaseException as exc:  # surfaced below
                errors.append(exc)
            finally:
                connections.close_all()

        def dispatch(barrier=barrier, send_id=send_id, errors=errors) -> None:
            try:
                barrier.wait()
                services.scheduled_send_dispatch(send_id=send_id)
            except BaseException as exc:
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=pay), threading.Thread(target=dispatch)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors

        send = ScheduledSend.objects.get(pk=send_id)
        assert send.status in {"sent", "cancelled"}, (round_, send.status, send.reason)
        outcomes[send.status] += 1
        calls = [c for c in witness_channel.calls if c[0] == send_id]
        if send.status == "sent":
            ((_, payment_was_committed, called_at),) = calls
            assert not payment_was_committed, f"round {round_}: sent after the payment committed"
            assert called_at < committed_at[0]
        else:
            assert calls == [], f"round {round_}: provider called for a cancelled send"
            assert send.reason == f"cancelled by payment p_{round_}"
        assert Event.objects.filter(event_id=payment["id"]).exists()

    assert sum(outcomes.values()) == ROUNDS
    print(f"race outcomes over {ROUNDS} rounds: {outcomes}")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL")
def test_a_payment_locks_the_sends_it_cancels_in_dispatch_order():
    """Dispatch locks its chunk in id order. A payment cancelling two sends of one customer
    must take them in the same order, not in the order its scan meets them: otherwise it
    could hold the second while a dispatch holds the first and waits for the second, a
    deadlock PostgreSQL breaks by killing one of them."""
    template = {"subject": "Hi", "body": "Again"}
    second_step = {"delay": "PT20M", "channel": "email", "template": template}
    make_journey()
    make_journey(slug="j2", steps=[second_step])
    ingest(make_event("co", "checkout_started", at=minutes_ago(1), cart="c_1"))
    first, second = ScheduledSend.objects.order_by("pk").values_list("pk", flat=True)
    # the first row must lie behind the second in the table, so that a scan by customer
    # meets the second first, as it does after any claim (a status change is never a HOT
    # update: status is in the indexes' predicates). Moving it by updates depended on the
    # free space earlier tests left in the table's pages (and failed now and then); CLUSTER
    # on an index by id descending rewrites the table in that order, whatever came before.
    customer_id = ScheduledSend.objects.get(pk=first).customer_id
    with connection.cursor() as cursor:
        cursor.execute("CREATE INDEX test_send_id_desc ON journeys_scheduledsend (id DESC)")
        cursor.execute("CLUSTER journeys_scheduledsend USING test_send_id_desc")
        cursor.execute("DROP INDEX test_send_id_desc")
        # in the table's order, which a scan of the table or of the customer's index
        # (equal keys are kept in table order) meets them in
        cursor.execute(
            "SELECT id FROM journeys_scheduledsend WHERE customer_id = %s "
            "AND status IN ('pending', 'sending') ORDER BY ctid",
            [customer_id],
        )
        scanned = [row[0] for row in cursor.fetchall()]
        assert scanned == [second, first]

    dispatcher = psycopg2.connect(_dsn())  # a dispatch chunk, locking in id order
    errors: list[BaseException] = []
    try:
        with dispatcher.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM journeys_scheduledsend WHERE id = %s FOR UPDATE", [first]
            )

            def pay() -> None:
                try:
                    ingest(make_event("pay", "payment_finished", at=minutes_ago(0),
                                      cart="c_1", payment="p_1"))  # fmt: skip
                except BaseException as exc:  # surfaced below
                    errors.append(exc)
                finally:
                    connections.close_all()

            payer = threading.Thread(target=pay)
            payer.start()
            deadline = time.monotonic() + 10
            while not _someone_waits_for_a_row_lock():
                assert not errors, errors
                assert time.monotonic() < deadline, "the payment never waited for the send"
                time.sleep(0.05)
            # the payment waits for the first send and holds nothing of this chunk yet
            cursor.execute(
                "SELECT id FROM journeys_scheduledsend WHERE id = %s FOR UPDATE NOWAIT", [second]
            )
            cursor.execute(
                "UPDATE journeys_scheduledsend SET status = 'sent' WHERE id = ANY(%s)",
                [[first, second]],
            )
        dispatcher.commit()
        payer.join(timeout=30)
    finally:
        dispatcher.close()
    assert not errors, errors
    # sent before the payment committed: not cancelled afterwards
    assert set(ScheduledSend.objects.values_list("status", flat=True)) == {"sent"}
    assert Event.objects.filter(event_id="pay").exists()


def _someone_waits_for_a_row_lock() -> bool:
    # on this thread's own connection, outside any transaction: pg_stat_activity is a
    # snapshot taken once per transaction
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database())"
        )
        return bool(cursor.fetchone()[0])


class SlowChannel:
    """A provider that takes CALL_SECONDS per call, counting the calls in flight."""

    CALL_SECONDS = 0.6
    lock = threading.Lock()
    in_flight = 0
    most_in_flight = 0
    returned_at: dict[int, float] = {}
    started: list[int] = []

    def send(self, message: OutgoingMessage) -> str:
        cls = SlowChannel
        with cls.lock:
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
            cls.started.append(message.send_id)
        time.sleep(cls.CALL_SECONDS)
        with cls.lock:
            cls.in_flight -= 1
            cls.returned_at[message.send_id] = time.monotonic()
        return f"slow-{message.send_id}"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="advisory locks need PostgreSQL")
def test_calls_run_in_flight_together_and_a_payment_waits_for_its_own_call_only(settings):
    """Eight sends to eight customers are called at once. A payment of a customer with no
    call in flight commits at once; a payment of a customer whose call is in flight waits for
    that one call (not for the others), and the message it could not stop left before it."""
    slow = "tests.journeys.test_race.SlowChannel"
    settings.NUDGE_CHANNELS = {**settings.NUDGE_CHANNELS, "email": slow}
    settings.NUDGE_DISPATCH_INFLIGHT = 8
    get_channel.cache_clear()
    SlowChannel.in_flight = SlowChannel.most_in_flight = 0
    SlowChannel.returned_at, SlowChannel.started = {}, []
    make_journey()
    for n in range(9):
        ingest(make_event(f"co_{n}", "checkout_started", user=f"u_{n}", at=minutes_ago(11),
                          cart=f"c_{n}"))  # fmt: skip
    ids = list(ScheduledSend.objects.order_by("pk").values_list("pk", flat=True))
    ScheduledSend.objects.filter(pk=ids[8]).update(due_at=minutes_ago(-60))  # not due
    claimed = services.scheduled_sends_claim_due(limit=10)
    assert claimed == ids[:8]
    outcome: dict[int, str] = {}
    errors: list[BaseException] = []

    def dispatch() -> None:
        try:
            outcome.update(services.scheduled_sends_dispatch(send_ids=claimed))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    started = time.monotonic()
    dispatcher = threading.Thread(target=dispatch)
    dispatcher.start()
    try:
        while len(SlowChannel.started) < 8:
            assert not errors, errors
            assert time.monotonic() - started < 10, "the calls never got in flight together"
            time.sleep(0.01)

        def pay(n: int) -> float:
            ingest(make_event(f"pay_{n}", "payment_finished", user=f"u_{n}",
                              at=minutes_ago(0), cart=f"c_{n}", payment=f"p_{n}"))  # fmt: skip
            return time.monotonic()

        asked = time.monotonic()
        free_paid = pay(8)  # nothing of u_8 in flight
        assert free_paid - asked < SlowChannel.CALL_SECONDS / 3
        assert SlowChannel.started.count(ids[0]) == 1
        paid = pay(0)  # u_0's call is in flight: waits for it, and for nothing else
        returned = SlowChannel.returned_at[ids[0]]
        assert paid >= returned
        assert paid - started < 2 * SlowChannel.CALL_SECONDS + 0.5
    finally:
        dispatcher.join(timeout=30)
        get_channel.cache_clear()
    assert not errors, errors
    assert outcome == {pk: "sent" for pk in ids[:8]}
    assert SlowChannel.most_in_flight == 8
    assert time.monotonic() - started < 3 * SlowChannel.CALL_SECONDS + 1  # not 8 x 0.6 s
    assert ScheduledSend.objects.get(pk=ids[8]).status == "cancelled"
    assert ScheduledSend.objects.get(pk=ids[0]).status == "sent"  # it left before the payment
