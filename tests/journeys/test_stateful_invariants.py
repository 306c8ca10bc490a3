"""A Hypothesis state machine against PostgreSQL: random sequences of registrations, checkouts,
payments, duplicate deliveries, reordered events, opt-outs, time passing and ticker ticks,
through the real services, with the chaos checker's invariants (chaos/checker.py) checked
after every step:

- nothing lost: a send that should go out (its trigger applied, due, no exit, no opt-out,
  within max lateness at the first tick after it fell due) went out, once;
- nothing duplicated: one message per send, and one send delivered at most per (journey
  step, customer, dedupe key);
- nothing sent to a customer whose exiting payment was stored before the send, nor to one
  who opted out before it, nor past max lateness, nor before it was due;
- one discount code per send, the one on its row;
- every unsent row has a reason; after a tick nothing due is left pending or in flight, and
  every stored event is applied; every event is stored once.

Events go in through marketing's ingest services (event_record, and events_ingest_batch for
batches: the set-based pass), the ticker's own tick() claims and enqueues (the test settings'
broker is the database), and the queued tasks run here, as a messaging worker runs them; the
provider at the edge is a channel that records every message it is given.

Time: claims compare with the database clock (`due_at <= now()`, claiming.py) and dispatch
with Python's, so no fake clock can move both. Time passing moves every stored timestamp of
the customers', events', sends' tables back instead (shift_timestamps): to the code, that is
the clock moving forward, for the database and Python alike. The model keeps virtual minutes;
the journeys' delays (15, 25 min) and time steps (multiples of 10 min) keep every due time
and lateness 5 minutes off any tick, so the seconds the test itself takes never decide.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from django.apps import apps
from django.db import connection, models, transaction
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.brokers import get_broker
from django_q.models import OrmQ
from django_q.signing import SignedPackage
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from journeys import ticker
from journeys.channels import OutgoingMessage, get_channel
from journeys.models import DiscountCodePool, FrequencyCap, Journey, JourneyStep, ScheduledSend
from marketing import services as marketing_services
from marketing.models import Customer, Event
from marketing.validation import event_validate
from nudge import conf
from tests.journeys.conftest import iso, make_journey
from tests.webhook_client import event

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the database clock of PostgreSQL"
    ),
]

MAX_LATENESS = 60  # minutes, both journeys
DELAY = {"welcome": 15, "checkout": 25}  # minutes after the trigger
TRIGGERED_BY = {"user_registered": "welcome", "checkout_started": "checkout"}
CODE = re.compile(r"\bcode ([A-Z0-9]{6,32})\b")  # as chaos.checker reads a message's code
BACK = st.sampled_from([0, 10, 20, 30, 90])  # minutes: > 0 is an event posted late
VIA = st.sampled_from(["single", "batch"])
WHO = st.integers(0, 10_000)  # a customer, modulo how many there are
FATES: Counter[str] = Counter()  # what the runs' triggers came to (printed at the end)


class RecordingChannel:
    """The provider: records every message it is given, with the model's tick."""

    provider = "recording"
    messages: ClassVar[list[tuple[int, int, int, str]]] = []  # (send, tick seq, minute, body)
    tick: ClassVar[tuple[int, int]] = (0, 0)  # (seq, minute) of the tick running
    fault: ClassVar[str] = ""  # the self-test's planted fault: "lose" or "duplicate"

    def send(self, message: OutgoingMessage) -> str:
        record = (message.send_id, *RecordingChannel.tick, message.body)
        if RecordingChannel.fault != "lose":
            RecordingChannel.messages.append(record)
        if RecordingChannel.fault == "duplicate":
            RecordingChannel.messages.append(record)
        return f"recording:{message.send_id}"


def _journeys_ensure() -> None:
    for slug, trigger, dedupe, reentry in (
        ("welcome", "user_registered", "first", "once"),
        ("checkout", "checkout_started", "every", "every"),
    ):
        make_journey(
            slug=slug,
            name=slug,
            trigger=trigger,
            exit_on=["payment_finished"],
            exit_scope="customer",
            dedupe=dedupe,
            reentry=reentry,
            max_lateness=f"PT{MAX_LATENESS}M",
            steps=[
                {
                    "delay": f"PT{DELAY[slug]}M",
                    "channel": "email",
                    "template": {
                        "subject": "Hello",
                        "body": "Hi {{ customer.first_name }}, code {{ discount.code }}",
                    },
                    "discount": {"percent_off": 10, "valid_for": "P1D"},
                }
            ],
        )


def _state_models() -> list[type[models.Model]]:
    """The tables a run writes: marketing's and journeys' but the configuration (journeys,
    their steps, and what steps and dispatch refer to: code pools, caps). A TRUNCATE of a
    pool's table would CASCADE to the steps that take codes from it."""
    return [
        model
        for model in apps.get_models()
        if model._meta.app_label in {"marketing", "journeys"}
        and model._meta.managed
        and not model._meta.proxy
        and model not in (Journey, JourneyStep, DiscountCodePool, FrequencyCap)
    ]


def tables_empty() -> None:
    tables = [model._meta.db_table for model in _state_models()] + [OrmQ._meta.db_table]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def shift_timestamps(minutes: int) -> None:
    """Time passes: every stored moment of the run's tables moves `minutes` into the past."""
    with connection.cursor() as cursor:
        for model in _state_models():
            columns = [
                f.column for f in model._meta.concrete_fields if isinstance(f, models.DateTimeField)
            ]
            if columns:
                moves = ", ".join(f"{c} = {c} - %(minutes)s * interval '1 minute'" for c in columns)
                cursor.execute(
                    f"UPDATE {model._meta.db_table} SET {moves}",  # noqa: S608 (names only)
                    {"minutes": minutes},
                )


def tasks_run() -> None:
    """What a messaging worker does with the queue, until it is empty (a dispatch task may
    enqueue what it had no time for). The queue's size is asked first: the database broker's
    dequeue sleeps when there is nothing to take."""
    broker = get_broker(conf.messaging_cluster())
    while broker.queue_size():
        for ack_id, package in broker.dequeue() or []:
            task = SignedPackage.loads(package)
            import_string(task["func"])(*task["args"])
            broker.acknowledge(ack_id)


@dataclass
class Trigger:
    event_id: str
    journey: str
    customer: str
    occurred: tuple[int, int]  # (virtual minute, posting seq): the order the code sees
    fate: str | None = None  # once the first tick after its due time has run

    @property
    def due(self) -> int:
        return self.occurred[0] + DELAY[self.journey]


@dataclass
class Person:
    external_id: str
    opted_out_seq: int | None = None
    payments: list[tuple[tuple[int, int], int]] = field(default_factory=list)  # occurred, seq
    carts: list[str] = field(default_factory=list)


class Nudge(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        tables_empty()
        RecordingChannel.messages = []
        self.minute = 0  # virtual time
        self.seq = 0  # every posting and tick, in order
        self.people: list[Person] = []
        self.triggers: dict[str, Trigger] = {}
        self.posted: dict[str, dict[str, Any]] = {}
        self.ticked = False  # the last step was a tick
        self.ids = 0

    # --- helpers ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _new_id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}_{self.ids:04d}"

    def _person(self, who: int) -> Person:
        return self.people[who % len(self.people)]

    def _payload(self, kind: str, person: Person, back: int, **extra: Any) -> dict[str, Any]:
        """A new event that occurred `back` minutes ago, in the model and as a payload."""
        event_id = self._new_id(kind[:3])
        seq = self._next_seq()
        occurred = (self.minute - back, seq)
        at = timezone.now() - timedelta(minutes=back)
        payload = event(event_id, kind, user_id=person.external_id, occurred_at=iso(at), **extra)
        # consent recorded with every event: under NUDGE_CONSENT_DEFAULT=deny a customer
        # whose consent is unknown gets no marketing, which is not what this model checks
        payload["user"]["consent"] = {"email": True, "sms": True}
        if journey := TRIGGERED_BY.get(kind):
            self.triggers[event_id] = Trigger(event_id, journey, person.external_id, occurred)
        if kind == "payment_finished":
            person.payments.append((occurred, seq))
        return payload

    def _post(self, payloads: list[dict[str, Any]], via: str) -> None:
        """Deliver payloads (repeats among them) and check each answer: new or a repeat."""
        new = []
        for payload in payloads:
            new.append(payload["id"] not in self.posted)
            self.posted.setdefault(payload["id"], payload)
        if via == "single" or len(payloads) == 1:
            created = [
                marketing_services.event_record(source=Event.Source.WEBHOOK, payload=p).created
                for p in payloads
            ]
        else:
            items = []
            for payload in payloads:
                data, errors = event_validate(payload)
                assert data is not None, errors
                items.append((data, payload))
            with transaction.atomic():
                outcomes = marketing_services.events_ingest_batch(
                    source=Event.Source.WEBHOOK, items=items
                )
            assert all(isinstance(o, marketing_services.IngestResult) for o in outcomes), outcomes
            created = [
                o.created for o in outcomes if isinstance(o, marketing_services.IngestResult)
            ]
        assert created == new, "a new event is created, a repeat finds it"
        self.ticked = False

    def _a_posted(self, which: int) -> dict[str, Any]:
        return list(self.posted.values())[which % len(self.posted)]

    # --- rules -----------------------------------------------------------------------------

    @rule(back=BACK, via=VIA, again=st.booleans())
    def register(self, back: int, via: str, again: bool) -> None:
        person = Person(f"u_{len(self.people):03d}")
        self.people.append(person)
        payload = self._payload("user_registered", person, back)
        self._post([payload, payload] if again else [payload], via)

    @precondition(lambda self: self.people)
    @rule(who=WHO, back=BACK, via=VIA)
    def checkout(self, who: int, back: int, via: str) -> None:
        person = self._person(who)
        cart = self._new_id(f"c_{person.external_id}")
        person.carts.append(cart)
        checkout = {"id": cart, "total": "50.00", "currency": "EUR", "items": []}
        self._post([self._payload("checkout_started", person, back, cart=checkout)], via)

    @precondition(lambda self: len(self.people) > 1)
    @rule(whos=st.lists(WHO, min_size=2, max_size=5), back=BACK)
    def checkouts_in_one_batch(self, whos: list[int], back: int) -> None:
        payloads = []
        for who in whos:
            person = self._person(who)
            cart = self._new_id(f"c_{person.external_id}")
            person.carts.append(cart)
            checkout = {"id": cart, "total": "50.00", "currency": "EUR", "items": []}
            payloads.append(self._payload("checkout_started", person, back, cart=checkout))
        self._post(payloads, "batch")

    @precondition(lambda self: self.people)
    @rule(who=WHO, back=BACK, via=VIA, of_a_cart=st.booleans())
    def pay(self, who: int, back: int, via: str, of_a_cart: bool) -> None:
        person = self._person(who)
        payment_id = self._new_id("p")
        cart_id = person.carts[-1] if of_a_cart and person.carts else None
        payment = {"id": payment_id, "cart_id": cart_id, "amount": "50.00", "currency": "EUR"}
        self._post([self._payload("payment_finished", person, back, payment=payment)], via)

    @precondition(lambda self: self.posted)
    @rule(which=WHO, via=VIA, with_a_new_one=st.booleans())
    def duplicate(self, which: int, via: str, with_a_new_one: bool) -> None:
        """The same event id, with the same body, again (alone or among new ones)."""
        payloads = [self._a_posted(which)]
        if with_a_new_one:
            person = Person(f"u_{len(self.people):03d}")
            self.people.append(person)
            payloads.append(self._payload("user_registered", person, 0))
        self._post(payloads, via)

    # (half of the customers at most: an opted-out customer's later triggers all end alike)
    @precondition(
        lambda self: sum(p.opted_out_seq is not None for p in self.people) * 2 < len(self.people)
    )
    @rule(who=WHO)
    def opt_out(self, who: int) -> None:
        person = self._person(who)
        customer = Customer.objects.get(external_id=person.external_id)
        marketing_services.customer_unsubscribe(customer_id=customer.pk)
        if person.opted_out_seq is None:
            person.opted_out_seq = self._next_seq()
        self.ticked = False

    @rule(minutes=st.sampled_from([10, 20, 10, 30, 90]))
    def time_passes(self, minutes: int) -> None:
        shift_timestamps(minutes)
        self.minute += minutes
        self.ticked = False

    @rule()
    def tick(self) -> None:
        """Two ticks (a ticker ticks every second): the first enqueues the events to apply,
        whose sends the second claims if due; the worker runs the tasks after each."""
        RecordingChannel.tick = (self._next_seq(), self.minute)
        for _ in range(2):
            ticker.tick()
            tasks_run()
        for trigger in self.triggers.values():
            if trigger.fate is None and trigger.due < self.minute:
                trigger.fate = self._fate(trigger)
                FATES[trigger.fate] += 1
        self.ticked = True

    def _fate(self, trigger: Trigger) -> str:
        """What the first tick after its due time does with a trigger's send."""
        person = next(p for p in self.people if p.external_id == trigger.customer)
        if any(occurred >= trigger.occurred for occurred, _ in person.payments):
            return "exited"  # a payment at or after the trigger, stored before this tick
        if person.opted_out_seq is not None:
            return "opted out"
        if self.minute - trigger.due > MAX_LATENESS:
            return "stale"
        return "sent"

    # --- the checker's invariants, after every step ----------------------------------------

    @invariant()
    def checker_invariants_hold(self) -> None:
        rows = {
            row["id"]: row
            for row in ScheduledSend.objects.values(
                "id",
                "status",
                "reason",
                "journey__slug",
                "step_position",
                "customer__external_id",
                "dedupe_key",
                "discount_code",
                "enrollment__trigger_event__event_id",
            )
        }
        people = {p.external_id: p for p in self.people}
        delivered: dict[int, list[tuple[int, int, str]]] = {}
        for send_id, tick_seq, minute, body in RecordingChannel.messages:
            delivered.setdefault(send_id, []).append((tick_seq, minute, body))
        promises: dict[tuple[str, int, str, str], list[int]] = {}
        for send_id, messages in delivered.items():
            assert send_id in rows, f"stray: send {send_id} delivered, no such row"
            row = rows[send_id]
            assert len(messages) == 1, f"duplicated: send {send_id} delivered {len(messages)}x"
            assert row["status"] == "sent", f"send {send_id} delivered, recorded {row['status']}"
            key = (
                row["journey__slug"],
                row["step_position"],
                row["customer__external_id"],
                row["dedupe_key"],
            )
            promises.setdefault(key, []).append(send_id)
            trigger = self.triggers[row["enrollment__trigger_event__event_id"]]
            person = people[trigger.customer]
            ((tick_seq, minute, body),) = messages
            assert not [
                occurred
                for occurred, seq in person.payments
                if seq < tick_seq and occurred >= trigger.occurred
            ], f"paid_before_send: send {send_id}"
            assert person.opted_out_seq is None or person.opted_out_seq > tick_seq, (
                f"opted_out: send {send_id} delivered after the opt-out"
            )
            assert minute - trigger.due <= MAX_LATENESS, f"past_max_lateness: send {send_id}"
            assert minute > trigger.due, f"early: send {send_id} delivered before due"
            codes = set(CODE.findall(body))
            assert row["discount_code"] and codes == {row["discount_code"]}, (
                f"second_codes: send {send_id} carries {codes}, its row {row['discount_code']}"
            )
        for key, send_ids in promises.items():
            assert len(send_ids) == 1, f"duplicated: {key} delivered by sends {send_ids}"
        by_trigger: dict[str, list[int]] = {}
        for send_id in delivered:
            event_id = rows[send_id]["enrollment__trigger_event__event_id"]
            by_trigger.setdefault(event_id, []).append(send_id)
        for trigger in self.triggers.values():
            got = len(by_trigger.get(trigger.event_id, []))
            if trigger.fate == "sent":
                assert got == 1, f"lost: {trigger} got {got} messages"
            else:
                assert got == 0, f"{trigger} got {got} messages"
        unsent = [
            row for row in rows.values() if row["status"] in {"cancelled", "skipped", "failed"}
        ]
        assert all(row["reason"] for row in unsent), "unsent_without_reason"
        stored = Counter(Event.objects.values_list("event_id", flat=True))
        assert stored == Counter(list(self.posted)), "every event stored once"
        if self.ticked:
            assert not [r for r in rows.values() if r["status"] == "sending"], "left in flight"
            due = ScheduledSend.objects.filter(status="pending", due_at__lte=timezone.now())
            assert not due.exists(), "a due send left pending after a tick"
            assert not Event.objects.filter(applied_at__isnull=True).exists(), "unapplied"


@pytest.fixture
def recording_channel(settings: Any) -> Any:
    settings.NUDGE_CHANNELS = {
        **settings.NUDGE_CHANNELS,
        "email": "tests.journeys.test_stateful_invariants.RecordingChannel",
    }
    get_channel.cache_clear()
    RecordingChannel.fault = ""
    yield RecordingChannel
    RecordingChannel.fault = ""
    get_channel.cache_clear()


def _run(*, examples: int, steps: int, shrink: bool = True) -> None:
    phases = list(Phase) if shrink else [Phase.generate]
    run_state_machine_as_test(
        Nudge,
        settings=settings(
            phases=phases,
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            derandomize=True,  # the same sequences on every run (CI)
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_random_event_sequences_keep_the_checkers_invariants(recording_channel):
    _journeys_ensure()
    FATES.clear()
    _run(examples=50, steps=50)
    print(f"triggers decided: {dict(FATES)}")
    assert {"sent", "exited", "opted out", "stale"} <= set(FATES), FATES  # all were reached


@pytest.mark.parametrize(("fault", "found"), [("lose", "lost"), ("duplicate", "duplicated")])
def test_the_invariants_catch_a_planted_loss_and_a_duplicate(recording_channel, fault, found):
    """The self-test: a provider that drops or doubles messages must fail the machine."""
    _journeys_ensure()
    recording_channel.fault = fault
    with pytest.raises(AssertionError, match=found):
        _run(examples=20, steps=30, shrink=False)
