"""Start-up checks of the media settings: a bad value fails `check`/`migrate`/`qcluster` at
start, not every compression later."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register

from media_tasks.conf import parse_sizes


@register()
def media_settings_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    problems: list[CheckMessage] = []
    try:
        parse_sizes(list(settings.NUDGE_MEDIA_VARIANTS))
    except ValueError as exc:
        problems.append(Error(str(exc), hint="e.g. large:1600,thumb:400", id="media.E001"))
    for name, low, high in (
        ("NUDGE_MEDIA_WEBP_QUALITY", 1, 100),
        ("NUDGE_MEDIA_JPEG_QUALITY", 1, 95),
        ("NUDGE_MEDIA_WEBP_METHOD", 0, 6),
    ):
        value = getattr(settings, name)
        if not low <= value <= high:
            problems.append(Error(f"{name} is {value}; it must be {low}..{high}.", id="media.E002"))
    if settings.NUDGE_MEDIA_MAX_UPLOAD_BYTES < 1 or settings.NUDGE_MEDIA_MAX_PIXELS < 1:
        problems.append(
            Error(
                "NUDGE_MEDIA_MAX_UPLOAD_BYTES and NUDGE_MEDIA_MAX_PIXELS must be positive.",
                id="media.E003",
            )
        )
    return problems
