"""Admin logins are rate-limited (django-axes): after NUDGE_LOGIN_FAILURE_LIMIT failures for
one username from one address, that login is locked for NUDGE_LOGIN_COOLOFF_MINUTES, the
right password too, with a page that says so (429, never a 500)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.test import Client, RequestFactory

from nudge.login import client_ip
from tests.servers import PROJECT

pytestmark = pytest.mark.django_db

PASSWORD = "the-Right-passw0rd"


@pytest.fixture(autouse=True)
def axes_on(settings):
    """On as in production (config/settings_test.py switches it off for client.login())."""
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 5
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    settings.NUDGE_TRUSTED_PROXIES = 0


@pytest.fixture
def staff() -> User:
    return User.objects.create_user("marketer", password=PASSWORD, is_staff=True)


def login(client: Client, password: str, username: str = "marketer", **extra):
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": password, "next": "/admin/"},
        **extra,
    )


def logged_in(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def test_five_failed_logins_lock_out_the_right_password_with_a_clear_page(staff):
    client = Client(raise_request_exception=False)
    for attempt in range(4):
        assert login(client, f"wrong-{attempt}").status_code == 200  # the form, with its error
    assert login(client, "wrong-4").status_code == 429  # the fifth locks

    response = login(client, PASSWORD)

    assert response.status_code == 429
    page = response.content.decode()
    assert "Login locked" in page
    assert "Too many failed logins for “marketer”" in page
    assert "Try again in 15 minutes." in page
    assert "axes_reset_username marketer" in page
    assert response["Retry-After"] == "900"
    assert not logged_in(client)


def test_the_lock_is_for_that_username_from_that_address_only(staff):
    attacker = Client(raise_request_exception=False, REMOTE_ADDR="198.51.100.9")
    for attempt in range(5):
        login(attacker, f"wrong-{attempt}")
    assert login(attacker, PASSWORD).status_code == 429

    colleague = Client(REMOTE_ADDR="192.0.2.20")
    assert login(colleague, PASSWORD).status_code == 302
    assert logged_in(colleague)


def test_fewer_failures_than_the_limit_then_the_right_password_logs_in_and_resets(staff):
    client = Client()
    for attempt in range(4):
        login(client, f"wrong-{attempt}")

    assert login(client, PASSWORD).status_code == 302
    assert logged_in(client)
    assert AccessAttempt.objects.count() == 0  # AXES_RESET_ON_SUCCESS


def test_after_the_cool_off_the_right_password_logs_in(staff):
    client = Client(raise_request_exception=False)
    for attempt in range(5):
        login(client, f"wrong-{attempt}")
    AccessAttempt.objects.update(
        attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16)
    )

    assert login(client, PASSWORD).status_code == 302
    assert logged_in(client)


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_one_locked(settings, staff):
    settings.NUDGE_TRUSTED_PROXIES = 1
    proxy = {"REMOTE_ADDR": "10.0.0.2"}  # every request arrives from the proxy
    attacker = Client(raise_request_exception=False, **proxy)
    for attempt in range(5):
        # the client's own X-Forwarded-For entry (left) is ignored; the proxy's (right) counts
        login(attacker, f"wrong-{attempt}", HTTP_X_FORWARDED_FOR=f"10.9.9.{attempt}, 198.51.100.9")
    assert (
        login(attacker, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.1, 198.51.100.9").status_code
        == 429
    )

    colleague = Client(**proxy)
    assert login(colleague, PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.20").status_code == 302


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "203.0.113.7", "10.0.0.2"),  # no proxy trusted: the header is the client's own
        (1, "203.0.113.7", "203.0.113.7"),
        (1, "6.6.6.6, 203.0.113.7", "203.0.113.7"),
        (2, "6.6.6.6, 203.0.113.7, 10.0.0.1", "203.0.113.7"),
        (3, "203.0.113.7, 10.0.0.1", "203.0.113.7"),  # fewer entries than proxies
        (1, None, "10.0.0.2"),
        (1, " , ", "10.0.0.2"),
    ],
)
def test_client_ip_trusts_only_the_configured_proxies(settings, proxies, forwarded, expected):
    settings.NUDGE_TRUSTED_PROXIES = proxies
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", **headers)

    assert client_ip(request) == expected


def test_the_settings_come_from_the_environment():
    probe = (
        "from django.conf import settings; "
        "print(settings.AXES_ENABLED, settings.AXES_FAILURE_LIMIT, settings.AXES_COOLOFF_TIME, "
        "settings.NUDGE_TRUSTED_PROXIES, settings.AXES_LOCKOUT_PARAMETERS, "
        "settings.AUTHENTICATION_BACKENDS[0])"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "NUDGE_ENV_FILE": os.devnull,
        "NUDGE_LOGIN_FAILURE_LIMIT": "8",
        "NUDGE_LOGIN_COOLOFF_MINUTES": "30",
        "NUDGE_TRUSTED_PROXIES": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {probe}"],
        cwd=PROJECT, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    assert out.split("\n")[-2] == (
        "True 8 0:30:00 1 [['username', 'ip_address']] axes.backends.AxesStandaloneBackend"
    )
