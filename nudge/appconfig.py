"""The base class of Nudge's app configs.

Each apps module imports this module, not the class: Django picks the one AppConfig subclass
an apps module defines or imports by name, and with two it would fall back to a plain
AppConfig (no ready(), no receivers). tests/packaging/test_packages.py pins this.
"""

from __future__ import annotations

from types import ModuleType

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured

from nudge import checks  # registers the installation check on import


class NudgeAppConfig(AppConfig):
    """Refuses, with a message that says what to do, a project where another app has this
    app's label or a package of the project's own shadows one of Nudge's (see nudge.checks):
    Django's own errors for these name neither app."""

    default_auto_field = "django.db.models.BigAutoField"

    def __init__(self, app_name: str, app_module: ModuleType | None) -> None:
        super().__init__(app_name, app_module)
        problem = checks.installation_problem(self.label, self.name)
        if problem is not None:
            raise ImproperlyConfigured(checks.installation_message(problem))
