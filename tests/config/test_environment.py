"""`make run` and manage.py: a variable set in the environment wins over `.env`, and `.env`
fills in what the environment leaves unset."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.servers import PROJECT, free_port

FROM_ENVIRONMENT = "whsec_ZnJvbS10aGUtZW52aXJvbm1lbnQtMDEyMzQ1Njc4OTAx"
FROM_DOTENV = "whsec_ZnJvbS1kb3RlbnYtMDEyMzQ1Njc4OTAxMjM0NTY3ODk="

# What a process sees before Django starts (gunicorn's configuration reads WEB_CONCURRENCY
# so), then what Django's settings make of it.
PROBE = (
    'python -c \'import os; print("raw", os.environ.get("NUDGE_WEBHOOK_SECRET"), '
    'os.environ.get("WEB_CONCURRENCY"))\' && '
    f"python {PROJECT / 'manage.py'} shell --verbosity=0 -c 'from django.conf import settings; "
    'print("settings", *settings.NUDGE_WEBHOOK_SECRETS, settings.DEBUG)\''
)


def write_dotenv(directory: Path) -> Path:
    path = directory / ".env"
    path.write_text(
        f"NUDGE_WEBHOOK_SECRET={FROM_DOTENV}\nWEB_CONCURRENCY=3\nDEBUG=true\n", encoding="utf-8"
    )
    return path


def environment(dotenv: Path) -> dict[str, str]:
    unset = {"NUDGE_WEBHOOK_SECRET", "WEB_CONCURRENCY", "DEBUG", "NUDGE_ENV_FILE"}
    env = {key: value for key, value in os.environ.items() if key not in unset}
    return {
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "NUDGE_ENV_FILE": str(dotenv),
        "NUDGE_WEBHOOK_SECRET": FROM_ENVIRONMENT,
    }


def test_every_process_make_run_starts_sees_the_environment_over_dotenv(tmp_path):
    """The command line of `make run` (scripts/start.py, which runs honcho), with a Procfile
    of one probe, started where a `.env` says otherwise: honcho would read it by default."""
    dotenv = write_dotenv(tmp_path)
    (tmp_path / "Procfile").write_text(f"probe: {PROBE}\n", encoding="utf-8")
    makefile = (PROJECT / "Makefile").read_text(encoding="utf-8")
    assert "scripts/start.py --procfile Procfile" in makefile  # the line this test runs

    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT / "scripts" / "start.py"),
            "--procfile",
            "Procfile",
            "--port",
            str(free_port()),
            "--no-colour",
        ],
        cwd=tmp_path,
        env=environment(dotenv),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(rf"\| raw {re.escape(FROM_ENVIRONMENT)} 3$", output, re.M), output
    assert re.search(rf"\| settings {re.escape(FROM_ENVIRONMENT)} True$", output, re.M), output
    assert FROM_DOTENV not in output


def test_manage_py_commands_see_the_environment_over_dotenv(tmp_path):
    """`make run` runs migrate and nudge_demo before honcho: the settings read `.env` without
    overwriting what is set."""
    dotenv = write_dotenv(tmp_path)

    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "--verbosity=0",
            "-c",
            "import os; from django.conf import settings; "
            "print(*settings.NUDGE_WEBHOOK_SECRETS, settings.DEBUG, os.environ['WEB_CONCURRENCY'])",
        ],
        cwd=PROJECT,
        env=environment(dotenv),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [FROM_ENVIRONMENT, "True", "3"]
