"""A real Nudge web server (gunicorn) in a subprocess, for failures no in-process test can
show honestly: a database or broker that cannot be reached."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    return free_port()


def get(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None):
    """(status, body bytes, headers) of one request, whatever the status."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


@contextlib.contextmanager
def running_server(*gunicorn_args: str, **environment: str) -> Iterator[str]:
    """Start gunicorn with production settings plus `environment` (and `gunicorn_args`, e.g.
    "-c", "config/gunicorn.py", "--workers", "2"); yield its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": "ERROR",
        **environment,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # config/gunicorn.py makes one per server
    command = [str(Path(sys.executable).parent / "gunicorn"), "config.wsgi"]
    process = subprocess.Popen(
        [*command, "--bind", f"127.0.0.1:{port}", "--workers", "1", *gunicorn_args],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get(f"{base}/healthz")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    stderr = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"gunicorn did not start: {stderr}") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def database_url(connection) -> str:
    """URL of the database the test run uses (the test database, not the configured one)."""
    settings = connection.settings_dict
    return (
        f"postgres://{settings['USER']}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT']}/"
        f"{settings['NAME']}"
    )
