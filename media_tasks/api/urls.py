from django.urls import path

from media_tasks.api import views

urlpatterns = [
    path("media/", views.ImageUploadView.as_view(), name="media-upload"),
    path("media/<int:pk>/", views.ImageDetailView.as_view(), name="media-detail"),
]
