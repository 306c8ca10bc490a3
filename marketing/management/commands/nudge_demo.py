"""`manage.py nudge_demo`: demo data and a marketer login for a first run (`make run`).

Each installed app may ship a `demo` module with `load_demo(*, stdout)`; they run in reverse
INSTALLED_APPS order, so the rules of later apps (journeys) are in place before the data of
earlier ones (marketing's customers) arrives, and the demo customers flow through the demo
journeys like real ones. Marketing never imports journeys.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandParser
from django.utils.module_loading import module_has_submodule

from marketing import services


class Command(BaseCommand):
    help = "Load demo data (idempotent) and create the marketer login; print how to log in."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="marketer")
        parser.add_argument(
            "--password",
            default=os.environ.get("NUDGE_DEMO_PASSWORD") or None,
            help="default: NUDGE_DEMO_PASSWORD (`make run` writes it into .env)",
        )
        parser.add_argument(
            "--admin-url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/admin/"
        )

    def handle(self, *args: Any, username: str, password: str | None, **options: Any) -> None:
        for app_config in reversed(list(apps.get_app_configs())):
            if app_config.module is not None and module_has_submodule(app_config.module, "demo"):
                import_module(f"{app_config.name}.demo").load_demo(stdout=self.stdout)
        # what the workers would do within a tick: the demo's journeys show their sends at once
        services.events_apply_pending()

        services.marketer_user_ensure(username=username, password=password)
        shown = password if password is not None else "(unchanged: set NUDGE_DEMO_PASSWORD)"
        self.stdout.write(
            self.style.SUCCESS(
                f"Marketer login: {username} / {shown}\nAdmin: {options['admin_url']}"
            )
        )
