"""Compress images again: those abandoned in `processing`, those that failed, or given ids."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from media_tasks import services
from media_tasks.models import ImageStatus, UploadedImage


class Command(BaseCommand):
    help = "Requeue image compression: --stuck (abandoned by a dead worker), --failed, or ids."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", type=int, help="image ids to compress again")
        parser.add_argument("--stuck", action="store_true", help="images stuck in processing")
        parser.add_argument("--failed", action="store_true", help="images whose compression failed")
        parser.add_argument("--dry-run", action="store_true", help="list, do not queue")

    def handle(
        self, *args: Any, ids: list[int], stuck: bool, failed: bool, dry_run: bool, **options: Any
    ) -> None:
        if not (ids or stuck or failed):
            self.stderr.write("Nothing to do: give ids, --stuck or --failed.")
            return
        queued: list[int] = []
        if stuck:
            queued += services.image_requeue_stuck(dry_run=dry_run)
        targets = list(ids)
        if failed:
            targets += UploadedImage.objects.filter(status=ImageStatus.FAILED).values_list(
                "pk", flat=True
            )
        for image_id in targets:
            if dry_run or services.image_requeue(image_id=image_id):
                queued.append(image_id)
            else:
                self.stderr.write(f"image {image_id}: being processed now or unknown; skipped")
        verb = "would queue" if dry_run else "queued"
        self.stdout.write(f"{verb} {len(queued)} image(s): {', '.join(map(str, queued)) or '-'}")
