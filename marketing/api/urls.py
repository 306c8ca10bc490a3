from django.urls import path

from marketing.api import views

urlpatterns = [
    path("events/", views.EventIngestView.as_view(), name="event-ingest"),
    path("events/batch/", views.EventBatchIngestView.as_view(), name="event-batch-ingest"),
]
