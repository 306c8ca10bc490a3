from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from journeys import services


class Command(BaseCommand):
    help = (
        "Create or update journeys from a JSON file (as printed by journeys_export). "
        "Validates every journey first and writes nothing if any is invalid."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file", help="Path of the JSON file, or - for standard input.")
        parser.add_argument(
            "--replace",
            action="store_true",
            help="Deactivate active journeys that are absent from the file.",
        )
        parser.add_argument("--dry-run", action="store_true", help="Validate only; write nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["file"]
        try:
            if path == "-":
                data = json.load(sys.stdin)
            else:
                with open(path, encoding="utf-8") as handle:
                    data = json.load(handle)
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CommandError(f"{path} is not valid JSON: {exc}") from exc
        try:
            summary = services.journeys_import(
                data=data, replace=options["replace"], dry_run=options["dry_run"]
            )
        except services.JourneyImportError as exc:
            raise CommandError(
                f"nothing imported, {len(exc.errors)} problem(s):\n  " + "\n  ".join(exc.errors)
            ) from exc
        prefix = "would have " if options["dry_run"] else ""
        for label, slugs in (
            ("created", summary.created),
            ("updated", summary.updated),
            ("deactivated", summary.deactivated),
            ("caps saved", summary.caps_saved),
            ("caps deactivated", summary.caps_deactivated),
        ):
            if slugs:
                self.stdout.write(f"{prefix}{label}: {', '.join(slugs)}")
        if not (summary.created or summary.updated or summary.deactivated):
            self.stdout.write("no journeys in the file")
