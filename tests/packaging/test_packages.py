"""The wheel's package list (pyproject.toml) matches the tree: a new subpackage of an app is
not silently left out of the wheel, and the project's templates/ ship as nudge/templates."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.apps import apps

from nudge import checks
from nudge.appconfig import NudgeAppConfig

ROOT = Path(__file__).resolve().parents[2]
APPS = ("nudge", "marketing", "journeys", "media_tasks")


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _packages_in_tree() -> set[str]:
    found = set()
    for app in APPS:
        for init in (ROOT / app).rglob("*.py"):
            if "__pycache__" not in init.parts:
                found.add(".".join(init.parent.relative_to(ROOT).parts))
    return found


def test_every_package_of_the_apps_is_in_the_wheel_and_nothing_else():
    listed = set(_setuptools()["packages"])

    assert listed - {"nudge.templates"} == _packages_in_tree()


def test_every_package_of_the_apps_has_an_init_module():
    missing = [
        p
        for p in _packages_in_tree()
        if not (ROOT / p.replace(".", "/")).joinpath("__init__.py").is_file()
    ]

    assert missing == []


def test_the_top_level_templates_ship_inside_the_nudge_package():
    setuptools = _setuptools()

    assert setuptools["package-dir"] == {"nudge.templates": "templates"}
    assert setuptools["package-data"]["nudge.templates"] == ["**/*"]
    assert not (ROOT / "nudge" / "templates").exists()  # one place for them: templates/


@pytest.mark.parametrize(
    ("label", "config"),
    [
        ("nudge", "NudgeConfig"),
        ("marketing", "MarketingConfig"),
        ("journeys", "JourneysConfig"),
        ("media_tasks", "MediaTasksConfig"),
    ],
)
def test_each_app_runs_its_own_config_not_a_plain_one(label, config):
    """An apps module that names two AppConfig subclasses gets a plain AppConfig from Django:
    no ready(), so no receivers and no checks."""
    app_config = apps.get_app_config(label)

    assert type(app_config).__name__ == config
    assert isinstance(app_config, NudgeAppConfig)


def test_installation_check_names_a_missing_app_and_a_foreign_label(monkeypatch):
    """What a host's `manage.py check` says when it leaves out an app Nudge needs, or when
    an app of its own has a label of Nudge's but Nudge's app is not installed."""
    assert checks.installation_check(None) == []

    real_get_app_config = apps.get_app_config
    foreign = SimpleNamespace(name="shop.journeys", path="/srv/shop/journeys")
    monkeypatch.setattr(apps, "is_installed", lambda name: name != "django_q")
    monkeypatch.setattr(
        apps,
        "get_app_config",
        lambda label: foreign if label == "journeys" else real_get_app_config(label),
    )

    problems = checks.installation_check(None)

    assert [(p.id, p.msg.split(":")[0]) for p in problems] == [
        ("nudge.E010", "'django_q' is missing from INSTALLED_APPS"),
        (
            "nudge.E011",
            "The app label 'journeys' belongs to Nudge, but the app 'shop.journeys' "
            "(/srv/shop/journeys) has it.",
        ),
    ]
