"""django-q2 entry points: take ids, call one service."""

from __future__ import annotations

from marketing import services


def events_apply(event_ids: list[int]) -> int:
    """Apply a chunk of claimed events to journeys; the count ends up in the task result."""
    return services.events_apply(event_ids=event_ids)
