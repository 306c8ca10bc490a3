"""`manage.py nudge_ticker [--once]`: the ticker (journeys.ticker) as a process.

SIGTERM or SIGINT (honcho's Ctrl-C, systemd's and Kubernetes' stop) ends it gracefully: the
batch in hand is claimed and enqueued, no new one is started, and the process exits 0 with
the log line `ticker: SIGTERM received, stopped after the tick in hand` (a tick is one batch
after the signal at most: well under a second). A second signal stops it at once; a batch
claimed and not yet enqueued then comes back after its lease (see journeys.ticker).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from journeys import ticker

logger = logging.getLogger("journeys.ticker")


class Command(BaseCommand):
    help = (
        "Run the ticker: every NUDGE_TICK_SECONDS, claim due scheduled sends and enqueue "
        "their dispatch on the messaging cluster. Safe to run on several machines. SIGTERM "
        "or SIGINT stops it after the batch in hand (exit status 0)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="Tick once and exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["once"]:
            count = ticker.tick()
            self.stdout.write(f"handed out {count} sends")
            return
        stop = threading.Event()
        received: list[str] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            # no I/O here (a write to a stream the main code is writing raises): the loop
            # logs once it has stopped
            if stop.is_set():  # the second signal: stop at once
                sys.exit(128 + signum)
            received.append(signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        self.stdout.write(
            f"ticker: every {settings.NUDGE_TICK_SECONDS}s, batches of {settings.NUDGE_CLAIM_BATCH}"
        )
        self.stdout.flush()
        ticker.run(stop=stop)
        logger.info(
            "ticker: %s received, stopped after the tick in hand",
            received[0] if received else "stop",
        )
        self.stdout.write("ticker: stopped")
