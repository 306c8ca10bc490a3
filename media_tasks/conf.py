"""Compression settings read once from Django settings, in a shape the Pillow code can take."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class VariantSize:
    name: str
    max_px: int


@dataclass(frozen=True)
class CompressionSettings:
    sizes: tuple[VariantSize, ...]
    webp_quality: int
    webp_method: int
    jpeg_quality: int


def parse_sizes(pairs: list[str]) -> tuple[VariantSize, ...]:
    """["large:1600", "thumb:400"] -> VariantSizes, largest first."""
    sizes = []
    for pair in pairs:
        name, sep, max_px = pair.partition(":")
        if not sep or not name.strip() or not max_px.strip().isdigit() or int(max_px) < 1:
            raise ValueError(f"NUDGE_MEDIA_VARIANTS: {pair!r} is not 'name:max_px'")
        sizes.append(VariantSize(name=name.strip(), max_px=int(max_px)))
    if len({size.name for size in sizes}) != len(sizes):
        raise ValueError("NUDGE_MEDIA_VARIANTS: names must be unique")
    return tuple(sorted(sizes, key=lambda size: size.max_px, reverse=True))


def compression_settings() -> CompressionSettings:
    return CompressionSettings(
        sizes=parse_sizes(list(settings.NUDGE_MEDIA_VARIANTS)),
        webp_quality=settings.NUDGE_MEDIA_WEBP_QUALITY,
        webp_method=settings.NUDGE_MEDIA_WEBP_METHOD,
        jpeg_quality=settings.NUDGE_MEDIA_JPEG_QUALITY,
    )
