"""`manage.py nudge_reconcile [--dry-run] [--after SECONDS]`: the sweeper (journeys.reconcile)
on demand, with its report."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from journeys import reconcile


class Command(BaseCommand):
    help = (
        "Find the sends and events the ticker left behind (pending sends overdue, sends "
        "stuck in flight past their lease, events not applied past their lease) and hand "
        "them out to the messaging workers, as the sweeper's schedule does every "
        "NUDGE_RECONCILE_MINUTES. Prints one line per kind: how many, the oldest's age, "
        "how many were handed out. Safe while tickers run: no row is handed out twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="report what it finds; change nothing"
        )
        parser.add_argument(
            "--after",
            type=int,
            metavar="SECONDS",
            help="how long past due a row counts as left behind (NUDGE_RECONCILE_AFTER_SECONDS)",
        )
        parser.add_argument(
            "--budget",
            type=float,
            default=300.0,
            metavar="SECONDS",
            help="stop handing out after this long; the rest waits for the next run (300)",
        )

    def handle(
        self, *args: Any, dry_run: bool, after: int | None, budget: float, **options: Any
    ) -> None:
        if after is not None and after < 0:
            raise CommandError("--after must be 0 or more seconds")
        result = reconcile.queues_reconcile(
            dry_run=dry_run,
            after=None if after is None else timedelta(seconds=after),
            budget_seconds=budget,
        )
        for line in result.lines():
            self.stdout.write(line)
