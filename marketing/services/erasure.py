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
- their consent: revoked on both channels, source "erasure";
- the suppressions of their email and phone (bounces, complaints, unsubscribes, STOP) stay:
  they are keyed hashes already (services.suppression), and other customers may share the
  address; the admin's history names the customer "erased:<row id>".

The erasure adds Suppression rows (reason "erased") whose address is the keyed hash
(services.suppression.identifier_digest) of the external id (on every channel), the email
and the phone: dispatch looks them up with the rest of the list, in the same query, so that
no later customer with that id, email or phone is messaged ("suppressed: erased customer");
the value itself is not kept, and the key keeps a list of known addresses from being tested
against them.
"""

from __future__ import annotations

from datetime import datetime

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from marketing.models import Cart, Channel, ConsentState, Customer, Event, Suppression
from marketing.services.retention import event_payloads_purge
from marketing.services.suppression import ADDRESS_KIND as _ADDRESS_KIND
from marketing.services.suppression import HASH_PREFIX as ERASED_PREFIX
from marketing.services.suppression import KIND_EMAIL as _EMAIL
from marketing.services.suppression import KIND_ID as _ID
from marketing.services.suppression import KIND_PHONE as _PHONE
from marketing.services.suppression import identifier_digest as erasure_digest

__all__ = ["ERASED_PREFIX", "erasure_digest"]
ERASURE_SOURCE = "erasure"


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
    counts |= {"suppressions_added": 0, "admin_log": 0}
    if customer.erased_at is not None:
        return counts
    now = now or timezone.now()
    events = Event.objects.filter(customer=customer)
    carts = Cart.objects.filter(customer=customer)
    entries = _hashed_entries(customer)
    new_entries = set(entries) - set(
        Suppression.objects.filter(
            reason=Suppression.Reason.ERASED,
            channel__in=[c for c, _ in entries],
            address__in=[a for _, a in entries],
        ).values_list("channel", "address")
    )
    log = LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(Customer), object_id=str(customer.pk)
    )
    counts |= {
        "customers": 1,
        "events": events.count(),
        "carts": carts.count(),
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
    Suppression.objects.bulk_create(
        [
            Suppression(
                channel=channel,
                address=address,
                reason=Suppression.Reason.ERASED,
                source=ERASURE_SOURCE,
            )
            for channel, address in sorted(new_entries)
        ],
        ignore_conflicts=True,
    )
    erased_name = f"erased:{customer.pk}"
    log.update(object_repr=erased_name)
    customer.external_id = erased_name
    customer.email = customer.phone = customer.first_name = ""
    customer.timezone = "UTC"
    customer.email_consent = customer.sms_consent = ConsentState.REVOKED
    customer.email_consent_source = customer.sms_consent_source = ERASURE_SOURCE
    customer.email_consent_at = customer.sms_consent_at = now
    customer.erased_at = now
    customer.save(
        update_fields=[
            "external_id",
            "email",
            "phone",
            "first_name",
            "timezone",
            "email_consent",
            "email_consent_source",
            "email_consent_at",
            "sms_consent",
            "sms_consent_source",
            "sms_consent_at",
            "erased_at",
            "updated_at",
        ]
    )
    return counts
