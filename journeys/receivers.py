"""Journeys listen to marketing's `events_stored` and `customer_opted_out` (marketing never
imports journeys), to their own models' saves, to django-anymail's `tracking` (an ESP's
delivery feedback) and to `post_migrate` (the sweeper's schedule). Applying stored events is
not a signal: journeys' ticker and task call marketing's verbs (services.applying)."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db import connections
from django.db.models.signals import post_delete, post_migrate, post_save
from django.utils import timezone
from django_q.models import Schedule

from journeys import reconcile, selectors, services
from journeys.models import Journey, JourneyStep
from journeys.services import retention, stats
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


# anymail's event types that move a send's delivery status ("deferred", a soft bounce, does
# not; "rejected" by the ESP itself and "failed" are not deliveries and suppress nothing)
_ANYMAIL_STATUSES = {
    "delivered": "delivered",
    "bounced": "bounced",
    "complained": "complained",
    "unsubscribed": "unsubscribed",
    "rejected": "undelivered",
    "failed": "failed",
}


def record_esp_tracking(sender: type, event: Any, esp_name: str, **kwargs: Any) -> None:
    """An ESP's tracking event, already authenticated and parsed by anymail's webhook."""
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    send_id = str(metadata.get("nudge_send_id", ""))
    if event.event_type in services.ENGAGEMENTS:
        services.send_engagement_record(
            provider=f"anymail.{sender.__module__.rpartition('.')[2]}",
            provider_message_id=str(event.message_id or ""),
            engagement=event.event_type,
            occurred_at=event.timestamp or timezone.now(),
            send_id=int(send_id) if send_id.isdigit() else None,
        )
        return
    status = _ANYMAIL_STATUSES.get(event.event_type)
    if status is None:
        return
    detail = event.description or event.mta_response or event.reject_reason or ""
    services.send_delivery_record(
        provider=f"anymail.{sender.__module__.rpartition('.')[2]}",
        provider_message_id=str(event.message_id or ""),
        status=status,
        detail=str(detail),
        occurred_at=event.timestamp or timezone.now(),
        send_id=int(send_id) if send_id.isdigit() else None,
    )


def forget_journeys(sender: type, **kwargs: Any) -> None:
    selectors.journeys_forget()


def ensure_reconcile_schedule(sender: Any, using: str, **kwargs: Any) -> None:
    """After every `migrate` (on each deploy): the sweeper's schedule, exactly once."""
    if Schedule._meta.db_table in connections[using].introspection.table_names():
        reconcile.queues_reconcile_schedule_ensure(using=using)


def ensure_retention_schedule(sender: Any, using: str, **kwargs: Any) -> None:
    """After every `migrate`: the daily retention purge's schedule, exactly once."""
    if Schedule._meta.db_table in connections[using].introspection.table_names():
        retention.retention_schedule_ensure(using=using)


def ensure_stats_schedule(sender: Any, using: str, **kwargs: Any) -> None:
    """After every `migrate`: the stats rollup's schedule, exactly once."""
    if Schedule._meta.db_table in connections[using].introspection.table_names():
        stats.journey_stats_schedule_ensure(using=using)


def connect() -> None:
    post_migrate.connect(
        ensure_stats_schedule,
        sender=apps.get_app_config("journeys"),
        dispatch_uid="journeys-stats-schedule",
    )
    post_migrate.connect(
        ensure_retention_schedule,
        sender=apps.get_app_config("journeys"),
        dispatch_uid="journeys-retention-schedule",
    )
    post_migrate.connect(
        ensure_reconcile_schedule,
        sender=apps.get_app_config("journeys"),
        dispatch_uid="journeys-reconcile-schedule",
    )
    for model in (Journey, JourneyStep):
        for signal in (post_save, post_delete):
            signal.connect(
                forget_journeys, sender=model, dispatch_uid=f"journeys-forget-{model.__name__}"
            )
    events_stored.connect(cancel_on_exit, sender=Event, dispatch_uid="journeys-cancel-on-exit")
    customer_opted_out.connect(
        await_dispatch_on_opt_out, sender=Customer, dispatch_uid="journeys-await-dispatch"
    )
    try:
        from anymail.signals import tracking
    except ImportError:  # anymail is optional in a host project
        return
    tracking.connect(record_esp_tracking, dispatch_uid="journeys-esp-tracking")
