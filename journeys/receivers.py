"""Journeys listen to marketing's events; marketing never imports journeys."""

from __future__ import annotations

from typing import Any

from journeys import services
from marketing.models import Event
from marketing.signals import event_recorded


def apply_event(sender: type, event: Event, **kwargs: Any) -> None:
    """Inside the event's transaction (see marketing.signals): enrolments and cancellations
    commit with the event, and a payment's cancellation locks the sends it cancels before
    the payment commits, so a racing dispatch either sees it or finishes first."""
    services.event_apply(event=event)


def connect() -> None:
    event_recorded.connect(apply_event, sender=Event, dispatch_uid="journeys-apply-event")
