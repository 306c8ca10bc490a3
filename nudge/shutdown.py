"""Has this process been asked to stop? Set by the cluster's worker on SIGTERM (nudge.cluster);
long tasks read it to hand back the work they have not started (journeys' dispatch hands its
remaining sends to a new task) instead of running into the shutdown's grace period."""

from __future__ import annotations

import threading

_requested = threading.Event()


def request() -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()
