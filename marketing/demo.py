"""Demo data for a first run: a few customers, carts and payments, saved through the services
so their events are recorded exactly as the host's own would be.

Created once: a later run leaves what it finds as it is, so a marketer's edits survive
`make run`; `reset` (`manage.py nudge_demo --reset`) restores it as shipped."""

from __future__ import annotations

from decimal import Decimal

from django.core.management.base import OutputWrapper
from django.db import transaction

from marketing import services
from marketing.models import Cart, Customer, Payment

DEMO_CUSTOMERS = [
    # (external id, first name, email, phone, time zone)
    ("demo_u_ana", "Ana", "ana@example.com", "+4915112345670", "Europe/Berlin"),
    ("demo_u_ben", "Ben", "ben@example.com", "+14155550102", "America/Los_Angeles"),
    ("demo_u_chloe", "Chloé", "chloe@example.com", "+33612345678", "Europe/Paris"),
]
# (cart id, customer id, total): Ana paid for hers, Ben left his at checkout.
DEMO_CARTS = [("demo_c_ana", "demo_u_ana", "120.00"), ("demo_c_ben", "demo_u_ben", "45.50")]
DEMO_PAYMENTS = [("demo_p_ana", "demo_u_ana", "demo_c_ana", "120.00", "WELCOME10")]


def load_demo(*, stdout: OutputWrapper, reset: bool = False) -> None:
    """Create the demo objects that are missing; with `reset`, also write the shipped values
    over those that exist. Records no new event on a re-run (the host events are one per
    object)."""
    found = {
        customer.external_id: customer
        for customer in Customer.objects.filter(external_id__in=[c[0] for c in DEMO_CUSTOMERS])
    }
    found_carts = set(
        Cart.objects.filter(external_id__in=[c[0] for c in DEMO_CARTS]).values_list(
            "external_id", flat=True
        )
    )
    found_payments = set(
        Payment.objects.filter(external_id__in=[p[0] for p in DEMO_PAYMENTS]).values_list(
            "external_id", flat=True
        )
    )
    customers = dict(found)
    for external_id, first_name, email, phone, timezone_name in DEMO_CUSTOMERS:
        if external_id in found and not reset:
            continue
        with transaction.atomic():  # each save commits, so its event is recorded on commit
            customers[external_id] = services.customer_upsert(
                external_id=external_id,
                first_name=first_name,
                email=email,
                phone=phone,
                timezone_name=timezone_name,
                # recorded explicitly: under NUDGE_CONSENT_DEFAULT=deny (the default) an
                # unknown consent sends no marketing
                consent_email=True,
                consent_sms=True,
                consent_source="demo",
            )
    for cart_id, customer_id, total in DEMO_CARTS:
        if cart_id in found_carts and not reset:
            continue
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
        if payment_id in found_payments:  # a payment is what the shop reported: never edited
            continue
        with transaction.atomic():
            services.payment_upsert(
                customer=customers[customer_id],
                external_id=payment_id,
                amount=Decimal(amount),
                currency="EUR",
                cart_external_id=cart_id,
                discount_code=discount_code,
            )

    counts = (
        f"{len(DEMO_CUSTOMERS)} customers, {len(DEMO_CARTS)} carts, {len(DEMO_PAYMENTS)} payment"
    )
    shipped = len(DEMO_CUSTOMERS) + len(DEMO_CARTS) + len(DEMO_PAYMENTS)
    present = len(found) + len(found_carts) + len(found_payments)
    if reset:
        stdout.write(f"Demo data: restored as shipped: {counts}, and their events.")
    elif present == 0:
        stdout.write(f"Demo data: created {counts}, and their events.")
    elif present < shipped:
        stdout.write(
            f"Demo data: created {shipped - present} missing object(s); the rest is already "
            "there, left as it is (use --reset to restore it as shipped)."
        )
    else:
        stdout.write(
            "Demo data: already there, left as it is (use --reset to restore it as shipped)."
        )
