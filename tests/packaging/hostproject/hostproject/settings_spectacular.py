"""The shop's project when it uses drf-spectacular itself: Nudge's schema and docs appear."""

from hostproject import settings as base
from hostproject.settings import *  # noqa: F403

INSTALLED_APPS = [*base.INSTALLED_APPS, "drf_spectacular", "drf_spectacular_sidecar"]
REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}
ALLOWED_HOSTS = [*base.ALLOWED_HOSTS, "testserver"]
