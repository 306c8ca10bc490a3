"""`manage.py nudge_demo`: demo data and a marketer login for a first run (`make run`).

Each installed app may ship a `demo` module with `load_demo(*, stdout, reset)`; they run in
reverse INSTALLED_APPS order, so the rules of later apps (journeys) are in place before the
data of earlier ones (marketing's customers) arrives, and the demo customers flow through the
demo journeys like real ones. Each creates its demo once and then leaves it as a marketer
edited it; `--reset` restores it as shipped. The command lives in journeys, the app that
knows both: marketing never imports journeys.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandParser
from django.utils.module_loading import module_has_submodule

from journeys import services
from marketing import services as marketing_services


class Command(BaseCommand):
    help = (
        "Load the demo data and journeys once (a re-run leaves them as they are; --reset "
        "restores them as shipped) and create the marketer login; print how to log in."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reset",
            action="store_true",
            help="restore the demo journeys, customers and carts as shipped, over any edit",
        )
        parser.add_argument("--username", default="marketer")
        parser.add_argument(
            "--password",
            default=os.environ.get("NUDGE_DEMO_PASSWORD") or None,
            help="default: NUDGE_DEMO_PASSWORD (`make run` writes it into .env)",
        )
        parser.add_argument(
            "--admin-url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/admin/"
        )

    def handle(
        self, *args: Any, username: str, password: str | None, reset: bool, **options: Any
    ) -> None:
        for app_config in reversed(list(apps.get_app_configs())):
            if app_config.module is not None and module_has_submodule(app_config.module, "demo"):
                demo = import_module(f"{app_config.name}.demo")
                demo.load_demo(stdout=self.stdout, reset=reset)
        # what the workers would do within a tick: the demo's journeys show their sends at once
        services.events_apply_pending()

        marketing_services.marketer_user_ensure(username=username, password=password)
        shown = password if password is not None else "(unchanged: set NUDGE_DEMO_PASSWORD)"
        self.stdout.write(
            self.style.SUCCESS(
                f"Marketer login: {username} / {shown}\nAdmin: {options['admin_url']}"
            )
        )
