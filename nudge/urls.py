"""The URLs a host project includes once: `path("nudge/", include("nudge.urls"))`.

The API of marketing (signed events), journeys (scheduled sends) and media_tasks (images, when
installed), the customers' unsubscribe page (`unsubscribe/<token>/`), the providers' webhooks
(`twilio/status/`, `twilio/inbound/`, and anymail's `anymail/<esp>/tracking/` when "anymail"
is in INSTALLED_APPS). The OpenAPI schema of
these endpoints (`schema/`) is there when the project uses drf-spectacular as DRF's schema class
(REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "drf_spectacular.openapi.AutoSchema"): the views'
`@extend_schema` is built on that class when they are imported. Its docs page (`docs/`) needs
"drf_spectacular" and "drf_spectacular_sidecar" in INSTALLED_APPS too (its template and local
Swagger UI files). No SPECTACULAR_SETTINGS are needed. Any other path under the prefix is a
JSON 404 (nudge.api.not_found), as the API's other answers are JSON.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.urls import URLPattern, URLResolver, include, path, re_path
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.settings import patched_settings
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings

from nudge.api import SCHEMA_SETTINGS, not_found

app_name = "nudge"


class APIDocsView(SpectacularSwaggerView):
    """Swagger UI over Nudge's schema, with its assets served locally (no network)."""

    url_name = "nudge:schema"
    title = SCHEMA_SETTINGS["TITLE"]

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        with patched_settings({"SWAGGER_UI_DIST": "SIDECAR", "SWAGGER_UI_FAVICON_HREF": "SIDECAR"}):
            return super().get(request, *args, **kwargs)


def schema_available() -> bool:
    schema_class: object = api_settings.DEFAULT_SCHEMA_CLASS
    return isinstance(schema_class, type) and issubclass(schema_class, AutoSchema)


def docs_available() -> bool:
    return (
        schema_available()
        and apps.is_installed("drf_spectacular")
        and apps.is_installed("drf_spectacular_sidecar")
    )


urlpatterns: list[URLPattern | URLResolver] = [
    path("", include("marketing.api.urls")),
    path("", include("marketing.urls")),
    path("", include("journeys.api.urls")),
    path("", include("journeys.webhook_urls")),
]
if apps.is_installed("anymail"):
    # the ESPs' tracking webhooks: anymail/<esp>/tracking/ (journeys.receivers listens)
    urlpatterns.append(path("anymail/", include("anymail.urls")))
if apps.is_installed("media_tasks"):
    urlpatterns.append(path("", include("media_tasks.api.urls")))
if schema_available():
    urlpatterns.append(
        path("schema/", SpectacularAPIView.as_view(custom_settings=SCHEMA_SETTINGS), name="schema")
    )
if docs_available():
    urlpatterns.append(path("docs/", APIDocsView.as_view(), name="api-docs"))
# Last: any other path under Nudge's prefix is a JSON 404 (not the site's HTML page).
urlpatterns.append(re_path(r"^(?P<unknown>[\s\S]*)$", not_found, name="api-not-found"))
