"""`make run`'s Ctrl-C: honcho sends SIGTERM to each of the Procfile's process groups, and
every process (web, ticker, both clusters) stops by itself, with exit code 0, before honcho
would reach for SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from tests.servers import PROJECT, free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
START = [sys.executable, "scripts/start.py", "--procfile", "Procfile", "--no-colour"]
PROCESSES = ("web.1", "ticker.1", "messaging.1", "media.1")


def test_ctrl_c_stops_every_process_of_make_run_cleanly(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("the processes share the test database: PostgreSQL only")
    s = connection.settings_dict
    log = tmp_path / "run.log"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}",
        "NUDGE_ENV_FILE": os.devnull,
        "SECRET_KEY": "test-make-run-stop",
        "Q_MESSAGING_WORKERS": "2",
        "Q_MEDIA_WORKERS": "1",
        "WEB_CONCURRENCY": "1",
    }
    env.pop("REDIS_URL", None)
    with log.open("wb") as out:
        honcho = subprocess.Popen(
            [*START, "--port", str(free_port())],
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            text = log.read_text(errors="replace")
            if text.count("running with") == 2 and "ticker: every" in text:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"make run did not start:\n{log.read_text()}")
        started = time.monotonic()
        honcho.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends honcho
        honcho.wait(40)
        took = time.monotonic() - started
    finally:
        if honcho.poll() is None:
            honcho.kill()
    output = log.read_text(errors="replace")
    assert "SIGKILL" not in output, output
    for name in PROCESSES:
        assert re.search(rf"{re.escape(name)} stopped \(rc=0\)", output), output
    assert took < 10, output
    assert output.count("has stopped.") == 2
