"""A customer's own opt-out, as journeys see it: from the opt-out's answer on, no message to
them leaves on that channel.

Dispatch re-checks consent after taking the customer's lock (services.inflight) and before
each call, with the customer read in the same statement as the send. An opt-out therefore
either commits first and is seen, or comes while a call to that customer is in flight: then
its transaction waits here (marketing's `customer_opted_out`, sent inside that transaction)
for that call, and answers after it. On SQLite the database's single writer does the same.
"""

from __future__ import annotations

from journeys.services import inflight


def scheduled_sends_await_dispatch(*, customer_id: int) -> None:
    """Wait until no provider call to the customer is in flight (on any channel: the lock is
    the customer's), and keep one from starting until the caller's transaction ends."""
    inflight.customers_await_calls([customer_id])
