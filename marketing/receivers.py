"""Thin adapters: a customer, cart or payment the host saves becomes the same event a webhook
would have delivered, recorded after the host's transaction commits; so do the host's own
models named in NUDGE_HOST_EVENTS (marketing.host_sources)."""

from __future__ import annotations

from functools import partial
from typing import Any

from django.core.signals import setting_changed
from django.db import transaction
from django.db.models.signals import post_migrate, post_save

from marketing import host_sources, services
from marketing.models import Cart, Customer, Payment


def record_host_event(
    sender: type, instance: Any, created: bool, raw: bool = False, **kwargs: Any
) -> None:
    # webhook ingestion writes with SQL, which sends no post_save: no second event
    if not created or raw:
        return
    ids = {"customer_id": instance.pk}
    if isinstance(instance, Cart):
        ids = {"customer_id": instance.customer_id, "cart_id": instance.pk}
    elif isinstance(instance, Payment):
        ids = {"customer_id": instance.customer_id, "payment_id": instance.pk}
    # robust: the host's data is committed; an event its values cannot make valid (see
    # services.event_record) is logged by Django, never raised into the host's request
    transaction.on_commit(
        partial(
            services.event_record_host, event_type=services.HOST_EVENT_FOR_MODEL[sender], **ids
        ),
        robust=True,
    )


def sync_marketer_group(sender: Any, **kwargs: Any) -> None:
    """After each app migrates (its permissions now exist), rebuild the Marketer group."""
    services.marketer_group_sync()


def connect() -> None:
    for model in (Customer, Cart, Payment):
        post_save.connect(
            record_host_event, sender=model, dispatch_uid=f"nudge-host-event-{model.__name__}"
        )
    post_migrate.connect(sync_marketer_group, dispatch_uid="nudge-marketer-group")
    host_sources.connect()
    setting_changed.connect(host_sources.settings_changed, dispatch_uid="nudge-host-sources")
