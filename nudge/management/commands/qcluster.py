"""`manage.py qcluster`: Nudge's cluster (nudge.cluster) in place of django-q2's own, with the
same options, settings and broker; see nudge/cluster.py for why."""

from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Starts a task cluster whose workers survive each other's death and that stops "
        "gracefully on SIGTERM/SIGINT (Nudge's replacement of django-q2's qcluster)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--run-once", action="store_true", help="Start the workers, then stop them."
        )
        parser.add_argument(
            "-n",
            "--name",
            dest="cluster_name",
            default=None,
            help="The cluster to run (one of Q_CLUSTER's ALT_CLUSTERS), as "
            "Q_CLUSTER_NAME=name in the environment does.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        settings.SECRET_KEY  # noqa: B018 - tasks are signed with it: refuse to start without
        name = options["cluster_name"]
        if name and os.environ.get("Q_CLUSTER_NAME") != name:
            # django-q2 reads Q_CLUSTER_NAME once, when Django loads its app: start again
            # with it set (django-q2's own command sets it too late to have an effect)
            os.environ["Q_CLUSTER_NAME"] = name
            os.execv(sys.executable, [sys.executable, *sys.argv])  # noqa: S606
        from nudge import cluster

        sys.exit(cluster.run(once=options["run_once"]))
