"""A customer's personal data erased from marketing's tables, and the keyed hashes that outlive
it (journeys.services.erasure orchestrates: it also empties the sends and cancels them).

What goes, and what stays:

- the customer: email, phone, first name, timezone and consent emptied, the external id
  replaced by "erased:<row id>", `erased_at` set; the row stays for the counts of its events,
  payments and sends (PROTECTed towards it);
- their events: the payload cut down to what is no one's personal data and what the exit rule
  and the reasons read (`payload_skeleton`: the event's id, type and time, its cart's and
  payment's ids), the apply error emptied, and any not applied yet marked applied: they will
  enrol no one. `body_sha256` stays: a repeat delivery of the same event is still answered as
  a repeat, not stored again;
- their carts: checkout URL and items emptied (totals and currencies stay: revenue);
- the plain suppressions of their email and phone (bounces, complaints) are replaced by the
  hashed entries below; the admin's history names the customer "erased:<row id>".

The hashed entries are Suppression rows (reason "erased") whose address is an HMAC-SHA256 of
the normalised external id, email or phone under NUDGE_ERASURE_PEPPER (SECRET_KEY when
empty): dispatch looks them up with the plain suppressions, in the same query, so that no
later customer with that id, email or phone is messaged ("suppressed: erased customer"); the
value itself is not kept, and the key keeps a list of known addresses from being tested
against them.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from functools import cache

from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import Q
from django.utils import timezone

from marketing.models import Cart, Channel, Customer, Event, Suppression
from marketing.services.retention import event_payloads_purge
from marketing.services.suppression import suppression_address

ERASED_PREFIX = "hmac-sha256:"
# what each kind of identifier is hashed as (the kind is part of the hashed text, so an email
# and an external id that happen to be equal give different entries)
_ID, _EMAIL, _PHONE = "id", "email", "phone"
_ADDRESS_KIND: dict[str, str] = {Channel.EMAIL: _EMAIL, Channel.SMS: _PHONE}


@cache
def _mac(key: str) -> hmac.HMAC:
    return hmac.new(key.encode(), digestmod=hashlib.sha256)


def erasure_digest(*, kind: str, value: str) -> str:
    """The hashed suppression address of one identifier: "hmac-sha256:<hex>" of
    "<kind>:<value>", the value normalised as the suppressions store it (an email
    lower-cased, a phone number and an external id as given, without surrounding space)."""
    channel = Channel.EMAIL if kind == _EMAIL else Channel.SMS
    normalised = suppression_address(channel, value) if kind != _ID else value.strip()
    mac = _mac(settings.NUDGE_ERASURE_PEPPER or settings.SECRET_KEY).copy()
    mac.update(f"{kind}:{normalised}".encode())
    return ERASED_PREFIX + mac.hexdigest()


def erased_addresses(*, channel: str, external_id: str, address: str) -> list[str]:
    """The hashed suppression addresses that stop a send on `channel` to the customer
    `external_id` at `address`: their external id's, then their address's (if any)."""
    found = [erasure_digest(kind=_ID, value=external_id)]
    kind = _ADDRESS_KIND.get(channel)
    if address and kind is not None:
        found.append(erasure_digest(kind=kind, value=address))
    return found


def erased_external_ids(*, external_ids: list[str]) -> set[str]:
    """Which of these external ids belong to an erased customer: one query."""
    digests = {erasure_digest(kind=_ID, value=e): e for e in external_ids}
    if not digests:
        return set()
    found = Suppression.objects.filter(
        reason=Suppression.Reason.ERASED, channel=Channel.EMAIL, address__in=list(digests)
    ).values_list("address", flat=True)
    return {digests[address] for address in found}


def _hashed_entries(customer: Customer) -> list[tuple[str, str]]:
    """(channel, hashed address) of the entries an erased customer leaves: their external id
    on every channel, their email and phone on theirs."""
    entries: list[tuple[str, str]] = [
        (channel, erasure_digest(kind=_ID, value=customer.external_id)) for channel in Channel
    ]
    if customer.email:
        entries.append((Channel.EMAIL, erasure_digest(kind=_EMAIL, value=customer.email)))
    if customer.phone:
        entries.append((Channel.SMS, erasure_digest(kind=_PHONE, value=customer.phone)))
    return entries


# --- the erasure ----------------------------------------------------------------------------


def customer_data_erase(
    *, customer: Customer, dry_run: bool = False, now: datetime | None = None
) -> dict[str, int]:
    """Erase `customer`'s personal data from marketing's tables (see the module), inside the
    caller's transaction, with the customer's row locked by the caller. Returns how many rows
    of each table were (with `dry_run`: would be) changed; nothing is written on a dry run.
    A customer already erased changes nothing."""
    counts = {"customers": 0, "events": 0, "carts": 0}
    counts |= {"suppressions_removed": 0, "suppressions_added": 0, "admin_log": 0}
    if customer.erased_at is not None:
        return counts
    now = now or timezone.now()
    events = Event.objects.filter(customer=customer)
    carts = Cart.objects.filter(customer=customer)
    plain = Q(pk__in=[])
    if customer.email:
        plain |= Q(
            channel=Channel.EMAIL, address=suppression_address(Channel.EMAIL, customer.email)
        )
    if customer.phone:
        plain |= Q(channel=Channel.SMS, address=suppression_address(Channel.SMS, customer.phone))
    plain_suppressions = Suppression.objects.filter(plain)
    entries = _hashed_entries(customer)
    new_entries = set(entries) - set(
        Suppression.objects.filter(
            channel__in=[c for c, _ in entries], address__in=[a for _, a in entries]
        ).values_list("channel", "address")
    )
    log = LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(Customer), object_id=str(customer.pk)
    )
    counts |= {
        "customers": 1,
        "events": events.count(),
        "carts": carts.count(),
        "suppressions_removed": plain_suppressions.count(),
        "suppressions_added": len(new_entries),
        "admin_log": log.count(),
    }
    if dry_run:
        return counts

    # not applied yet: they will enrol no one (the customer is locked, so no applier holds them)
    events.filter(applied_at__isnull=True).update(applied_at=now, apply_claimed_at=None)
    event_ids = list(events.values_list("pk", flat=True))
    event_payloads_purge(event_ids=event_ids, purged="erasure")
    carts.update(checkout_url="", items=[], updated_at=now)
    plain_suppressions.delete()
    Suppression.objects.bulk_create(
        [
            Suppression(channel=channel, address=address, reason=Suppression.Reason.ERASED)
            for channel, address in sorted(new_entries)
        ],
        ignore_conflicts=True,
    )
    erased_name = f"erased:{customer.pk}"
    log.update(object_repr=erased_name)
    customer.external_id = erased_name
    customer.email = customer.phone = customer.first_name = ""
    customer.timezone = "UTC"
    customer.consent_email = customer.consent_sms = False
    customer.erased_at = now
    customer.save(
        update_fields=[
            "external_id",
            "email",
            "phone",
            "first_name",
            "timezone",
            "consent_email",
            "consent_sms",
            "erased_at",
            "updated_at",
        ]
    )
    return counts
