"""A customer's own opt-out, as journeys see it: from the opt-out's answer on, no message to
them leaves on that channel.

Dispatch decides each send under its row lock with the customer read in the same statement
(services.dispatch), so an opt-out committed before a chunk is read is seen and the send is
skipped. A chunk already read may still call the provider: the opt-out's transaction waits
for it here (marketing's `customer_opted_out`, sent inside that transaction) by locking the
customer's in-flight sends on the channel, in id order as dispatch does (no deadlock). The
opt-out then answers after the chunk's calls, and each later dispatch re-reads the consent.
"""

from __future__ import annotations

from journeys.models import ScheduledSend


def scheduled_sends_await_dispatch(*, customer_id: int, channel: str) -> int:
    """Wait until no dispatch chunk holds the customer's in-flight sends on `channel`, and
    hold them until the caller's transaction ends. Returns how many are still in flight."""
    in_flight = (
        ScheduledSend.objects.filter(
            customer_id=customer_id, channel=channel, status=ScheduledSend.Status.SENDING
        )
        .order_by("pk")
        .select_for_update()
        .values_list("pk", flat=True)
    )
    return len(list(in_flight))
