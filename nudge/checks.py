"""How a host project installs Nudge: its apps listed, and their labels and packages Nudge's.

Nudge's apps keep the labels `marketing`, `journeys` and `media_tasks` (the README, "App
labels", says why). A project whose own app already has one of these labels, or whose own
top-level package has one of these names, cannot install Nudge beside it. Django finds
both while it loads the apps, before any system check can run, and says only "Application
labels aren't unique, duplicates: marketing" or "cannot import name ... from
'marketing.models'". So each of Nudge's app configs calls `installation_problem()` as it is
created and raises the message below instead; the system check repeats the test for what
loads without an error (an app of the project's own that took a label Nudge's apps need).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from django.apps import apps
from django.core.checks import CheckMessage, Error, Warning, register

# Nudge's packages, which are also its app labels.
NUDGE_PACKAGES = ("nudge", "marketing", "journeys", "media_tasks")
# What Nudge's apps cannot work without (media_tasks is optional: images only).
REQUIRED_APPS = ("rest_framework", "django_q", "nudge", "marketing", "journeys")

_HINT = (
    "Nudge's apps have the fixed labels and top-level packages marketing, journeys and "
    "media_tasks. Give your own app another label (AppConfig.label, with Meta.db_table on "
    "its models to keep its tables), or move your own package inside your project's "
    "package. See the README, 'Install Nudge into your Django project'."
)


def _nudge_root() -> Path:
    """The directory that holds Nudge's packages: site-packages, or the project's checkout."""
    return Path(__file__).resolve().parent.parent


def _is_nudges(path: str | Path) -> bool:
    return Path(path).resolve().parent == _nudge_root()


def installation_problem(label: str, name: str) -> str | None:
    """Why Nudge's app `name` (label `label`) cannot be installed in this project, if it
    cannot: an app created before it has its label, or a package of the project's own
    shadows one of Nudge's. Called while the app registry is being populated."""
    taken = apps.app_configs.get(label)
    if taken is not None and taken.name != name:
        return (
            f"The app label '{label}' of Nudge's app '{name}' is already used by the app "
            f"'{taken.name}' ({taken.path})."
        )
    for package in NUDGE_PACKAGES:
        spec = importlib.util.find_spec(package)
        origin = spec.origin if spec is not None else None
        if origin is not None and not _is_nudges(Path(origin).parent):
            return (
                f"The package '{package}' imported from {Path(origin).parent} is not Nudge's "
                f"(Nudge's packages are in {_nudge_root()})."
            )
    return None


def installation_message(problem: str) -> str:
    return f"{problem} {_HINT}"


@register()
def installation_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    problems: list[CheckMessage] = []
    for name in REQUIRED_APPS:
        if not apps.is_installed(name):
            problems.append(
                Error(
                    f"'{name}' is missing from INSTALLED_APPS: Nudge needs it.",
                    hint="INSTALLED_APPS += ['rest_framework', 'nudge', 'django_q', "
                    "'marketing', 'journeys', 'media_tasks']",
                    id="nudge.E010",
                )
            )
    for label in NUDGE_PACKAGES:
        try:
            config = apps.get_app_config(label)
        except LookupError:
            continue
        if config.name != label or not _is_nudges(config.path):
            problems.append(
                Error(
                    f"The app label '{label}' belongs to Nudge, but the app '{config.name}' "
                    f"({config.path}) has it.",
                    hint=_HINT,
                    id="nudge.E011",
                )
            )
    return problems


@register()
def cluster_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """`manage.py qcluster` is the first installed app's: Nudge's only when 'nudge' comes
    before 'django_q' (nudge/cluster.py says why django-q2's own must not run the sends)."""
    names = [config.name for config in apps.get_app_configs()]
    if "nudge" in names and "django_q" in names and names.index("django_q") < names.index("nudge"):
        return [
            Warning(
                "'django_q' comes before 'nudge' in INSTALLED_APPS, so `manage.py qcluster` "
                "runs django-q2's own cluster, which a single killed worker can stall for good.",
                hint="List 'nudge' before 'django_q' in INSTALLED_APPS.",
                id="nudge.W020",
            )
        ]
    return []
