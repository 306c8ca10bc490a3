"""django-q2 entry points of the media cluster: ids in, one service call."""

from __future__ import annotations

from media_tasks import services


def compress_image(image_id: int) -> str:
    return services.image_compress(image_id=image_id).status
