"""The exit rule has one Python body and two SQL bodies (journeys.services.exits): every case
below goes through each of them, and they must agree with the table, and so with each other.

The bodies: `event_exits()` (which the enrolment plan and dispatch ask), the cancellation through
loaded sends (SQLite's path), and on PostgreSQL the single event's prepared statement and the
batch's statement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from journeys import selectors
from journeys.models import Enrollment, Journey, ScheduledSend
from journeys.services import exits
from marketing.models import Event
from nudge.db import prepared
from tests.factories import CartFactory, CustomerFactory
from tests.journeys.test_engine import make_journey

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status


@dataclass(frozen=True)
class Case:
    """A send (its journey's exit scope, its cart, its trigger) and an exit candidate (its
    type, when, what it is about, whose); `cancels`: whether the event exits the send."""

    name: str
    cancels: bool
    scope: str = "customer"
    send_cart: str | None = "c_1"
    send_status: str = Status.PENDING
    trigger_minutes_ago: int = 10
    event_type: str = "payment_finished"
    event_minutes_ago: int = 1
    event_cart: str | None = None  # the event's own cart
    payment_cart: str | None = "c_1"  # its payment's cart; None: a payment without one
    payment: bool = True
    same_customer: bool = True


CASES = [
    Case("a payment after the trigger", True),
    Case("a payment at the trigger's moment", True, event_minutes_ago=10),
    Case("a payment before the trigger", False, event_minutes_ago=20),
    Case("another customer's payment", False, same_customer=False),
    Case("an event of a type the journey does not exit on", False, event_type="checkout_started"),
    Case("a send in flight", True, send_status=Status.SENDING),
    Case("per customer: a payment about another cart", True, payment_cart="c_2"),
    Case("per cart: a payment about the send's cart", True, scope="cart"),
    Case("per cart: a payment about another cart", False, scope="cart", payment_cart="c_2"),
    Case("per cart: a payment about no cart", False, scope="cart", payment_cart=None),
    Case(
        "per cart: an event about the send's cart, no payment",
        True,
        scope="cart",
        payment=False,
        event_cart="c_1",
    ),
    Case(
        "per cart: an event about another cart, no payment",
        False,
        scope="cart",
        payment=False,
        event_cart="c_2",
    ),
    Case(
        "per cart: the send's cart, paid before the trigger",
        False,
        scope="cart",
        event_minutes_ago=20,
    ),
    Case(
        "per cart, a send with no cart: any payment",
        True,
        scope="cart",
        send_cart=None,
        payment_cart="c_2",
    ),
    Case(
        "per cart, a send with no cart: a payment about no cart",
        True,
        scope="cart",
        send_cart=None,
        payment_cart=None,
    ),
    # an event carrying both: the cart it is about is its payment's (exits.event_cart_id)
    Case(
        "per cart: both, the payment's cart is the send's",
        True,
        scope="cart",
        event_cart="c_2",
        payment_cart="c_1",
    ),
    Case(
        "per cart: both, only the event's own cart is the send's",
        False,
        scope="cart",
        event_cart="c_1",
        payment_cart="c_2",
    ),
]


def _payload(case: Case, event_id: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"id": event_id, "type": case.event_type}
    if case.event_cart:
        payload["cart"] = {"id": case.event_cart, "total": "1.00", "currency": "EUR"}
    if case.payment:
        payload["payment"] = {"id": "p_1", "cart_id": case.payment_cart, "amount": "1.00"}
    return payload


def _arrange(case: Case) -> tuple[ScheduledSend, Journey, Event, Event]:
    """The case's send and exit candidate, and a bystander's payment (a second exiting event,
    so that the batch statement runs)."""
    journey = make_journey(dedupe="every", exit_scope=case.scope)
    selectors.journeys_forget()
    now = timezone.now()
    customer, other, bystander = CustomerFactory.create_batch(3)
    carts = {c: CartFactory.create(external_id=c, customer=customer) for c in ("c_1", "c_2")}
    trigger_at = now - timedelta(minutes=case.trigger_minutes_ago)
    enrollment = Enrollment.objects.create(
        journey=journey,
        customer=customer,
        cart=carts.get(case.send_cart or ""),
        trigger_occurred_at=trigger_at,
        chain_started_at=trigger_at,
    )
    send = ScheduledSend.objects.create(
        enrollment=enrollment,
        journey=journey,
        step=journey.steps.get(),
        step_position=0,
        customer=customer,
        cart=enrollment.cart,
        channel="email",
        trigger_occurred_at=trigger_at,
        due_at=trigger_at + timedelta(minutes=30),
        dedupe_key=str(customer.pk),
        status=case.send_status,
    )
    event = Event.objects.create(
        source=Event.Source.WEBHOOK,
        event_id="exit",
        type=case.event_type,
        customer=customer if case.same_customer else other,
        occurred_at=now - timedelta(minutes=case.event_minutes_ago),
        payload=_payload(case, "exit"),
        body_sha256="-",
    )
    bystanders = Event.objects.create(
        source=Event.Source.WEBHOOK,
        event_id="bystander",
        type="payment_finished",
        customer=bystander,
        occurred_at=now,
        payload={"id": "bystander", "payment": {"id": "p_9", "cart_id": "c_9"}},
        body_sha256="-",
    )
    send = ScheduledSend.objects.select_related("cart").get(pk=send.pk)
    return send, journey, event, bystanders


def _python(send: ScheduledSend, journey: Journey, event: Event, _: Event) -> bool:
    return exits.event_exits_send(event, send, journey)


def _loaded_sends(send: ScheduledSend, journey: Journey, event: Event, _: Event) -> bool:
    return exits.scheduled_send_cancel_for_exit(event=event, journeys=[journey]) == 1


def _sql_one(send: ScheduledSend, journey: Journey, event: Event, _: Event) -> bool:
    with prepared.within():  # as event_ingest runs it: prepared, when usable
        exits.events_exits_apply(events=[event])
    return _cancelled(send, event)


def _sql_batch(send: ScheduledSend, journey: Journey, event: Event, bystander: Event) -> bool:
    exits.events_exits_apply(events=[event, bystander])
    return _cancelled(send, event)


def _cancelled(send: ScheduledSend, event: Event) -> bool:
    send.refresh_from_db()
    if send.status == Status.CANCELLED:
        assert send.reason == exits.exit_reason(event)
    return send.status == Status.CANCELLED


postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the SQL bodies are PostgreSQL's"
)
BODIES = [
    pytest.param(_python, id="python"),
    pytest.param(_loaded_sends, id="loaded-sends"),
    pytest.param(_sql_one, id="sql-one", marks=postgresql_only),
    pytest.param(_sql_batch, id="sql-batch", marks=postgresql_only),
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_body_of_the_exit_rule_decides_each_case_alike(case, body):
    assert body(*_arrange(case)) is case.cancels


def test_the_cart_an_event_is_about_is_its_payments_cart_first():
    def about(payload: dict[str, Any]) -> str | None:
        return exits.event_cart_id(Event(type="payment_finished", payload=payload))

    both = {"cart": {"id": "c_own"}, "payment": {"id": "p_1", "cart_id": "c_paid"}}
    assert about(both) == "c_paid"
    assert about({"cart": {"id": "c_own"}, "payment": {"id": "p_1"}}) == "c_own"
    assert about({"cart": {"id": "c_own"}}) == "c_own"
    assert about({"payment": {"id": "p_1", "cart_id": 42}}) == "42"
    assert about({"user": {"id": "u_1"}}) is None
    assert about([]) is None
