from django.urls import path

from journeys.api import views

urlpatterns = [
    path("journeys/<slug:slug>/stats/", views.JourneyStatsView.as_view(), name="journey-stats"),
    path("sends/", views.ScheduledSendListView.as_view(), name="send-list"),
    path("sends/<int:send_id>/", views.ScheduledSendDetailView.as_view(), name="send-detail"),
    path("codes/<str:code>/", views.DiscountCodeView.as_view(), name="code-detail"),
    path(
        "sends/<int:send_id>/cancel/",
        views.ScheduledSendCancelView.as_view(),
        name="send-cancel",
    ),
]
