from __future__ import annotations

from decimal import Decimal

import factory
from django.core.files.base import ContentFile
from django.utils.timezone import now

from marketing.models import Cart, ConsentState, Customer, Payment
from media_tasks.models import UploadedImage
from media_tasks.samples import photo_jpeg


class CustomerFactory(factory.django.DjangoModelFactory[Customer]):
    class Meta:
        model = Customer

    external_id = factory.Sequence(lambda n: f"u_{n}")
    email = factory.LazyAttribute(lambda o: f"{o.external_id}@example.com")
    phone = factory.Sequence(lambda n: f"+1415555{n:04d}")
    first_name = "Ana"
    timezone = "Europe/Berlin"
    # consent recorded, so that marketing journeys send under NUDGE_CONSENT_DEFAULT=deny (the
    # default); tests about consent set these themselves
    email_consent = ConsentState.GRANTED
    email_consent_source = "import"
    email_consent_at = factory.LazyFunction(now)
    sms_consent = ConsentState.GRANTED
    sms_consent_source = "import"
    sms_consent_at = factory.LazyFunction(now)


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


class UploadedImageFactory(factory.django.DjangoModelFactory[UploadedImage]):
    """A stored, valid original (a small generated photo), pending compression."""

    class Meta:
        model = UploadedImage

    class Params:
        width = 640
        height = 480

    original = factory.LazyAttribute(
        lambda o: ContentFile(photo_jpeg(o.width, o.height), name="photo.jpg")
    )
    original_name = "photo.jpg"
    original_format = "JPEG"
    original_width = factory.SelfAttribute("width")
    original_height = factory.SelfAttribute("height")
    original_size = factory.LazyAttribute(lambda o: o.original.size)
