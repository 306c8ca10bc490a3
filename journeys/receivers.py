"""Journeys listen to marketing's `events_stored` and `customer_opted_out` (marketing never
imports journeys), and to their own models' saves. Applying stored events is not a signal:
journeys' ticker and task call marketing's verbs (services.applying)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save

from journeys import selectors, services
from journeys.models import Journey, JourneyStep
from marketing.models import Customer, Event
from marketing.signals import customer_opted_out, events_stored


def cancel_on_exit(sender: type, events: list[Event], **kwargs: Any) -> None:
    """Inside the transaction that stores the events (see marketing.signals): a payment's
    cancellation locks the sends it cancels before the payment commits, so a racing
    dispatch either sees it or finishes first."""
    services.events_exits_apply(events=events)


def await_dispatch_on_opt_out(
    sender: type, customer: Customer, channel: str, **kwargs: Any
) -> None:
    """Inside the opt-out's transaction (see marketing.signals): it answers only once no
    provider call to the customer is in flight (services.inflight)."""
    services.scheduled_sends_await_dispatch(customer_id=customer.pk)


def forget_journeys(sender: type, **kwargs: Any) -> None:
    selectors.journeys_forget()


def connect() -> None:
    for model in (Journey, JourneyStep):
        for signal in (post_save, post_delete):
            signal.connect(
                forget_journeys, sender=model, dispatch_uid=f"journeys-forget-{model.__name__}"
            )
    events_stored.connect(cancel_on_exit, sender=Event, dispatch_uid="journeys-cancel-on-exit")
    customer_opted_out.connect(
        await_dispatch_on_opt_out, sender=Customer, dispatch_uid="journeys-await-dispatch"
    )
