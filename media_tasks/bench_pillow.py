"""The benchmark's process-pool side: plain Pillow, importable without Django set up (the pool
starts fresh interpreters)."""

from __future__ import annotations

import io

from PIL import Image, ImageOps

from media_tasks import samples
from media_tasks.compression import REDUCING_GAP, fit_within
from media_tasks.conf import CompressionSettings


def raw_pillow_compress(job: tuple[bytes, CompressionSettings]) -> int:
    """The baseline: plain Pillow, the same calls and settings as `compression.compress` for
    an opaque JPEG (draft decode, EXIF transpose, Lanczos with reducing gap, WebP and JPEG per
    size), on bytes in memory; returns the number of bytes produced."""
    data, conf = job
    original = Image.open(io.BytesIO(data))
    target = fit_within(original.width, original.height, conf.sizes[0].max_px)
    original.draft(original.mode, (int(target[0] * REDUCING_GAP), int(target[1] * REDUCING_GAP)))
    original.load()
    ImageOps.exif_transpose(original, in_place=True)
    image: Image.Image = original
    produced = 0
    for size in conf.sizes:
        target = fit_within(image.width, image.height, size.max_px)
        if image.size != target:
            image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
        for fmt, params in (
            ("WEBP", {"quality": conf.webp_quality, "method": conf.webp_method}),
            ("JPEG", {"quality": conf.jpeg_quality, "optimize": True, "progressive": True}),
        ):
            out = io.BytesIO()
            image.save(out, fmt, **params)
            produced += out.tell()
    return produced


def generate_photo(args: tuple[int, int, int]) -> bytes:
    width, height, seed = args
    return samples.photo_jpeg(width, height, seed=seed, quality=92)
