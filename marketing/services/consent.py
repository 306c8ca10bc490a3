"""A customer's own word on email: the signed unsubscribe link every marketing email carries
(List-Unsubscribe, RFC 8058 one-click), the opt-out it records, and the re-subscribe.

The token is `django.core.signing` over the customer's id and the channel, with its own salt:
it never expires (an unsubscribe link must keep working), and a forged or altered token fails
its signature (UnsubscribeTokenInvalid), so it opts no one out. An opt-out through the link
sets `email_opted_out_at` and `email_opted_out_via`; while they are set, an event's
consent.email=true does not opt the customer back in (services.profiles, HELD_BY_OPT_OUT).
The opt-out's transaction sends `customer_opted_out` (journeys wait there for a dispatch chunk
holding the customer's sends), and dispatch re-reads the customer under its lock before each
send: a send not yet handed to the provider when the opt-out answers is skipped, "opted out of
email (unsubscribe link)" (opted_out_reason).
"""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.urls import get_urlconf, reverse
from django.utils import timezone

from marketing.models import Channel, Customer, OptOutSource
from marketing.signals import customer_opted_out

UNSUBSCRIBE_SALT = "nudge.unsubscribe"
ONE_CLICK_BODY = "List-Unsubscribe=One-Click"


class UnsubscribeTokenInvalid(Exception):
    """The token's signature does not match: forged, altered or cut short."""


def unsubscribe_token(*, customer_id: int, channel: str = Channel.EMAIL) -> str:
    """What signing.dumps(..., salt=UNSUBSCRIBE_SALT) gives (unsubscribe_token_read reads it
    with signing.loads), through one signer per key instead of a new one per email."""
    return _signer(settings.SECRET_KEY).sign_object({"c": customer_id, "ch": str(channel)})


@cache
def _signer(key: str) -> signing.TimestampSigner:
    return signing.TimestampSigner(key=key, salt=UNSUBSCRIBE_SALT)


def unsubscribe_token_read(token: str) -> tuple[int, str]:
    """The (customer id, channel) a token was signed for; UnsubscribeTokenInvalid if forged."""
    try:
        data = signing.loads(token, salt=UNSUBSCRIBE_SALT)
    except signing.BadSignature as exc:
        raise UnsubscribeTokenInvalid(str(exc)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("c"), int):
        raise UnsubscribeTokenInvalid("not an unsubscribe token")
    return data["c"], str(data.get("ch", Channel.EMAIL))


def unsubscribe_url(*, customer_id: int) -> str:
    """The absolute URL of a customer's email unsubscribe page: NUDGE_PUBLIC_URL followed by
    the path of the `nudge:unsubscribe` view."""
    before, after = _unsubscribe_frame(settings.NUDGE_PUBLIC_URL, get_urlconf())
    return f"{before}{unsubscribe_token(customer_id=customer_id)}{after}"


_SLOT = "nudge-slot"


@cache
def _unsubscribe_frame(public_url: str, urlconf: str | None) -> tuple[str, str]:
    """The unsubscribe URL around its token, reversed once per process and URLconf: reverse()
    cost about 65 us for each email on the dispatch path (a token needs no quoting: base64url
    and colons)."""
    path = reverse("nudge:unsubscribe", args=[_SLOT], urlconf=urlconf)
    before, _, after = path.partition(_SLOT)
    return f"{public_url.rstrip('/')}{before}", after


def unsubscribe_headers(*, url: str) -> dict[str, str]:
    """The RFC 8058 headers of a marketing email whose unsubscribe_url() is `url`."""
    return {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": ONE_CLICK_BODY,
    }


def _email_only(channel: str) -> None:
    if channel != Channel.EMAIL:
        raise ValueError(f"only email has an unsubscribe link, not {channel!r}")


@transaction.atomic
def customer_unsubscribe(
    *, customer_id: int, channel: str = Channel.EMAIL, source: str = OptOutSource.UNSUBSCRIBE_LINK
) -> Customer:
    """Opt the customer out of `channel` on their own word, recording when and how (a repeat
    keeps the first time). Customer.DoesNotExist when there is no such customer."""
    _email_only(channel)
    customer = Customer.objects.select_for_update().get(pk=customer_id)
    if customer.email_opted_out_at is None or customer.consent_email:
        customer.consent_email = False
        customer.email_opted_out_at = customer.email_opted_out_at or timezone.now()
        customer.email_opted_out_via = source
        customer.save(
            update_fields=[
                "consent_email",
                "email_opted_out_at",
                "email_opted_out_via",
                "updated_at",
            ]
        )
    customer_opted_out.send(sender=Customer, customer=customer, channel=channel)
    return customer


def opted_out_reason(customer: Customer, channel: str, channel_label: str) -> str:
    """Why a send to an opted-out customer is skipped: "opted out of email (unsubscribe
    link)" or "opted out of SMS (SMS reply)" after their own opt-out, else "opted out of
    <channel_label>"."""
    via = customer.email_opted_out_via if channel == Channel.EMAIL else customer.sms_opted_out_via
    if via:
        word = "email" if channel == Channel.EMAIL else "SMS"
        return f"opted out of {word} ({dict(OptOutSource.choices).get(via, via)})"
    return f"opted out of {channel_label}"


_SMS_OPT_OUT_FIELDS = ["consent_sms", "sms_opted_out_at", "sms_opted_out_via", "updated_at"]


@transaction.atomic
def customer_sms_opt_out(*, phone: str, source: str = OptOutSource.SMS_REPLY) -> list[Customer]:
    """A STOP reply from `phone` (E.164): every customer with that number is opted out of SMS
    (a repeat keeps the first time), and, as for the unsubscribe link, the transaction waits
    for any call to them in flight (customer_opted_out). Returns those customers."""
    customers = list(Customer.objects.select_for_update().filter(phone=phone).order_by("pk"))
    now = timezone.now()
    for customer in customers:
        if customer.sms_opted_out_at is None or customer.consent_sms:
            customer.consent_sms = False
            customer.sms_opted_out_at = customer.sms_opted_out_at or now
            customer.sms_opted_out_via = source
            customer.save(update_fields=_SMS_OPT_OUT_FIELDS)
        customer_opted_out.send(sender=Customer, customer=customer, channel=Channel.SMS)
    return customers


@transaction.atomic
def customer_sms_opt_in(*, phone: str) -> list[Customer]:
    """A START or UNSTOP reply from `phone` (E.164): every customer with that number is opted
    back in to SMS, which also lets events set their SMS consent again."""
    customers = list(Customer.objects.select_for_update().filter(phone=phone).order_by("pk"))
    for customer in customers:
        customer.consent_sms = True
        customer.sms_opted_out_at = None
        customer.sms_opted_out_via = ""
        customer.save(update_fields=_SMS_OPT_OUT_FIELDS)
    return customers


@transaction.atomic
def customer_resubscribe(*, customer_id: int, channel: str = Channel.EMAIL) -> Customer:
    """Opt the customer back in to `channel` on their own word (the unsubscribe page), which
    also lets events set their consent again."""
    _email_only(channel)
    customer = Customer.objects.select_for_update().get(pk=customer_id)
    customer.consent_email = True
    customer.email_opted_out_at = None
    customer.email_opted_out_via = ""
    customer.save(
        update_fields=["consent_email", "email_opted_out_at", "email_opted_out_via", "updated_at"]
    )
    return customer
