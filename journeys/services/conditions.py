"""Conditions evaluated where the engine decides (journeys.conditions is the language):

- entry conditions in the apply path: `EntryConditions.load(triggers)` reads what a chunk's
  conditions need once for all its events (its customers, when the enrolment plan's caller
  did not load them already, and one query for the history conditions' events), then
  `refusal(journey, event)` decides in memory;
- step conditions at dispatch: `step_condition_refusals(sends)` reads the earlier steps'
  sends of a take's enrolments with one query (none when no step of the take has a
  condition on steps), and returns the reason of each send whose condition is false.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q

from journeys.conditions import (
    MISSING,
    PROPERTIES,
    Compiled,
    StepState,
    condition_compile,
    condition_words,
    entry_scope,
    step_scope,
)
from journeys.models import Journey, JourneyStep, ScheduledSend
from marketing.models import Cart, Customer, Event

# --- compiled once per loaded journey / step (selectors.journeys_all caches the instances) --


def journey_entry_condition(journey: Journey) -> Compiled:
    """The journey's compiled entry condition, kept on the instance."""
    compiled = journey.__dict__.get("_entry_condition")
    if compiled is None or compiled.raw is not journey.conditions:
        compiled = condition_compile(journey.conditions, scope=entry_scope())
        journey.__dict__["_entry_condition"] = compiled
    return compiled


def step_condition(step: JourneyStep, journey: Journey) -> Compiled:
    """The step's compiled condition, kept on the instance; `journey` (with its steps
    prefetched) tells which steps are earlier."""
    compiled = step.__dict__.get("_step_condition")
    if compiled is None or compiled.raw is not step.condition:
        earlier = {s.position for s in journey.steps.all() if s.position < step.position}
        compiled = condition_compile(step.condition, scope=step_scope(earlier))
        step.__dict__["_step_condition"] = compiled
    return compiled


# --- what the facts are made of ---------------------------------------------------------------


def _customer_value(customer: Customer | None, name: str) -> Any:
    if customer is None:
        return MISSING
    attribute = name.removeprefix("customer.")
    if attribute == "id":
        return customer.external_id
    return getattr(customer, attribute, MISSING)


def _part(payload: Any, key: str) -> dict[str, Any]:
    part = payload.get(key) if isinstance(payload, dict) else None
    return part if isinstance(part, dict) else {}


def _event_value(event: Event, name: str) -> Any:
    """A field of the trigger event as it was sent (its payload: the cart and payment as of
    the event's occurred_at)."""
    if name == "event.type":
        return event.type
    if name == "event.id":
        return event.event_id
    payload = event.payload
    if name.startswith(PROPERTIES):
        value: Any = _part(payload, "properties")
        for key in name[len(PROPERTIES) :].split("."):
            if not isinstance(value, dict) or key not in value:
                return MISSING
            value = value[key]
        return value
    section, _, key = name.partition(".")
    part = _part(payload, section)
    if key == "item_count":
        items = part.get("items")
        return len(items) if isinstance(items, list) else MISSING
    return part.get(key, MISSING)


def _cart_value(cart: Cart | None, name: str) -> Any:
    if cart is None:
        return MISSING
    key = name.removeprefix("cart.")
    if key == "id":
        return cart.external_id
    if key == "item_count":
        return len(cart.items) if isinstance(cart.items, list) else MISSING
    return getattr(cart, key, MISSING)


# --- entry conditions (the apply path) ----------------------------------------------------


@dataclass
class _EntryFacts:
    event: Event
    customer: Customer | None
    history: dict[tuple[int, str], list[datetime]]

    def value(self, name: str) -> Any:
        if name.startswith("customer."):
            return _customer_value(self.customer, name)
        return _event_value(self.event, name)

    def history_count(self, event_type: str, within: timedelta) -> int:
        assert self.event.customer_id is not None
        times = self.history.get((self.event.customer_id, event_type), [])
        until = self.event.occurred_at
        return bisect_right(times, until) - bisect_left(times, until - within)

    def step_state(self, position: int) -> StepState | None:
        return None


@dataclass
class EntryConditions:
    """A chunk's entry conditions with what they read, loaded once."""

    customers: dict[int, Customer] = field(default_factory=dict)
    # (customer id, event type) -> occurred_at of the stored events, sorted
    history: dict[tuple[int, str], list[datetime]] = field(default_factory=dict)

    @classmethod
    def load(cls, triggers: list[tuple[Journey, Event]]) -> EntryConditions:
        """`triggers`: the (journey, event) pairs the chunk may enrol. No query when none of
        their journeys has a condition; else at most two: the customers not loaded on their
        events (services.applying loads them), and the history's events."""
        conditional = [(journey_entry_condition(j), e) for j, e in triggers]
        conditional = [(c, e) for c, e in conditional if not c.always]
        loaded = cls()
        if not conditional:
            return loaded
        wanted: set[int] = set()
        for compiled, event in conditional:
            if compiled.reads_customer and event.customer_id is not None:
                if Event.customer.is_cached(event):
                    if event.customer is not None:
                        loaded.customers[event.customer_id] = event.customer
                else:
                    wanted.add(event.customer_id)
        wanted -= set(loaded.customers)
        if wanted:
            loaded.customers.update(Customer.objects.in_bulk(wanted))
        needs = [(need, e) for c, e in conditional for need in c.history]
        if needs:
            # one range per type (the longest window it is asked over), on the
            # (customer, type, occurred_at) index
            since: dict[str, datetime] = {}
            for need, event in needs:
                start = event.occurred_at - need.within
                since[need.event_type] = min(since.get(need.event_type, start), start)
            ranges = Q()
            for event_type, start in since.items():
                ranges |= Q(type=event_type, occurred_at__gte=start)
            rows = Event.objects.filter(
                ranges,
                customer_id__in={e.customer_id for _, e in needs},
                occurred_at__lte=max(e.occurred_at for _, e in needs),
            ).values_list("customer_id", "type", "occurred_at")
            for customer_id, event_type, occurred_at in rows:
                loaded.history.setdefault((customer_id, event_type), []).append(occurred_at)
            for times in loaded.history.values():
                times.sort()
        return loaded

    def refusal(self, journey: Journey, event: Event) -> str:
        """ "" when the event's customer may enter `journey` by its conditions, else the note
        of the first part that is false ("condition cart.total >= 50 false (20.00)")."""
        compiled = journey_entry_condition(journey)
        if compiled.always:
            return ""
        customer = None
        if compiled.reads_customer and event.customer_id is not None:
            customer = self.customers.get(event.customer_id)
        facts = _EntryFacts(event=event, customer=customer, history=self.history)
        return compiled.failure(facts) or ""


# --- step conditions (dispatch) -------------------------------------------------------------


@dataclass
class _StepFacts:
    send: ScheduledSend
    states: dict[tuple[int, int], StepState]

    def value(self, name: str) -> Any:
        if name.startswith("customer."):
            return _customer_value(self.send.customer, name)
        return _cart_value(self.send.cart, name)

    def history_count(self, event_type: str, within: timedelta) -> int:
        raise AssertionError("step conditions have no history conditions (validated)")

    def step_state(self, position: int) -> StepState | None:
        return self.states.get((self.send.enrollment_id, position))


def step_condition_words(step: JourneyStep, journey: Journey) -> str:
    """The step's condition in words, naming the channel of the steps it refers to."""
    channels = {s.position: s.get_channel_display() for s in journey.steps.all()}
    return condition_words(step.condition, step_channels=channels)


def step_condition_refusals(sends: list[ScheduledSend]) -> dict[int, str]:
    """The reason ("condition: <in words> false") of each send whose step condition is
    false, by send id. One query for the earlier steps' sends of the take's enrolments, and
    only when a step of the take has a condition on steps."""
    conditional = [
        (send, compiled)
        for send in sends
        if send.step is not None
        and not (compiled := step_condition(send.step, send.journey)).always
    ]
    if not conditional:
        return {}
    states: dict[tuple[int, int], StepState] = {}
    enrollments = {send.enrollment_id for send, compiled in conditional if compiled.steps}
    if enrollments:
        positions = {p for _, compiled in conditional for p in compiled.steps}
        for enrollment_id, position, status, opened_at, clicked_at in ScheduledSend.objects.filter(
            enrollment_id__in=enrollments, step_position__in=positions
        ).values_list("enrollment_id", "step_position", "status", "opened_at", "clicked_at"):
            state = StepState(
                sent=status == ScheduledSend.Status.SENT,
                opened_at=opened_at,
                clicked_at=clicked_at,
            )
            previous = states.get((enrollment_id, position))
            if previous is None or _rank(state) > _rank(previous):
                states[(enrollment_id, position)] = state
    refusals: dict[int, str] = {}
    for send, compiled in conditional:
        if (why := compiled.failure(_StepFacts(send=send, states=states))) is not None:
            assert send.step is not None
            if compiled.invalid:
                refusals[send.pk] = why[:500]
            else:
                words = step_condition_words(send.step, send.journey)
                refusals[send.pk] = f"condition: {words} false"[:500]
    return refusals


def _rank(state: StepState) -> int:
    """Of two sends of one step of an enrolment (a re-driven one), the one that got further."""
    return (state.clicked_at is not None) * 4 + (state.opened_at is not None) * 2 + state.sent
