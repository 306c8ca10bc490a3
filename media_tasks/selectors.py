"""Reads of media data that several callers share."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from media_tasks.models import UploadedImage

VIEW_ALL_PERMISSION = "media_tasks.view_all_uploadedimages"


def images_visible_to(*, user: Any) -> QuerySet[UploadedImage]:
    """The images a user may read through the API: those they uploaded; every image for a
    superuser or a holder of media_tasks.view_all_uploadedimages. The caller answers another
    user's image as it answers an unknown id (404): its existence is not told."""
    images = UploadedImage.objects.all()
    if user.has_perm(VIEW_ALL_PERMISSION):  # True for any active superuser
        return images
    return images.filter(uploaded_by=user.pk)
