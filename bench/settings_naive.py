"""The naive baseline's cluster: django-q2 with its default settings and the ORM broker."""

from bench.settings import *  # noqa: F403

Q_CLUSTER = {"name": "naive", "orm": "default"}
