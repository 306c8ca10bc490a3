"""Retention of marketing's data: an event's payload, once applied and old enough, is cut
down to its skeleton (`event_payloads_purge`); the row stays, with its type, customer and
times, so every count of events (per type, per day, per customer) is kept. journeys.services
.retention picks the events (none whose customer still has a send to decide) and the days.
"""

from __future__ import annotations

from typing import Any

from django.db import connection

from marketing.models import Event
from marketing.services.columns import table

# --- the event payload's skeleton: its Python body and its SQL body, side by side -----------
# tests/marketing/test_retention.py feeds both the same payloads.


def payload_skeleton(payload: Any, *, purged: str) -> dict[str, Any]:
    """What is kept of a purged or erased event's payload: its id, type and time, its cart's
    id, its payment's id and cart id (journeys' exit rule and reasons read them), and
    `purged` ("retention" or "erasure"); keys without a value are left out."""
    payload = payload if isinstance(payload, dict) else {}
    kept: dict[str, Any] = {k: payload[k] for k in ("id", "type", "occurred_at") if k in payload}
    for part, keys in (("cart", ("id",)), ("payment", ("id", "cart_id"))):
        value = payload.get(part)
        if isinstance(value, dict):
            kept[part] = {k: value[k] for k in keys if value.get(k) is not None}
    kept["purged"] = purged
    return {k: v for k, v in kept.items() if v is not None}


_SKELETON_SQL = """jsonb_strip_nulls(jsonb_build_object(
    'id', payload->'id', 'type', payload->'type', 'occurred_at', payload->'occurred_at',
    'cart', CASE WHEN jsonb_typeof(payload->'cart') = 'object'
                 THEN jsonb_build_object('id', payload->'cart'->'id') END,
    'payment', CASE WHEN jsonb_typeof(payload->'payment') = 'object'
                    THEN jsonb_build_object('id', payload->'payment'->'id',
                                            'cart_id', payload->'payment'->'cart_id') END,
    'purged', %s::text))"""
_PURGE_PAYLOADS_SQL = f"""
UPDATE {table(Event)}
   SET payload = {_SKELETON_SQL}, apply_error = ''
 WHERE id = ANY(%s::bigint[]) AND applied_at IS NOT NULL AND NOT payload ? 'purged'
"""  # noqa: S608 - the model's table only, no input


def event_payloads_purge(*, event_ids: list[int], purged: str = "retention") -> int:
    """Cut the payloads of these events down to payload_skeleton(), but only of those already
    applied (a payload still to apply is still needed) and not purged yet; one statement on
    PostgreSQL. Returns how many were purged."""
    if not event_ids:
        return 0
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_PURGE_PAYLOADS_SQL, [purged, list(event_ids)])
            return cursor.rowcount
    events = list(
        Event.objects.filter(pk__in=event_ids, applied_at__isnull=False)
        .exclude(payload__has_key="purged")
        .only("id", "payload")
    )
    for event in events:
        event.payload = payload_skeleton(event.payload, purged=purged)
        event.apply_error = ""
    Event.objects.bulk_update(events, ["payload", "apply_error"])
    return len(events)
