"""The run's workload, decided before it starts (pure: no Django, no I/O): customers, each
with a scenario, their events, when each delivery of each event is posted, and what the
checker must then find.

Every customer registers; most start a checkout five seconds later. The journeys (see
chaos.run.JOURNEYS) send an SMS WELCOME_DELAY after the registration and another
CHECKOUT_DELAY after the checkout, and a payment exits both. The scenarios:

| scenario     | events                                             | the checker expects        |
| ------------ | -------------------------------------------------- | -------------------------- |
| nopay        | registration, checkout                             | both SMS delivered         |
| early_pay    | + a payment 10 s in, before either SMS is due       | nothing after the payment  |
| race         | + a payment near the checkout SMS's due moment      | either, never after paying |
| late_pay     | + a payment 80 s in, after both are due             | both, unless the payment   |
|              |                                                    | came first (then cancelled)|
| pay_first    | the payment posted 3 s before the registration it   | nothing after the payment  |
|              | follows (occurred_at in the right order)           |                            |
| optout       | the checkout carries consent.sms = false            | nothing after the opt-out  |

5% of the customers thus have their payment posted before their registration; 20% of the
events are delivered twice or more (the copies a few seconds later, some as
single requests, some in batches), and deliveries are shuffled within each second.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

WELCOME = "chaos-welcome"
CHECKOUT = "chaos-checkout"
WELCOME_DELAY = 20.0  # seconds after the registration
CHECKOUT_DELAY = 40.0  # seconds after the checkout (which is 5 s after the registration)

# scenario -> share of the customers
SCENARIOS: dict[str, float] = {
    "nopay": 0.48,
    "early_pay": 0.17,
    "race": 0.15,
    "late_pay": 0.05,
    "pay_first": 0.05,
    "optout": 0.10,
}
# events per customer of each scenario, for sizing the run from an event count
EVENTS_PER: dict[str, int] = {
    "nopay": 2,
    "early_pay": 3,
    "race": 3,
    "late_pay": 3,
    "pay_first": 2,
    "optout": 2,
}


@dataclass
class Customer:
    external_id: str
    scenario: str
    start: float  # seconds into the run of its registration
    must: set[str] = field(default_factory=set)  # journeys whose SMS must be delivered
    may: set[str] = field(default_factory=set)  # delivered, or cancelled by the payment
    # event ids whose first 2xx answer forbids any later delivery to this customer
    payment_event: str | None = None
    optout_event: str | None = None


@dataclass
class Delivery:
    at: float  # seconds into the run
    event_id: str
    single: bool  # posted alone to /api/events/ rather than in a batch
    copy: int  # 0: the first delivery; 1, 2: repeats


@dataclass
class Plan:
    customers: dict[str, Customer]
    events: dict[str, dict[str, Any]]  # event id -> payload, without occurred_at's epoch
    occurred: dict[str, float]  # event id -> seconds into the run it occurred
    deliveries: list[Delivery]
    customer_of: dict[str, str]  # event id -> customer external id

    def counts(self) -> dict[str, int]:
        scenarios: dict[str, int] = {}
        for customer in self.customers.values():
            scenarios[customer.scenario] = scenarios.get(customer.scenario, 0) + 1
        repeated = {d.event_id for d in self.deliveries if d.copy}
        return {
            "customers": len(self.customers),
            "events": len(self.events),
            "deliveries": len(self.deliveries),
            "repeated_events": len(repeated),
            "payments": sum(1 for e in self.events.values() if e["type"] == "payment_finished"),
            **{f"scenario_{k}": v for k, v in sorted(scenarios.items())},
        }


def customers_for(events: int) -> int:
    per_customer = sum(share * EVENTS_PER[name] for name, share in SCENARIOS.items())
    return max(len(SCENARIOS), round(events / per_customer))


def plan_make(*, events: int, window: float, run_id: str, seed: int = 0) -> Plan:
    """About `events` distinct events from customers registering evenly over the first
    `window` seconds minus the 80 s a customer's story takes (at least a fifth of it)."""
    rng = random.Random(seed)
    count = customers_for(events)
    names = list(SCENARIOS)
    weights = [SCENARIOS[name] for name in names]
    spread = max(window - 80.0, window / 5)
    plan = Plan(customers={}, events={}, occurred={}, deliveries=[], customer_of={})
    firsts: list[Delivery] = []
    for n in range(count):
        scenario = rng.choices(names, weights)[0] if n >= len(names) else names[n]
        user = f"{run_id}-u{n}"
        customer = Customer(external_id=user, scenario=scenario, start=rng.uniform(0, spread))
        plan.customers[user] = customer
        t0 = customer.start

        def add(kind: str, occurred: float, posted: float, user: str = user, **extra: Any) -> str:
            event_id = f"{user}-{kind}"
            plan.events[event_id] = _payload(event_id, kind, user, **extra)
            plan.occurred[event_id] = occurred
            plan.customer_of[event_id] = user
            firsts.append(Delivery(posted, event_id, single=rng.random() < 0.05, copy=0))
            return event_id

        if scenario == "pay_first":
            add("reg", t0, t0 + 3.0)
            customer.payment_event = add("pay", t0 + 10.0, t0, cart=False)
            continue
        add("reg", t0, t0)
        if scenario == "optout":
            customer.optout_event = add("co", t0 + 5.0, t0 + 5.0, sms_consent=False)
            continue
        add("co", t0 + 5.0, t0 + 5.0)
        if scenario == "nopay":
            customer.must = {WELCOME, CHECKOUT}
        elif scenario == "early_pay":
            customer.payment_event = add("pay", t0 + 10.0, t0 + 10.0)
        elif scenario == "race":
            moment = t0 + 5.0 + CHECKOUT_DELAY + rng.uniform(-3.0, 3.0)
            customer.payment_event = add("pay", moment, moment)
            customer.may = {WELCOME, CHECKOUT}
        elif scenario == "late_pay":
            customer.payment_event = add("pay", t0 + 80.0, t0 + 80.0)
            customer.may = {WELCOME, CHECKOUT}
    # 20% of the events again, once or twice, a little later: a shop's retries
    repeats: list[Delivery] = []
    for first in firsts:
        if rng.random() < 0.20:
            for copy in range(1, 2 if rng.random() < 0.8 else 3):
                at = first.at + rng.uniform(0.5, 15.0)
                repeats.append(Delivery(at, first.event_id, single=rng.random() < 0.3, copy=copy))
    deliveries = firsts + repeats
    # shuffled within each second: the order of one second's deliveries means nothing
    rng.shuffle(deliveries)
    deliveries.sort(key=lambda d: int(d.at))
    plan.deliveries = deliveries
    return plan


def _payload(
    event_id: str, kind: str, user: str, *, cart: bool = True, sms_consent: bool = True
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": event_id,
        "type": {"reg": "user_registered", "co": "checkout_started", "pay": "payment_finished"}[
            kind
        ],
        "user": {
            "id": user,
            "phone": "+14155550101",  # valid for phonenumbers; nothing dedupes by number
            "first_name": "Ana",
            "timezone": "Europe/Berlin",
        },
    }
    if kind == "reg" or not sms_consent:
        payload["user"]["consent"] = {"email": True, "sms": sms_consent}
    cart_id = f"{user}-cart"
    if kind == "co":
        payload["cart"] = {
            "id": cart_id,
            "total": "120.00",
            "currency": "EUR",
            "checkout_url": f"https://shop.example/checkout/{cart_id}",
            "items": [],
        }
    if kind == "pay":
        payload["payment"] = {"id": f"{user}-payment", "amount": "120.00", "currency": "EUR"}
        if cart:
            payload["payment"]["cart_id"] = cart_id
    return payload
