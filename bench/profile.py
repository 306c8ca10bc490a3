"""Where the time goes: pyinstrument profiles of the hot paths, in one process.

    make profile                     # all three, printed and written to bench/profiles/
    make profile ARGS="ingest"       # one or more of: ingest, batch, dispatch

Each scenario runs warm (Django loaded, journeys cached, the same preparation as a web
worker: config/gunicorn.py's post_worker_init) against the PostgreSQL that `make profile`
starts, and prints pyinstrument's call tree. They are the profiles bench/RESULTS.md cites
for the targets out of reach: single signed events against the no-op view, batches.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import runpy
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "profiles"


def _post(client: Any, path: str, body: bytes) -> None:
    from bench.run import signed_headers

    response = client.post(
        path,
        data=body,
        content_type="application/json",
        secure=True,
        HTTP_HOST="127.0.0.1",
        headers=signed_headers(body),
    )
    if response.status_code not in (200, 202, 207):
        raise SystemExit(f"profile: {path} answered {response.status_code}: {response.content!r}")


def ingest(client: Any, tag: str) -> tuple[Callable[[], None], str]:
    """Single signed events, a third each registrations, checkouts and payments."""
    from bench.run import _event

    now = datetime.now().astimezone()
    bodies = [
        json.dumps(_event(f"{tag}-{i}", f"{tag}u{i // 3}", i % 3, now)).encode() for i in range(900)
    ]

    def run() -> None:
        for body in bodies:
            _post(client, "/api/events/", body)

    return run, "900 single events through Django's full request handling"


def batch(client: Any, tag: str) -> tuple[Callable[[], None], str]:
    """Batches of 500, as the benchmark sends them (three events per customer)."""
    from bench.run import _event

    now = datetime.now().astimezone()
    bodies = [
        json.dumps(
            {
                "events": [
                    _event(f"{tag}-{b}-{i}", f"{tag}u{b}-{i // 3}", i % 3, now) for i in range(500)
                ]
            }
        ).encode()
        for b in range(20)
    ]

    def run() -> None:
        for body in bodies:
            _post(client, "/api/events/batch/", body)

    return run, "20 batches of 500 events"


def dispatch(client: Any, tag: str) -> tuple[Callable[[], None], str]:
    """5,000 due sends claimed, then dispatched as the workers do (tasks of 200, 100 a chunk)."""
    from django.utils import timezone

    from bench import data
    from journeys import services, tasks
    from journeys.models import Journey

    journey = Journey.objects.get(slug="welcome-email")
    due = timezone.now() - timedelta(seconds=5)
    step_id = journey.steps.get().pk
    data.sends_create(prefix=f"{tag}d", count=5000, journey_id=journey.pk, step_id=step_id, due=due)
    claimed: list[int] = []
    while got := services.scheduled_sends_claim_due(limit=500):
        claimed += got

    def run() -> None:
        for start in range(0, len(claimed), 200):
            tasks.scheduled_sends_dispatch(claimed[start : start + 200])

    return run, "5,000 due sends dispatched in tasks of 200"


SCENARIOS = {"ingest": ingest, "batch": batch, "dispatch": dispatch}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make profile ARGS=...", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="|".join(SCENARIOS))
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}: use {', '.join(SCENARIOS)}")
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("profile: run through `make profile` (it starts PostgreSQL)")
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "NUDGE_WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
            "LOG_LEVEL": "WARNING",
            "NUDGE_SEND_WINDOW": "",  # profiles of any hour: no quiet hours
        }
    )
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client
    from pyinstrument import Profiler

    from journeys.services import demo_journeys_ensure

    call_command("migrate", verbosity=0)
    demo_journeys_ensure()
    client = Client()
    warm, _ = ingest(client, "warm")
    warm()
    runpy.run_path(str(ROOT / "config" / "gunicorn.py"))["post_worker_init"](worker=None)
    OUT.mkdir(exist_ok=True)
    for name in args.scenarios or SCENARIOS:
        run, what = SCENARIOS[name](client, f"p{name}")
        profiler = Profiler(interval=0.0005)
        started = time.perf_counter()
        profiler.start()
        run()
        profiler.stop()
        elapsed = time.perf_counter() - started
        show_all = os.environ.get("PROFILE_ALL") == "1"  # Django's frames too
        text = profiler.output_text(unicode=True, color=False, show_all=show_all)
        report = f"# {name}: {what}, {elapsed:.2f} s in one process (profiled)\n\n{text}"
        (OUT / f"{name}.txt").write_text(report)
        print(report)


if __name__ == "__main__":
    main()
