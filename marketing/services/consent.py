"""A customer's consent per channel (unknown, granted or revoked, with its source and time),
the rule that orders its changes, and the customer's own word: the signed unsubscribe link
every marketing email carries (List-Unsubscribe, RFC 8058 one-click), the opt-out it records,
the re-subscribe, and the SMS STOP and START replies.

Consent is ordered by time like the profile: a change recorded at a moment (an event's
occurred_at, else when it was recorded) replaces the stored consent only if that is no older
than the stored consent's time (`consent_decide`; services.profiles holds the same rule in
SQL, tests/marketing/test_profiles.py feeds every body the same cases). A customer's own
opt-out holds the channel's consent: no event changes it while `<channel>_opted_out_at` is
set, only their own opt-in (re-subscribe, START) does.

An opt-out is a revoke with its source ("unsubscribe_link", "esp_unsubscribe", "sms_reply"),
and it also suppresses the address (services.suppression, reason "unsubscribed" or
"stopped"), for every customer who shares it; the opt-in grants again and lifts that
suppression only: a bounce's or a complaint's stays.

The token is `django.core.signing` over the customer's id and the channel, with its own salt:
it never expires (an unsubscribe link must keep working), and a forged or altered token fails
its signature (UnsubscribeTokenInvalid), so it opts no one out. An opt-out through the link
sets `email_opted_out_at` and `email_opted_out_via`; while they are set, an event's
consent.email=true does not opt the customer back in (consent_decide; services.profiles in SQL).
The opt-out's transaction sends `customer_opted_out` (journeys wait there for a dispatch chunk
holding the customer's sends), and dispatch re-reads the customer under its lock before each
send: a send not yet handed to the provider when the opt-out answers is skipped, "opted out of
email (unsubscribe link)" (opted_out_reason).
"""

from __future__ import annotations

from datetime import datetime
from functools import cache

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.urls import get_urlconf, reverse
from django.utils import timezone

from marketing.models import Channel, ConsentState, Customer, OptOutSource, Suppression
from marketing.services.suppression import address_suppress, address_unsuppress
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


# --- consent, per channel ---------------------------------------------------------------

# (state, source, time) fields of each channel's consent, and its opt-out's (time, how)
CONSENT_FIELDS: dict[str, tuple[str, str, str]] = {
    Channel.EMAIL: ("email_consent", "email_consent_source", "email_consent_at"),
    Channel.SMS: ("sms_consent", "sms_consent_source", "sms_consent_at"),
}
OPT_OUT_FIELDS: dict[str, tuple[str, str]] = {
    Channel.EMAIL: ("email_opted_out_at", "email_opted_out_via"),
    Channel.SMS: ("sms_opted_out_at", "sms_opted_out_via"),
}
# an event's consent is recorded as coming from it: "event:<event id>"
EVENT_SOURCE_PREFIX = "event:"


class ConsentHeldByOptOut(Exception):
    """Consent cannot be granted on someone's behalf while their own opt-out holds it."""


def consent_of(customer: Customer, channel: str) -> tuple[str, str, datetime | None]:
    """(state, source, time) of the customer's consent on `channel`."""
    state, source, at = CONSENT_FIELDS[channel]
    return getattr(customer, state), getattr(customer, source), getattr(customer, at)


def consent_decide(customer: Customer, channel: str, at: datetime) -> bool:
    """The rule, in Python: does a statement of consent made at `at` (an event's occurred_at,
    an operator's or an import's moment) replace the customer's stored consent on `channel`?
    Not while their own opt-out holds it, nor when the stored consent is newer."""
    if getattr(customer, OPT_OUT_FIELDS[channel][0]) is not None:
        return False
    stored_at = getattr(customer, CONSENT_FIELDS[channel][2])
    return stored_at is None or stored_at <= at


def consent_assign(
    customer: Customer, channel: str, *, granted: bool, source: str, at: datetime
) -> list[str]:
    """Set the customer's consent on `channel` (not saved): the fields changed."""
    values = (ConsentState.GRANTED if granted else ConsentState.REVOKED, source[:300], at)
    changed = []
    for name, value in zip(CONSENT_FIELDS[channel], values, strict=True):
        if getattr(customer, name) != value:
            setattr(customer, name, value)
            changed.append(name)
    return changed


def consent_restate(
    customer: Customer, channel: str, *, granted: bool, source: str, at: datetime
) -> list[str]:
    """An event's statement of consent that consent_decide let through (not saved): a change
    of state is recorded with its source and time; the state already stored keeps the source
    that set it (the demo's, an import's) and takes the newer time. The fields changed."""
    state_field, _, at_field = CONSENT_FIELDS[channel]
    wanted = ConsentState.GRANTED if granted else ConsentState.REVOKED
    if getattr(customer, state_field) != wanted:
        return consent_assign(customer, channel, granted=granted, source=source, at=at)
    if getattr(customer, at_field) == at:
        return []
    setattr(customer, at_field, at)
    return [at_field]


def consent_text(customer: Customer, channel: str) -> str:
    """The consent in words for the admin and the reasons: "granted (admin:ana, 3 Dec
    10:02 UTC)", "unknown"."""
    state, source, at = consent_of(customer, channel)
    label = ConsentState(state).label if state in ConsentState.values else state
    detail = ", ".join(part for part in (source, _when(at)) if part)
    return f"{label} ({detail})" if detail else label


def _when(at: datetime | None) -> str:
    if at is None:
        return ""
    at = timezone.localtime(at, timezone.get_default_timezone())
    return f"{at.day} {at:%b %H:%M} {at.tzname() or ''}".strip()


@transaction.atomic
def customer_consent_set(
    *,
    customer_id: int,
    channel: str,
    granted: bool,
    source: str,
    at: datetime | None = None,
) -> Customer:
    """Record consent given or withdrawn on the customer's behalf: an operator in the admin
    ("admin:<username>"), an import ("import"), the demo ("demo"). `at` (default: now) orders
    it with the events' consent (consent_decide): an older statement changes nothing. A grant
    while the customer's own opt-out holds the channel raises ConsentHeldByOptOut (only their
    own re-subscribe or START lifts it); a revoke is always taken. Customer.DoesNotExist when
    there is no such customer."""
    if channel not in CONSENT_FIELDS:
        raise ValueError(f"no consent for channel {channel!r}")
    if not source.strip():
        raise ValueError("a consent needs its source")
    at = at or timezone.now()
    customer = Customer.objects.select_for_update().get(pk=customer_id)
    opted_out_at, via = OPT_OUT_FIELDS[channel]
    if getattr(customer, opted_out_at) is not None:
        if granted:
            how = dict(OptOutSource.choices).get(getattr(customer, via), getattr(customer, via))
            raise ConsentHeldByOptOut(
                f"the customer opted out of {_word(channel)} themselves ({how}, "
                f"{_when(getattr(customer, opted_out_at))}): only their own opt-in (the "
                "unsubscribe page, an SMS START) grants it again"
            )
        return customer  # already revoked by their own word, which stays the record
    stored_at = getattr(customer, CONSENT_FIELDS[channel][2])
    if stored_at is not None and at < stored_at:
        return customer
    changed = consent_assign(customer, channel, granted=granted, source=source, at=at)
    if changed:
        customer.save(update_fields=[*changed, "updated_at"])
    if not granted:
        customer_opted_out.send(sender=Customer, customer=customer, channel=channel)
    return customer


def _word(channel: str) -> str:
    return "email" if channel == Channel.EMAIL else "SMS"


# --- the customer's own word ----------------------------------------------------------------


def _email_only(channel: str) -> None:
    if channel != Channel.EMAIL:
        raise ValueError(f"only email has an unsubscribe link, not {channel!r}")


@transaction.atomic
def customer_unsubscribe(
    *, customer_id: int, channel: str = Channel.EMAIL, source: str = OptOutSource.UNSUBSCRIBE_LINK
) -> Customer:
    """Opt the customer out of `channel` on their own word, recording when and how (a repeat
    keeps the first time): their consent is revoked with that source, and their address
    suppressed ("unsubscribed") for whoever holds it. Customer.DoesNotExist when there is no
    such customer."""
    _email_only(channel)
    customer = Customer.objects.select_for_update().get(pk=customer_id)
    if customer.email_opted_out_at is None or customer.email_consent != ConsentState.REVOKED:
        customer.email_opted_out_at = customer.email_opted_out_at or timezone.now()
        customer.email_opted_out_via = source
        changed = consent_assign(
            customer, Channel.EMAIL, granted=False, source=source, at=customer.email_opted_out_at
        )
        customer.save(
            update_fields=[*changed, "email_opted_out_at", "email_opted_out_via", "updated_at"]
        )
    if customer.email:
        address_suppress(
            channel=Channel.EMAIL,
            address=customer.email,
            reason=Suppression.Reason.UNSUBSCRIBED,
            source=source,
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


_SMS_OPT_OUT_FIELDS = ["sms_opted_out_at", "sms_opted_out_via", "updated_at"]


@transaction.atomic
def customer_sms_opt_out(*, phone: str, source: str = OptOutSource.SMS_REPLY) -> list[Customer]:
    """A STOP reply from `phone` (E.164): the number is suppressed ("stopped"), also for
    customers who get it later, and every customer with that number is opted out of SMS
    (revoked, a repeat keeps the first time); as for the unsubscribe link, the transaction
    waits for any call to them in flight (customer_opted_out). Returns those customers."""
    customers = list(Customer.objects.select_for_update().filter(phone=phone).order_by("pk"))
    now = timezone.now()
    if phone.strip():
        address_suppress(
            channel=Channel.SMS, address=phone, reason=Suppression.Reason.STOPPED, source=source
        )
    for customer in customers:
        if customer.sms_opted_out_at is None or customer.sms_consent != ConsentState.REVOKED:
            customer.sms_opted_out_at = customer.sms_opted_out_at or now
            customer.sms_opted_out_via = source
            changed = consent_assign(
                customer, Channel.SMS, granted=False, source=source, at=customer.sms_opted_out_at
            )
            customer.save(update_fields=[*changed, *_SMS_OPT_OUT_FIELDS])
        customer_opted_out.send(sender=Customer, customer=customer, channel=Channel.SMS)
    return customers


@transaction.atomic
def customer_sms_opt_in(*, phone: str, source: str = OptOutSource.SMS_REPLY) -> list[Customer]:
    """A START or UNSTOP reply from `phone` (E.164): the number's STOP suppression is lifted
    (not a bounce's, a complaint's or an operator's), and every customer with that number is
    opted back in to SMS (granted), which also lets events set their SMS consent again."""
    customers = list(Customer.objects.select_for_update().filter(phone=phone).order_by("pk"))
    address_unsuppress(channel=Channel.SMS, address=phone, reasons=[Suppression.Reason.STOPPED])
    now = timezone.now()
    for customer in customers:
        customer.sms_opted_out_at = None
        customer.sms_opted_out_via = ""
        changed = consent_assign(customer, Channel.SMS, granted=True, source=source, at=now)
        customer.save(update_fields=[*changed, *_SMS_OPT_OUT_FIELDS])
    return customers


@transaction.atomic
def customer_resubscribe(
    *, customer_id: int, channel: str = Channel.EMAIL, source: str = OptOutSource.UNSUBSCRIBE_LINK
) -> Customer:
    """Opt the customer back in to `channel` on their own word (the unsubscribe page): their
    consent is granted, their opt-out cleared (events may set their consent again), and the
    unsubscribe's suppression of their address lifted. A bounce's, a complaint's, an
    erasure's or an operator's suppression stays: those are not the customer's to lift."""
    _email_only(channel)
    customer = Customer.objects.select_for_update().get(pk=customer_id)
    customer.email_opted_out_at = None
    customer.email_opted_out_via = ""
    changed = consent_assign(
        customer, Channel.EMAIL, granted=True, source=source, at=timezone.now()
    )
    customer.save(
        update_fields=[*changed, "email_opted_out_at", "email_opted_out_via", "updated_at"]
    )
    if customer.email:
        address_unsuppress(
            channel=Channel.EMAIL,
            address=customer.email,
            reasons=[Suppression.Reason.UNSUBSCRIBED],
        )
    return customer
