"""Start the Procfile's processes with honcho, the environment winning over `.env`.

    scripts/start.py HONCHO_START_ARGS...   (`make run`: --procfile Procfile --port 8000)

honcho would load `.env` over the environment, so a NUDGE_WEBHOOK_SECRET exported to match
the shop would lose to the generated one and every event would get a 401. Here `.env` (or
the file NUDGE_ENV_FILE names) fills in only the variables the environment does not set, as
Django's settings do, and honcho is given no env file of its own. Every process it starts
(web, ticker, the clusters) then sees the same values, gunicorn's configuration included.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import environ

PROJECT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> None:
    env_file = Path(os.environ.get("NUDGE_ENV_FILE") or PROJECT / ".env")
    if env_file.is_file():
        environ.Env.read_env(env_file, overwrite=False)
    # PATH: `make run` puts the virtualenv first
    os.execvp("honcho", ["honcho", "start", "--env", os.devnull, *argv])  # noqa: S606


if __name__ == "__main__":
    main(sys.argv[1:])
