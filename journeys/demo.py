"""Demo journeys for a first run, loaded by `manage.py nudge_demo`."""

from __future__ import annotations

from django.core.management.base import OutputWrapper

from journeys import services


def load_demo(*, stdout: OutputWrapper) -> None:
    summary = services.demo_journeys_ensure()
    slugs = summary.created + summary.updated
    stdout.write(f"Demo journeys: {', '.join(slugs)}.")
