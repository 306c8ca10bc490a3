"""Consent as journeys see it: whether a send may go to its customer on its channel, and a
customer's own opt-out, from whose answer on no message to them leaves on that channel.

The rule (`consent_refusal`), decided at dispatch for each send with the customer read under
the send's lock:

- a customer's own opt-out (unsubscribe link, ESP unsubscribe, STOP) stops every journey,
  transactional ones too: "opted out of email (unsubscribe link)";
- a revoked consent stops every journey: "no consent: email consent revoked (admin:ana,
  3 Dec 10:02 UTC)";
- an unknown consent stops marketing journeys when NUDGE_CONSENT_DEFAULT is "deny" (the
  default: no marketing without recorded consent): "no consent: email consent unknown
  (NUDGE_CONSENT_DEFAULT=deny)"; a transactional journey (Journey.transactional) sends;
- a granted consent sends.

Suppressions (marketing.services.suppression) are checked beside it and stop every journey too.

Dispatch re-checks consent after taking the customer's lock (services.inflight) and before
each call, with the customer read in the same statement as the send. An opt-out therefore
either commits first and is seen, or comes while a call to that customer is in flight: then
its transaction waits here (marketing's `customer_opted_out`, sent inside that transaction)
for that call, and answers after it. On SQLite the database's single writer does the same.
"""

from __future__ import annotations

from django.conf import settings

from journeys.services import inflight
from marketing.models import Channel, ConsentState, Customer
from marketing.services.consent import OPT_OUT_FIELDS, consent_text, opted_out_reason

DENY, ALLOW = "deny", "allow"


def consent_default() -> str:
    """NUDGE_CONSENT_DEFAULT, normalised ("deny" or "allow"; marketing.checks refuses any
    other value at start-up, and anything else is taken as "deny" here: no marketing)."""
    value = str(settings.NUDGE_CONSENT_DEFAULT).strip().lower()
    return ALLOW if value == ALLOW else DENY


def consent_refusal(
    customer: Customer, channel: str, *, transactional: bool, channel_label: str
) -> str | None:
    """Why a send to `customer` on `channel` must be skipped for want of consent (see the
    module), or None when it may go."""
    if getattr(customer, OPT_OUT_FIELDS[channel][0]) is not None:
        return opted_out_reason(customer, channel, channel_label)
    state = customer.consent(channel)
    word = "email" if channel == Channel.EMAIL else "SMS"
    if state == ConsentState.REVOKED:
        return f"no consent: {word} consent {consent_text(customer, channel)}"[:500]
    if state == ConsentState.GRANTED or transactional:
        return None
    default = consent_default()
    if default == ALLOW:
        return None
    return f"no consent: {word} consent unknown (NUDGE_CONSENT_DEFAULT={default})"


def scheduled_sends_await_dispatch(*, customer_id: int) -> None:
    """Wait until no provider call to the customer is in flight (on any channel: the lock is
    the customer's), and keep one from starting until the caller's transaction ends."""
    inflight.customers_await_calls([customer_id])
