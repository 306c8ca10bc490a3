"""Production settings (DEBUG=false, real secrets) pass `manage.py check --deploy` cleanly."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from tests.servers import PROJECT
from tests.webhook_client import SECRET


def run_check(**environment: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in {"DEBUG", "SECRET_KEY"}}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings", **environment},
        capture_output=True,
        text=True,
        check=False,
    )


def production_environment() -> dict[str, str]:
    return {
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "NUDGE_WEBHOOK_SECRET": SECRET,
        "ALLOWED_HOSTS": "nudge.example.com",
    }


def test_production_settings_pass_check_deploy_with_no_warnings():
    result = run_check(**production_environment())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_when_the_webhook_secret_is_missing():
    result = run_check(**{**production_environment(), "NUDGE_WEBHOOK_SECRET": ""})

    assert result.returncode != 0
    assert "nudge.W001" in result.stderr


def test_check_refuses_a_malformed_webhook_secret():
    result = run_check(**{**production_environment(), "NUDGE_WEBHOOK_SECRET": "whsec_short"})

    assert result.returncode != 0
    assert "nudge.E001" in result.stderr
