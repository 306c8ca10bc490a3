"""Pages for customers (not the API): included by nudge.urls, so under the host's prefix."""

from django.urls import path

from marketing import views

urlpatterns = [
    path("unsubscribe/<str:token>/", views.unsubscribe, name="unsubscribe"),
]
