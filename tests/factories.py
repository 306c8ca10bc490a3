from __future__ import annotations

from decimal import Decimal

import factory

from marketing.models import Cart, Customer, Payment


class CustomerFactory(factory.django.DjangoModelFactory[Customer]):
    class Meta:
        model = Customer

    external_id = factory.Sequence(lambda n: f"u_{n}")
    email = factory.LazyAttribute(lambda o: f"{o.external_id}@example.com")
    phone = factory.Sequence(lambda n: f"+1415555{n:04d}")
    first_name = "Ana"
    timezone = "Europe/Berlin"


class CartFactory(factory.django.DjangoModelFactory[Cart]):
    class Meta:
        model = Cart

    external_id = factory.Sequence(lambda n: f"c_{n}")
    customer = factory.SubFactory(CustomerFactory)
    total = Decimal("120.00")
    currency = "EUR"
    checkout_url = factory.LazyAttribute(lambda o: f"https://shop.example/checkout/{o.external_id}")


class PaymentFactory(factory.django.DjangoModelFactory[Payment]):
    class Meta:
        model = Payment

    external_id = factory.Sequence(lambda n: f"p_{n}")
    customer = factory.SubFactory(CustomerFactory)
    amount = Decimal("120.00")
    currency = "EUR"
