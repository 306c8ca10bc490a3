"""`manage.py customer_erase <external id>... [--dry-run]`: erase customers' personal data
(journeys.services.erasure), one line per customer with what was erased in each table."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from journeys.services.erasure import customer_erase


class Command(BaseCommand):
    help = (
        "Erase the personal data of the customers with these external ids: their profile, "
        "their events' payloads, their carts' URLs and items, their sends' rendered messages "
        "and addresses; their pending sends are cancelled, and hashed suppression entries of "
        "their id, email and phone keep any later event from messaging them. The rows stay, "
        "so counts and revenue are kept. Running it again changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("external_ids", nargs="+", metavar="external_id")
        parser.add_argument(
            "--dry-run", action="store_true", help="say what would be erased; change nothing"
        )

    def handle(self, *args: Any, external_ids: list[str], dry_run: bool, **options: Any) -> None:
        unknown = []
        for external_id in external_ids:
            report = customer_erase(external_id=external_id, dry_run=dry_run)
            if not report.found and not report.already_erased:
                unknown.append(external_id)
                self.stderr.write(report.summary())
                continue
            self.stdout.write(report.summary())
        if unknown:
            raise CommandError(f"no customer with the external id(s): {', '.join(unknown)}")
