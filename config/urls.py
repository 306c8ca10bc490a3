"""The standalone site: Nudge's URLs (as a host project includes them) under /api/, the
admin, and the health check."""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path

from config.health import healthz
from nudge.metrics import metrics_view

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/", include("nudge.urls")),
]
# Uploaded files (image variants) in DEBUG only; production serves MEDIA_ROOT or a bucket.
urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
