from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from journeys import ticker


class Command(BaseCommand):
    help = (
        "Run the ticker: every NUDGE_TICK_SECONDS, claim due scheduled sends and enqueue "
        "their dispatch on the messaging cluster. Safe to run on several machines."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="Tick once and exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["once"]:
            count = ticker.tick()
            self.stdout.write(f"handed out {count} sends")
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write(
            f"ticker: every {settings.NUDGE_TICK_SECONDS}s, batches of {settings.NUDGE_CLAIM_BATCH}"
        )
        ticker.run(stop=stop)
        self.stdout.write("ticker: stopped")
