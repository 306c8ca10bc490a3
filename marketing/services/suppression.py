"""Addresses no message goes to: a provider's hard bounce or a spam complaint suppresses the
address on its channel for every customer who holds it (dispatch checks before each call)."""

from __future__ import annotations

from django.db import transaction

from marketing.models import Channel, Suppression


def suppression_address(channel: str, address: str) -> str:
    """The stored form of an address: emails lower-cased (providers report them so), phone
    numbers as given (E.164 from the caller)."""
    address = address.strip()
    return address.lower() if channel == Channel.EMAIL else address


@transaction.atomic
def address_suppress(*, channel: str, address: str, reason: str, detail: str = "") -> Suppression:
    """Suppress `address` on `channel` (idempotent: a repeat keeps the first reason)."""
    suppression, _ = Suppression.objects.get_or_create(
        channel=channel,
        address=suppression_address(channel, address),
        defaults={"reason": reason, "detail": detail[:300]},
    )
    return suppression


def suppressed_reason(suppression: Suppression) -> str:
    """Why a send to a suppressed address is skipped: "suppressed: hard bounce (<detail>)"."""
    label = suppression.get_reason_display()
    return (
        f"suppressed: {label} ({suppression.detail})"
        if suppression.detail
        else (f"suppressed: {label}")
    )
