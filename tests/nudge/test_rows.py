"""nudge.db.rows gives what the ORM's own loading gives: the same values of the same types,
instances that know their database, and relations cached. It is the one place that uses
Django's private loading API, so a Django upgrade that changes it fails here."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from journeys.models import Enrollment, ScheduledSend
from marketing.models import Cart, Customer
from nudge.db.rows import related_set, rows_as_instances, select_list
from tests.factories import CartFactory, CustomerFactory
from tests.journeys.test_engine import make_journey

pytestmark = pytest.mark.django_db

PARTS = ((ScheduledSend, "s"), (Customer, "c"), (Cart, "k"))
SQL = """
SELECT {columns}
  FROM {send} s
  JOIN {customer} c ON c.id = s.customer_id
  LEFT JOIN {cart} k ON k.id = s.cart_id
 ORDER BY s.id
"""


@pytest.fixture
def two_sends() -> list[int]:
    """One send with a cart (JSON items, a decimal total) and a discount, one without."""
    journey = make_journey()
    step = journey.steps.get()
    now = timezone.now()
    customer = CustomerFactory.create(sms_consent="revoked")
    cart = CartFactory.create(
        customer=customer, total=Decimal("12.50"), items=[{"sku": "A", "qty": 2}]
    )
    ids = []
    for n, with_cart in enumerate((cart, None)):
        enrollment = Enrollment.objects.create(
            journey=journey, customer=customer, cart=with_cart,
            trigger_occurred_at=now, chain_started_at=now,
        )  # fmt: skip
        ids.append(
            ScheduledSend.objects.create(
                enrollment=enrollment, journey=journey, step=step, step_position=0,
                customer=customer, cart=with_cart, channel="email", trigger_occurred_at=now,
                due_at=now + timedelta(minutes=10), dedupe_key=f"{customer.pk}:{n}",
                discount_code=f"CODE{n}", discount_percent=10, claimed_at=now,
            ).pk
        )  # fmt: skip
    return ids


def loaded() -> list[list[Any]]:
    sql = SQL.format(
        columns=select_list(PARTS),
        send=ScheduledSend._meta.db_table,
        customer=Customer._meta.db_table,
        cart=Cart._meta.db_table,
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall()
    return rows_as_instances(PARTS, rows)


def fields(instance: object) -> list[tuple[str, object, type]]:
    return [
        (f.attname, getattr(instance, f.attname), type(getattr(instance, f.attname)))
        for f in type(instance)._meta.concrete_fields  # type: ignore[attr-defined]
    ]


def test_rows_load_as_a_queryset_loads_them(two_sends):
    expected = list(ScheduledSend.objects.select_related("customer", "cart").order_by("id"))

    rows = loaded()

    assert [send.pk for send, _, _ in rows] == two_sends
    for (send, customer, cart), orm in zip(rows, expected, strict=True):
        assert fields(send) == fields(orm)
        assert fields(customer) == fields(orm.customer)
        if orm.cart is None:
            assert cart is None
        else:
            assert fields(cart) == fields(orm.cart)
            assert cart.items == [{"sku": "A", "qty": 2}]
            assert cart.total == Decimal("12.50")
        for instance in (send, customer, cart):
            if instance is not None:
                assert instance._state.db == "default"
                assert instance._state.adding is False
    # a boolean and a datetime, as the database gave them, converted (SQLite: ints, text)
    send, customer, _ = rows[0]
    assert customer.sms_consent == "revoked"
    assert send.claimed_at is not None and send.claimed_at.tzinfo is not None


def test_related_set_caches_the_relation(two_sends, django_assert_num_queries):
    (send, customer, cart), (bare, _, no_cart) = loaded()

    related_set(send, "customer", customer)
    related_set(send, "cart", cart)
    related_set(bare, "cart", no_cart)

    with django_assert_num_queries(0):
        assert send.customer is customer
        assert send.cart is cart
        assert bare.cart is None
    assert ScheduledSend._meta.get_field("customer").is_cached(send)
    # a relation never set is loaded as usual
    with django_assert_num_queries(1):
        assert bare.customer.pk == customer.pk
