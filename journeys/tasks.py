"""django-q2 entry points: take ids, call one service."""

from __future__ import annotations

from collections import Counter

from journeys import services


def scheduled_sends_dispatch(send_ids: list[int]) -> dict[str, int]:
    """Dispatch a chunk of claimed sends; the outcome counts end up in the task result."""
    return dict(Counter(services.scheduled_sends_dispatch(send_ids=send_ids).values()))
