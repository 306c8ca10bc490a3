from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand

from journeys.selectors import journeys_export


class Command(BaseCommand):
    help = "Print every journey as JSON (the journeys-as-code format journeys_import reads)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(json.dumps(journeys_export(), indent=2, ensure_ascii=False))
