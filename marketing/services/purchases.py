"""Carts and payments: the fields an event's `cart` and `payment` set, defined once
(CART_STATE, PAYMENT_RECORD), and the bodies that write them, side by side: the ORM upserts
(admin, demo, the host's code), the single event's statements, and the batch's.

The rules, in every body:
- a cart's latest state wins, but a cart id that belongs to another customer is refused (a
  shop's cart ids are unique: moving a cart would rewrite another customer's history);
- a payment is stored once, the first time its id is seen; it is linked to the customer's cart
  of that id when there is one by then.
The single event's at-once statement (ingest.py) writes them too, from CART_STATE,
PAYMENT_RECORD and CART_ON_CONFLICT. tests/marketing/test_profiles.py feeds the same cases to
every body.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from marketing.models import Cart, Customer, Payment
from marketing.services.columns import column, table
from marketing.services.outcomes import CartOwnedByAnotherCustomer

# A new field: its model field and a line here (and, for the ORM callers, a keyword of
# cart_upsert or payment_upsert).
CART_STATE = (
    column(Cart, "total"),
    column(Cart, "currency"),
    column(Cart, "checkout_url"),
    column(Cart, "items"),
)
PAYMENT_RECORD = (
    column(Payment, "amount"),
    column(Payment, "currency"),
    column(Payment, "discount_code"),
)
CART_TABLE = table(Cart)
PAYMENT_TABLE = table(Payment)


def cart_upsert(
    *,
    customer: Customer,
    external_id: str,
    total: Decimal,
    currency: str,
    checkout_url: str = "",
    items: list[dict[str, Any]] | None = None,
) -> Cart:
    """Create a cart or set its state, through the ORM (its post_save is the host's event)."""
    given = {"total": total, "currency": currency, "checkout_url": checkout_url, "items": items}
    values: dict[str, Any] = {
        c.name: c.default if given[c.name] is None else given[c.name] for c in CART_STATE
    }
    with transaction.atomic():
        cart, created = Cart.objects.get_or_create(
            external_id=external_id, defaults={"customer": customer, **values}
        )
        if created:
            return cart
        if cart.customer_id != customer.pk:
            raise CartOwnedByAnotherCustomer(external_id)
        changed = [name for name, value in values.items() if getattr(cart, name) != value]
        if changed:
            for name in changed:
                setattr(cart, name, values[name])
            cart.save(update_fields=[*changed, "updated_at"])
        return cart


def payment_upsert(
    *,
    customer: Customer,
    external_id: str,
    amount: Decimal,
    currency: str,
    cart_external_id: str | None = None,
    discount_code: str | None = None,
) -> Payment:
    """Record a payment once, through the ORM (its post_save is the host's event)."""
    given = {"amount": amount, "currency": currency, "discount_code": discount_code}
    values = {c.name: c.default if given[c.name] is None else given[c.name] for c in PAYMENT_RECORD}
    cart = None
    if cart_external_id:
        cart = Cart.objects.filter(external_id=cart_external_id, customer=customer).first()
    payment, _ = Payment.objects.get_or_create(
        external_id=external_id, defaults={"customer": customer, "cart": cart, **values}
    )
    return payment


# What a cart's upsert does when the cart exists: its latest state wins, unless the cart
# belongs to another customer (then no row is returned, and the event is refused).
CART_ON_CONFLICT = f"""
ON CONFLICT (external_id) DO UPDATE
   SET {", ".join(f"{c.column} = excluded.{c.column}" for c in CART_STATE)},
       updated_at = excluded.updated_at
 WHERE {CART_TABLE}.customer_id = excluded.customer_id
"""  # noqa: S608 - the models' names only, no input

_CART_SQL = f"""
INSERT INTO {CART_TABLE}
       (external_id, customer_id, {", ".join(c.column for c in CART_STATE)},
        created_at, updated_at)
VALUES (%s, %s, {", ".join("%s" for _ in CART_STATE)}, %s, %s)
{CART_ON_CONFLICT}
RETURNING id
"""  # noqa: S608 - the models' names only, no input

_PAYMENT_SQL = f"""
INSERT INTO {PAYMENT_TABLE}
       (external_id, customer_id, cart_id, {", ".join(c.column for c in PAYMENT_RECORD)},
        created_at)
VALUES (%s, %s, (SELECT id FROM {CART_TABLE} WHERE external_id = %s AND customer_id = %s),
        {", ".join("%s" for _ in PAYMENT_RECORD)}, %s)
ON CONFLICT (external_id) DO NOTHING
"""  # noqa: S608 - the models' names only, no input


def cart_store(*, customer_id: int, cart: dict[str, Any]) -> None:
    """An event's cart, in one statement (PostgreSQL and SQLite >= 3.35)."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            _CART_SQL, [cart["id"], customer_id, *(c.stored(cart) for c in CART_STATE), now, now]
        )
        if cursor.fetchone() is None:
            raise CartOwnedByAnotherCustomer(cart["id"])


def payment_store(*, customer_id: int, payment: dict[str, Any]) -> None:
    """An event's payment, in one statement (PostgreSQL and SQLite >= 3.35)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _PAYMENT_SQL,
            [
                payment["id"],
                customer_id,
                payment.get("cart_id"),
                customer_id,
                *(c.stored(payment) for c in PAYMENT_RECORD),
                connection.ops.adapt_datetimefield_value(timezone.now()),
            ],
        )


# A batch's carts and payments (PostgreSQL), one statement each; the rows are in id order, so
# concurrent batches lock them in the same order. The arrays: carts_arrays() and payments_arrays().
BATCH_CARTS_SQL = f"""
INSERT INTO {CART_TABLE}
       (external_id, customer_id, {", ".join(c.column for c in CART_STATE)},
        created_at, updated_at)
SELECT v.id, v.customer_id, {", ".join(c.cast(f"v.{c.name}") for c in CART_STATE)}, %s, %s
  FROM unnest(%s::text[], %s::bigint[], {", ".join(f"%s::{c.param_type}[]" for c in CART_STATE)})
       AS v(id, customer_id, {", ".join(c.name for c in CART_STATE)})
 ORDER BY v.id
{CART_ON_CONFLICT}
RETURNING external_id
"""  # noqa: S608 - the models' names only, no input
BATCH_PAYMENTS_SQL = f"""
INSERT INTO {PAYMENT_TABLE}
       (external_id, customer_id, cart_id, {", ".join(c.column for c in PAYMENT_RECORD)},
        created_at)
SELECT v.id, v.customer_id, c.id, {", ".join(f"v.{c.name}" for c in PAYMENT_RECORD)}, %s
  FROM unnest(%s::text[], %s::bigint[], %s::text[],
              {", ".join(f"%s::{c.param_type}[]" for c in PAYMENT_RECORD)})
       AS v(id, customer_id, cart_id, {", ".join(c.name for c in PAYMENT_RECORD)})
  LEFT JOIN {CART_TABLE} c ON c.external_id = v.cart_id AND c.customer_id = v.customer_id
 ORDER BY v.id
ON CONFLICT (external_id) DO NOTHING
"""  # noqa: S608 - the models' names only, no input


def carts_arrays(carts: list[tuple[dict[str, Any], int]]) -> list[list[Any]]:
    """BATCH_CARTS_SQL's arrays for (event cart, customer id) rows."""
    return [
        [cart["id"] for cart, _ in carts],
        [customer_id for _, customer_id in carts],
        *([c.stored(cart) for cart, _ in carts] for c in CART_STATE),
    ]


def payments_arrays(payments: list[tuple[dict[str, Any], int, str | None]]) -> list[list[Any]]:
    """BATCH_PAYMENTS_SQL's arrays for (event payment, customer id, cart id to link) rows."""
    return [
        [payment["id"] for payment, _, _ in payments],
        [customer_id for _, customer_id, _ in payments],
        [cart_id for _, _, cart_id in payments],
        *([c.stored(payment) for payment, _, _ in payments] for c in PAYMENT_RECORD),
    ]
