"""Start the Procfile's processes with honcho, the environment winning over `.env`.

    scripts/start.py HONCHO_START_ARGS...   (`make run`: --procfile Procfile --port 8000)

honcho would load `.env` over the environment, so a NUDGE_WEBHOOK_SECRET exported to match
the shop would lose to the generated one and every event would get a 401. Here `.env` (or
the file NUDGE_ENV_FILE names) fills in only the variables the environment does not set, as
Django's settings do, and honcho is given no env file of its own. Every process it starts
(web, ticker, the clusters) then sees the same values, gunicorn's configuration included.
honcho runs in this process (not exec'd) so that its kill timeout can be set.
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
    # honcho sends SIGTERM to each process group on Ctrl-C and SIGKILLs what is left after
    # its KILL_WAIT (5 s, not an option): the clusters need their grace period to finish
    # the tasks in hand (NUDGE_SHUTDOWN_GRACE_SECONDS, nudge/cluster.py), so wait longer
    from honcho import manager
    from honcho.command import main as honcho

    grace = float(os.environ.get("NUDGE_SHUTDOWN_GRACE_SECONDS") or 20)
    manager.KILL_WAIT = int(grace) + 10
    honcho(["start", "--env", os.devnull, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
