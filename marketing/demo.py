"""Demo data for a first run: a few customers, carts and payments, saved through the services
so their events are recorded exactly as the host's own would be."""

from __future__ import annotations

from decimal import Decimal

from django.core.management.base import OutputWrapper
from django.db import transaction

from marketing import services

DEMO_CUSTOMERS = [
    # (external id, first name, email, phone, time zone)
    ("demo_u_ana", "Ana", "ana@example.com", "+4915112345670", "Europe/Berlin"),
    ("demo_u_ben", "Ben", "ben@example.com", "+14155550102", "America/Los_Angeles"),
    ("demo_u_chloe", "Chloé", "chloe@example.com", "+33612345678", "Europe/Paris"),
]
# (cart id, customer id, total): Ana paid for hers, Ben left his at checkout.
DEMO_CARTS = [("demo_c_ana", "demo_u_ana", "120.00"), ("demo_c_ben", "demo_u_ben", "45.50")]
DEMO_PAYMENTS = [("demo_p_ana", "demo_u_ana", "demo_c_ana", "120.00", "WELCOME10")]


def load_demo(*, stdout: OutputWrapper) -> None:
    """Idempotent: a re-run finds every object and records no new event."""
    customers = {}
    for external_id, first_name, email, phone, timezone_name in DEMO_CUSTOMERS:
        with transaction.atomic():  # each save commits, so its event is recorded on commit
            customers[external_id] = services.customer_upsert(
                external_id=external_id,
                first_name=first_name,
                email=email,
                phone=phone,
                timezone_name=timezone_name,
            )
    for cart_id, customer_id, total in DEMO_CARTS:
        with transaction.atomic():
            services.cart_upsert(
                customer=customers[customer_id],
                external_id=cart_id,
                total=Decimal(total),
                currency="EUR",
                checkout_url=f"https://shop.example/checkout/{cart_id}",
                items=[{"sku": "demo-tea", "quantity": 1, "price": total}],
            )
    for payment_id, customer_id, cart_id, amount, discount_code in DEMO_PAYMENTS:
        with transaction.atomic():
            services.payment_upsert(
                customer=customers[customer_id],
                external_id=payment_id,
                amount=Decimal(amount),
                currency="EUR",
                cart_external_id=cart_id,
                discount_code=discount_code,
            )
    stdout.write(
        f"Demo data: {len(DEMO_CUSTOMERS)} customers, {len(DEMO_CARTS)} carts, "
        f"{len(DEMO_PAYMENTS)} payment, and their events."
    )
