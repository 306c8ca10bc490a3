from django.urls import path

from bench.views import noop
from config.urls import urlpatterns as production_urlpatterns

urlpatterns = [*production_urlpatterns, path("bench/noop/", noop, name="bench-noop")]
