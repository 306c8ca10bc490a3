"""The suppression list: addresses no message goes to on a channel, whichever customer holds
them. Fed by a provider's hard bounce or a spam complaint (journeys.services.feedback), an
unsubscribe and a STOP reply (services.consent), an erasure (services.erasure) and an
operator's entry in the admin; dispatch looks up a take's recipients in one query.

Addresses are stored hashed, never as written: `identifier_digest` is an HMAC-SHA256 of
"<kind>:<normalised value>" under NUDGE_ERASURE_PEPPER (SECRET_KEY when empty), the key
keeping a list of known addresses from being tested against the table. An email is
lower-cased, a phone number kept in E.164, so the same address always gives the same digest.

One row per (channel, address, reason): what a customer's own word added, their word takes
away (a re-subscribe removes the unsubscribe's row, a START the STOP's), and nothing but an
operator removes a bounce's, a complaint's or an erasure's.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from functools import cache

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet

from marketing.models import Channel, Suppression

HASH_PREFIX = "hmac-sha256:"
# what each kind of identifier is hashed as (the kind is part of the hashed text, so an email
# and an external id that happen to be equal give different entries)
KIND_ID, KIND_EMAIL, KIND_PHONE = "id", "email", "phone"
ADDRESS_KIND: dict[str, str] = {Channel.EMAIL: KIND_EMAIL, Channel.SMS: KIND_PHONE}

# When one address has several rows, the reason a skipped send gives: the erasure's first
# (it also names no customer), then the provider's, then the operator's, then the customer's.
REASON_PRECEDENCE = [
    Suppression.Reason.ERASED,
    Suppression.Reason.BOUNCED,
    Suppression.Reason.COMPLAINED,
    Suppression.Reason.MANUAL,
    Suppression.Reason.UNSUBSCRIBED,
    Suppression.Reason.STOPPED,
]


def suppression_address(channel: str, address: str) -> str:
    """The normalised form of an address, which is hashed: emails lower-cased (providers
    report them so), phone numbers as given (E.164 from the caller)."""
    address = address.strip()
    return address.lower() if channel == Channel.EMAIL else address


@cache
def _mac(key: str) -> hmac.HMAC:
    return hmac.new(key.encode(), digestmod=hashlib.sha256)


def identifier_digest(*, kind: str, value: str) -> str:
    """The hashed suppression address of one identifier: "hmac-sha256:<hex>" of
    "<kind>:<value>", the value normalised (an email lower-cased, a phone number and an
    external id as given, without surrounding space)."""
    if kind == KIND_ID:
        normalised = value.strip()
    else:
        channel = Channel.EMAIL if kind == KIND_EMAIL else Channel.SMS
        normalised = suppression_address(channel, value)
    mac = _mac(settings.NUDGE_ERASURE_PEPPER or settings.SECRET_KEY).copy()
    mac.update(f"{kind}:{normalised}".encode())
    return HASH_PREFIX + mac.hexdigest()


def address_digest(channel: str, address: str) -> str:
    """The stored (hashed) form of an email address or phone number on its channel."""
    return identifier_digest(kind=ADDRESS_KIND[channel], value=address)


def detail_without_address(detail: str, address: str) -> str:
    """A provider's detail with the address itself cut out ("550 <ana@x.com> unknown"
    would otherwise keep in plain what the row hashes)."""
    address = address.strip()
    if not address:
        return detail[:300]
    return re.sub(re.escape(address), "<address>", detail, flags=re.IGNORECASE)[:300]


@transaction.atomic
def address_suppress(
    *, channel: str, address: str, reason: str, source: str = "", detail: str = ""
) -> Suppression:
    """Suppress `address` on `channel` for `reason`, stored hashed (idempotent: a repeat of
    the same reason keeps the first row)."""
    if not address.strip():
        raise ValueError("an empty address cannot be suppressed")
    suppression, _ = Suppression.objects.get_or_create(
        channel=channel,
        address=address_digest(channel, address),
        reason=reason,
        defaults={"source": source[:300], "detail": detail_without_address(detail, address)},
    )
    return suppression


@transaction.atomic
def address_unsuppress(*, channel: str, address: str, reasons: Iterable[str]) -> int:
    """Remove the suppressions of `address` on `channel` for these reasons only (a
    re-subscribe passes UNSUBSCRIBED, a START passes STOPPED); how many rows went."""
    if not address.strip():
        return 0
    deleted, _ = Suppression.objects.filter(
        channel=channel, address=address_digest(channel, address), reason__in=list(reasons)
    ).delete()
    return deleted


@transaction.atomic
def suppressions_delete(*, suppressions: QuerySet[Suppression]) -> int:
    """An operator's unsuppress (the admin's delete): sends to these addresses may go out
    again, unless another row (another reason) still holds the address."""
    deleted, _ = suppressions.delete()
    return deleted


def suppression_search_digests(query: str) -> list[str]:
    """What an operator's search for `query` matches: the digest itself when one is pasted,
    else the digests of the text as an email, a phone number and an external id."""
    query = query.strip()
    if not query:
        return []
    if query.startswith(HASH_PREFIX):
        return [query]
    return [identifier_digest(kind=kind, value=query) for kind in (KIND_EMAIL, KIND_PHONE, KIND_ID)]


def suppressed_reason(suppression: Suppression) -> str:
    """Why a send to a suppressed address is skipped: "suppressed: hard bounce (<detail>)"."""
    label = suppression.get_reason_display()
    if suppression.detail:
        return f"suppressed: {label} ({suppression.detail})"
    return f"suppressed: {label}"


def suppression_first(suppressions: Iterable[Suppression]) -> Suppression:
    """Of one address's rows, the one a skipped send names (REASON_PRECEDENCE)."""
    rank: dict[str, int] = {str(reason): n for n, reason in enumerate(REASON_PRECEDENCE)}
    return min(suppressions, key=lambda s: (rank.get(s.reason, len(rank)), s.pk or 0))
