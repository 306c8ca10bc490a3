"""The providers' webhooks (journeys.webhooks), included by nudge.urls."""

from django.urls import path

from journeys import webhooks

urlpatterns = [
    path("twilio/status/", webhooks.twilio_status, name="twilio-status"),
    path("twilio/inbound/", webhooks.twilio_inbound, name="twilio-inbound"),
]
