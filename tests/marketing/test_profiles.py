"""Customers, carts and payments have one definition each (the columns in
marketing.services.profiles and .purchases) and several bodies that write them: the ORM
upserts, the single event's statements (one per table, or all at once on PostgreSQL) and the
batch's. The same cases go through every body, which must leave the same rows."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from marketing import services
from marketing.api.serializers import EventSerializer
from marketing.models import Cart, Customer, Event, Payment
from marketing.services import profiles, purchases

pytestmark = pytest.mark.django_db

BASE = timezone.now().replace(second=0, microsecond=0) - timedelta(days=1)
Events = list[dict[str, Any]]


def event(n: int, user: dict[str, Any], minutes: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"e_{n}",
        "type": "checkout_started" if "cart" in extra else "user_updated",
        "occurred_at": (BASE + timedelta(minutes=minutes)).isoformat(),
        "user": user,
        **extra,
    }


def paid(n: int, user: dict[str, Any], minutes: int, payment: dict[str, Any]) -> dict[str, Any]:
    return {**event(n, user, minutes), "type": "payment_finished", "payment": payment}


CART = {"id": "c_1", "total": "10.00", "currency": "EUR"}
FULL_USER = {
    "id": "u_1",
    "email": "ana@example.com",
    "phone": "+14155550101",
    "first_name": "Ana",
    "timezone": "Europe/Berlin",
    "consent": {"email": False, "sms": True},
}
CASES: dict[str, Events] = {
    "a new customer gets the model's defaults": [event(1, {"id": "u_1"}, 0)],
    "a full profile, then fields left out are kept": [
        event(1, FULL_USER, 0),
        event(2, {"id": "u_1", "first_name": "Anna", "consent": {"sms": False}}, 10),
    ],
    "an older event changes nothing, one as old changes the profile": [
        event(1, FULL_USER, 10),
        event(2, {"id": "u_1", "email": "old@example.com", "phone": ""}, 5),
        event(3, {"id": "u_1", "email": "same@example.com", "first_name": None}, 10),
    ],
    "a cart's latest state wins, its optional fields reset to the defaults": [
        event(1, {"id": "u_1"}, 0, cart={**CART, "checkout_url": "https://shop.example/c"}),
        event(2, {"id": "u_1"}, 5, cart={**CART, "items": [{"sku": "tea"}], "total": "12.50"}),
        event(3, {"id": "u_1"}, 1, cart={**CART, "currency": "USD"}),
    ],
    "a cart of another customer is refused, with the event's profile": [
        event(1, {"id": "u_1"}, 0, cart=CART),
        event(2, {"id": "u_2", "first_name": "Ben"}, 5, cart={**CART, "total": "99.00"}),
    ],
    "a payment is stored once, linked to its customer's cart only": [
        event(1, {"id": "u_1"}, 0, cart=CART),
        paid(
            2, {"id": "u_1"}, 1, {"id": "p_1", "cart_id": "c_1", "amount": "10", "currency": "EUR"}
        ),
        paid(3, {"id": "u_1"}, 2, {"id": "p_1", "amount": "99.00", "currency": "USD"}),
        paid(
            4, {"id": "u_2"}, 3, {"id": "p_2", "cart_id": "c_1", "amount": "1", "currency": "EUR"}
        ),
        paid(
            5,
            {"id": "u_2"},
            4,
            {"id": "p_3", "cart_id": "c_9", "amount": "1", "currency": "EUR", "discount_code": "X"},
        ),
    ],
}


def random_case(seed: int) -> Events:
    rng = random.Random(seed)
    events = []
    for n in range(12):
        user: dict[str, Any] = {"id": rng.choice(["u_1", "u_2"])}
        for field, values in {
            "email": ["a@example.com", "b@example.com", ""],
            "phone": ["+14155550101", None, ""],
            "first_name": ["Ana", "Ben", None, ""],
            "timezone": ["UTC", "Europe/Berlin"],
            "consent": [{"email": False}, {"sms": False, "email": True}, {}],
        }.items():
            if rng.random() < 0.5:
                user[field] = rng.choice(values)
        minutes = rng.randrange(0, 60, 5)
        roll = rng.random()
        if roll < 0.4:
            cart: dict[str, Any] = {
                "id": rng.choice(["c_1", "c_2"]),
                "total": rng.choice(["1.00", "2.50"]),
            }
            if rng.random() < 0.5:
                cart["items"] = [{"sku": rng.choice(["tea", "pot"])}]
            events.append(event(n, user, minutes, cart={**cart, "currency": "EUR"}))
        elif roll < 0.7:
            payment: dict[str, Any] = {
                "id": rng.choice(["p_1", "p_2"]),
                "amount": "1.00",
                "currency": "EUR",
            }
            payment["cart_id"] = rng.choice(["c_1", "c_2", None])
            events.append(paid(n, user, minutes, payment))
        else:
            events.append(event(n, user, minutes))
    return events


def validated(payload: dict[str, Any]) -> dict[str, Any]:
    serializer = EventSerializer(data=payload)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


# --- the bodies: each stores one event's customer, cart and payment, or refuses the event ------


def through_the_orm(data: dict[str, Any]) -> None:
    user, consent = data["user"], data["user"].get("consent", {})
    customer = services.customer_upsert(
        external_id=user["id"],
        as_of=data["occurred_at"],
        email=user.get("email"),
        phone=user.get("phone"),
        first_name=user.get("first_name"),
        timezone_name=user.get("timezone"),
        consent_email=consent.get("email"),
        consent_sms=consent.get("sms"),
        consent_source=f"event:{data['id']}",
    )
    if cart := data.get("cart"):
        services.cart_upsert(
            customer=customer,
            external_id=cart["id"],
            total=cart["total"],
            currency=cart["currency"],
            checkout_url=cart.get("checkout_url", ""),
            items=cart.get("items"),
        )
    if payment := data.get("payment"):
        services.payment_upsert(
            customer=customer,
            external_id=payment["id"],
            amount=payment["amount"],
            currency=payment["currency"],
            cart_external_id=payment.get("cart_id"),
            discount_code=payment.get("discount_code"),
        )


def through_one_statement_per_table(data: dict[str, Any]) -> None:
    customer_id = profiles.customer_store(
        user=data["user"], as_of=data["occurred_at"], event_id=data["id"]
    )
    if cart := data.get("cart"):
        purchases.cart_store(customer_id=customer_id, cart=cart)
    if payment := data.get("payment"):
        purchases.payment_store(customer_id=customer_id, payment=payment)


def one_by_one(store: Callable[[dict[str, Any]], None]) -> Callable[[Events], list[str]]:
    def apply(events: Events) -> list[str]:
        answers = []
        for payload in events:
            try:
                with transaction.atomic():  # a refused event writes nothing
                    store(validated(payload))
                answers.append("stored")
            except services.CartOwnedByAnotherCustomer:
                answers.append("refused")
        return answers

    return apply


def through_event_ingest(events: Events) -> list[str]:
    return [
        "refused"
        if isinstance(
            services.event_ingest_outcome(Event.Source.WEBHOOK, validated(p), p), Exception
        )
        else "stored"
        for p in events
    ]


def through_a_batch(events: Events) -> list[str]:
    outcomes = services.events_ingest_batch(
        source=Event.Source.WEBHOOK, items=[(validated(p), p) for p in events]
    )
    return ["refused" if isinstance(o, Exception) else "stored" for o in outcomes]


BODIES = {
    "orm": one_by_one(through_the_orm),
    "one statement per table": one_by_one(through_one_statement_per_table),
    "event_ingest (all at once on PostgreSQL)": through_event_ingest,
}
if connection.vendor == "postgresql":  # elsewhere a batch is stored item by item
    BODIES["a batch, set-based"] = through_a_batch


CONSENT_COLUMNS = [col.name for c in profiles.CUSTOMER_CONSENT for col in c.columns]


def rows() -> dict[str, list[Any]]:
    return {
        "customers": sorted(
            Customer.objects.values_list(
                "external_id",
                *(c.name for c in profiles.CUSTOMER_PROFILE),
                *CONSENT_COLUMNS,
                "profile_as_of",
            )
        ),
        "carts": sorted(
            Cart.objects.values_list(
                "external_id", "customer__external_id", *(c.name for c in purchases.CART_STATE)
            )
        ),
        "payments": sorted(
            Payment.objects.values_list(
                "external_id",
                "customer__external_id",
                "cart__external_id",
                *(c.name for c in purchases.PAYMENT_RECORD),
            )
        ),
    }


def outcome(apply: Callable[[Events], list[str]], events: Events) -> tuple[Any, ...]:
    with transaction.atomic():
        answers = apply(events)
        state = rows()
        transaction.set_rollback(True)
    return answers, state


@pytest.mark.parametrize(
    "events",
    [*CASES.values(), *(random_case(seed) for seed in range(10))],
    ids=[*CASES, *(f"random {seed}" for seed in range(10))],
)
def test_every_body_of_a_profile_rule_leaves_the_same_rows(events):
    expected = outcome(BODIES["orm"], events)
    assert expected[1]["customers"]  # the case did something

    for name, apply in BODIES.items():
        assert outcome(apply, events) == expected, name


def test_the_defaults_are_the_models():
    answers, state = outcome(
        BODIES["one statement per table"], CASES["a new customer gets the model's defaults"]
    )

    assert answers == ["stored"]
    ((external_id, *profile, as_of),) = state["customers"]
    assert (external_id, as_of) == ("u_1", BASE)
    fields = [c.name for c in profiles.CUSTOMER_PROFILE] + CONSENT_COLUMNS
    assert profile == [Customer._meta.get_field(name).get_default() for name in fields]
    # nobody said anything about consent: unknown, with no source and no time
    assert profile == ["", "", "", "UTC", "unknown", "", None, "unknown", "", None]


def test_customer_upsert_takes_every_profile_field():
    """A field added to CUSTOMER_PROFILE needs its keyword here (timezone is timezone_name:
    the module is django.utils.timezone)."""
    keywords = set(inspect.signature(services.customer_upsert).parameters)
    fields = {
        "timezone_name" if c.name == "timezone" else c.name for c in profiles.CUSTOMER_PROFILE
    }
    consent = {c.param for c in profiles.CUSTOMER_CONSENT}

    assert keywords == {"external_id", "as_of", *fields, *consent, "consent_source"}
