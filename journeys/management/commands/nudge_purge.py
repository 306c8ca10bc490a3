"""`manage.py nudge_purge [--dry-run]`: what the daily schedule runs (journeys.services
.retention), on demand: event payloads and message bodies past their retention period."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from journeys.services.retention import retention_purge


class Command(BaseCommand):
    help = (
        "Purge event payloads older than NUDGE_RETENTION_EVENT_PAYLOAD_DAYS and sent "
        "messages' recipients, subjects and bodies older than NUDGE_RETENTION_MESSAGE_BODY_DAYS "
        "(0: kept for ever), in batches of NUDGE_RETENTION_BATCH rows; the rows stay, so "
        "every count is kept. Nothing a send still to decide or an event still to apply "
        "needs is purged."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be purged; change nothing"
        )

    def handle(self, *args: Any, dry_run: bool, **options: Any) -> None:
        report = retention_purge(dry_run=dry_run)
        self.stdout.write(
            f"{report.summary()} (payloads after {settings.NUDGE_RETENTION_EVENT_PAYLOAD_DAYS} "
            f"days, bodies after {settings.NUDGE_RETENTION_MESSAGE_BODY_DAYS} days; 0: kept)"
        )
