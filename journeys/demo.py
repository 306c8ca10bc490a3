"""Demo journeys for a first run, loaded by `manage.py nudge_demo`.

Created once: a journey that is already there (a marketer may have edited its fields or
steps, or switched it off) is left as it is; `reset` restores all of them as shipped."""

from __future__ import annotations

import json

from django.core.management.base import OutputWrapper

from journeys import services
from journeys.models import Journey


def load_demo(*, stdout: OutputWrapper, reset: bool = False) -> None:
    shipped = json.loads(services.DEMO_JOURNEYS.read_text())["journeys"]
    slugs = [journey["slug"] for journey in shipped]
    found = set(Journey.objects.filter(slug__in=slugs).values_list("slug", flat=True))
    wanted = shipped if reset else [j for j in shipped if j["slug"] not in found]
    created: list[str] = []
    restored: list[str] = []
    if wanted:
        summary = services.journeys_import(data={"journeys": wanted})
        created, restored = summary.created, summary.updated
    left = [slug for slug in slugs if slug in found and slug not in restored]
    if created:
        stdout.write(f"Demo journeys: created {', '.join(created)}.")
    if restored:
        stdout.write(f"Demo journeys: restored as shipped: {', '.join(restored)}.")
    if left:
        stdout.write(
            f"Demo journeys: {', '.join(left)} already there, left as they are "
            "(use --reset to restore them as shipped)."
        )
