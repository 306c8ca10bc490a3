"""A shop installs Nudge from its wheel into its own Django project.

The wheel is built from the working tree, installed with its dependencies into a fresh
virtualenv, and used by tests/packaging/hostproject: Django's defaults, a `shop` app with an
`Order` model, `INSTALLED_APPS += [...]`, one `include("nudge.urls")` and the few settings
that have no default. Nothing of config/ (the standalone site) is importable there.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port
from tests.webhook_client import SECRET, event, signed_headers

# One worker builds the wheel and the shop's virtualenv (module fixtures) for every test here.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]

ROOT = Path(__file__).resolve().parents[2]
HOST_PROJECT = Path(__file__).resolve().parent / "hostproject"
APPS = ("nudge", "marketing", "journeys", "media_tasks")


def _run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        **kwargs,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the working tree as it is (tracked and new files), built from a copy so
    that the build leaves nothing in the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    listed = _run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():  # not a file deleted in the working tree
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
        "-w", work / "dist", source,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = (work / "dist").glob("nudge-*.whl")
    return found


@dataclass
class Host:
    """The shop's project in its own virtualenv."""

    root: Path
    python: Path
    env: dict[str, str]

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = _run(self.python, "manage.py", *args, cwd=self.root, env=self.env)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def shell(self, code: str, *, settings: str = "hostproject.settings") -> Any:
        """Run `code` in `manage.py shell`; it prints one JSON document, returned here."""
        result = _run(
            self.python, "manage.py", "shell", "-c", code,
            cwd=self.root, env={**self.env, "DJANGO_SETTINGS_MODULE": settings},
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def host(tmp_path_factory, wheel) -> Host:
    work = tmp_path_factory.mktemp("host")
    venv = work / "venv"
    assert _run(sys.executable, "-m", "venv", venv).returncode == 0
    python = venv / "bin" / "python"
    started = time.monotonic()
    installed = _run(
        python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    print(f"wheel and dependencies installed in {time.monotonic() - started:.1f}s")
    root = work / "shop"
    shutil.copytree(HOST_PROJECT, root, ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(work),
        "SHOP_DATABASE": str(work / "shop.sqlite3"),
        "NUDGE_WEBHOOK_SECRET": SECRET,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    shop = Host(root=root, python=python, env=env)
    shop.manage("makemigrations", "shop")
    shop.manage("migrate", "--noinput")
    return shop


@pytest.fixture(scope="module")
def server(host) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [str(host.python), "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=host.root,
        env=host.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/nudge/sends/", timeout=5)
            except urllib.error.HTTPError:
                break  # answered (401: no credentials)
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "runserver did not answer"
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def _request(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None):
    """(status, JSON body, or the text of a non-JSON one such as Django's 404 page)."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def test_wheel_holds_the_apps_their_data_and_templates_and_not_the_site(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())

    in_tree = {
        str(path.relative_to(ROOT))
        for app in APPS
        for path in (ROOT / app).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert in_tree - names == set()  # every module, migration and command
    assert "journeys/demo_journeys.json" in names
    templates = {
        "nudge/templates/" + str(path.relative_to(ROOT / "templates"))
        for path in (ROOT / "templates").rglob("*")
        if path.is_file()
    }
    assert templates - names == {"nudge/templates/admin/base_site.html"}  # the site's branding
    assert "nudge/templates/admin/journeys/journey/change_form.html" in names
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == set(APPS)  # no config/, bench/, scripts/ or tests/


def test_host_project_passes_the_checks_and_needs_no_migration_of_nudges(host):
    checked = host.manage("check", "--fail-level", "WARNING")
    assert "no issues" in checked.stdout
    assert host.manage("makemigrations", "--check", "--dry-run").returncode == 0
    site = host.shell(
        "import importlib.util, json; "
        "print(json.dumps([importlib.util.find_spec(m) is not None for m in "
        "('config', 'environ', 'gunicorn', 'whitenoise', 'honcho')]))"
    )
    assert site == [False] * 5  # the standalone site and its [site] extra stay out


def test_signed_event_posted_to_the_host_is_stored(host, server):
    body = json.dumps(event("evt_shop_1", user_id="u_wheel")).encode()
    headers = {"Content-Type": "application/json", **signed_headers(body)}

    status, answer = _request(f"{server}/nudge/events/", data=body, headers=headers)

    assert status == 202, answer
    stored = host.shell(
        "import json; from marketing.models import Event; "
        "print(json.dumps(list(Event.objects.filter(event_id='evt_shop_1')"
        ".values_list('type', flat=True))))"
    )
    assert stored == ["user_registered"]


def test_unsigned_event_is_refused_by_the_host(server):
    body = json.dumps(event("evt_shop_unsigned")).encode()

    status, _ = _request(
        f"{server}/nudge/events/", data=body, headers={"Content-Type": "application/json"}
    )

    assert status == 401


def test_sends_and_media_apis_work_under_drfs_default_settings(host, server):
    host.manage("shell", "-c", _CREATE_STAFF)
    basic = base64.b64encode(b"staff:staff-password-1").decode()

    status, page = _request(f"{server}/nudge/sends/", headers={"Authorization": f"Basic {basic}"})
    anonymous, _ = _request(f"{server}/nudge/sends/")
    image_status, _ = _request(f"{server}/nudge/media/1/")
    schema_status, _ = _request(f"{server}/nudge/schema/")

    assert status == 200, page
    assert set(page) == {"count", "next", "previous", "results"}  # paginated, 100 a page
    assert anonymous in (401, 403)
    assert image_status in (401, 403)  # not DRF's default AllowAny
    assert schema_status == 404  # DRF's own schema class: no drf-spectacular schema


def test_schema_and_docs_of_nudges_endpoints_where_the_host_uses_drf_spectacular(host):
    answers = host.shell(_SCHEMA_AND_DOCS, settings="hostproject.settings_spectacular")

    assert answers["schema"] == 200
    assert {"/nudge/events/", "/nudge/events/batch/", "/nudge/sends/"} <= set(answers["paths"])
    assert not any(path.startswith("/admin") for path in answers["paths"])
    assert {"202", "401", "503"} <= set(answers["event_answers"])
    assert answers["docs"] == 200
    assert answers["docs_use_a_cdn"] is False


_SCHEMA_AND_DOCS = """
import json
from django.test import Client
schema = Client().get("/nudge/schema/", {"format": "json"})
docs = Client().get("/nudge/docs/")
paths = schema.json()["paths"]
print(json.dumps({
    "schema": schema.status_code, "paths": sorted(paths),
    "event_answers": sorted(paths["/nudge/events/"]["post"]["responses"]),
    "docs": docs.status_code, "docs_use_a_cdn": b"cdn" in docs.content.lower(),
}))
"""

_CREATE_STAFF = """
from django.contrib.auth.models import Permission, User
staff, _ = User.objects.get_or_create(username="staff", defaults={"is_staff": True})
staff.set_password("staff-password-1")
staff.save()
staff.user_permissions.add(Permission.objects.get(codename="view_scheduledsend"))
"""

# The shop's own code: a customer signs up, later pays an order. Nudge hears of both through
# NUDGE_HOST_EVENTS (post_save, after commit); the workers' apply step runs here in-process.
_SIGN_UP_AND_PAY = """
import json
from decimal import Decimal
from django.contrib.auth.models import User
from django.utils import timezone
from journeys.models import ScheduledSend
from journeys.services import events_apply_pending
from marketing.models import Event
from shop.models import Order

user = User.objects.create_user("ada", email="ada@example.com", first_name="Ada")
events_apply_pending()
sends = ScheduledSend.objects.filter(customer__external_id=str(user.pk))
after_sign_up = list(sends.values_list("journey__slug", "status"))
order = Order.objects.create(customer=user, total=Decimal("42.00"))
order.status = Order.Status.PAID
order.paid_at = timezone.now()
order.save()
order.save()  # saved again: the event is recorded once
events_apply_pending()
print(json.dumps({
    "events": sorted(Event.objects.filter(customer__external_id=str(user.pk))
                     .values_list("type", flat=True)),
    "after_sign_up": after_sign_up,
    "after_payment": list(sends.values_list("status", flat=True)),
}))
"""


def test_host_models_feed_a_journey_and_cancel_its_send(host):
    host.manage("journeys_import", "shop/journeys.json")

    story = host.shell(_SIGN_UP_AND_PAY)

    assert story["events"] == ["payment_finished", "user_registered"]
    assert story["after_sign_up"] == [["shop-welcome", "pending"]]
    assert story["after_payment"] == ["cancelled"]


@pytest.mark.parametrize(
    ("apps_before", "apps_after", "package", "message"),
    [
        (
            ["promotions"],
            [],
            None,
            "The app label 'marketing' of Nudge's app 'marketing' is already used by the app "
            "'promotions'",
        ),
        # Listed after Nudge's apps, the shop's app meets Django's own error.
        ([], ["promotions"], None, "Application labels aren't unique, duplicates: marketing"),
        ([], [], "marketing", "The package 'marketing' imported from"),
    ],
    ids=["label-taken-first", "label-taken-after", "package-shadowed"],
)
def test_a_shop_app_or_package_named_like_nudges_is_refused_with_the_reason(
    host, tmp_path, apps_before, apps_after, package, message
):
    """Nudge keeps its labels (README, "Install Nudge into your Django project"); a shop
    whose own app or package takes one is told which, and what to do."""
    root = tmp_path / "shop"
    shutil.copytree(host.root, root)
    (root / "promotions").mkdir()
    (root / "promotions" / "__init__.py").touch()
    (root / "promotions" / "apps.py").write_text(
        "from django.apps import AppConfig\n\n\n"
        "class PromotionsConfig(AppConfig):\n"
        '    name = "promotions"\n'
        '    label = "marketing"\n'
    )
    if package:
        (root / package).mkdir()
        (root / package / "__init__.py").touch()
    (root / "hostproject" / "settings_collision.py").write_text(
        "from hostproject.settings import *  # noqa: F403\n\n"
        f"INSTALLED_APPS = {apps_before!r} + INSTALLED_APPS + {apps_after!r}  # noqa: F405\n"
    )
    env = {**host.env, "DJANGO_SETTINGS_MODULE": "hostproject.settings_collision"}

    result = _run(host.python, "manage.py", "check", cwd=root, env=env)

    assert result.returncode != 0
    assert message in result.stderr
    if message.startswith("The "):
        assert "See the README, 'Install Nudge into your Django project'." in result.stderr
