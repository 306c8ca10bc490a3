"""Generated test and benchmark images: photo-like content, made in code, never committed.

Random noise alone is incompressible and flat colour is trivially so; a photo is smooth
gradients with fine grain, so that is what `photo()` draws.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter


def photo(width: int, height: int, *, seed: int = 0) -> Image.Image:
    """An RGB image with gradients, soft shapes and sensor-like grain."""
    rng = random.Random(seed)
    # Shapes are drawn at a quarter of the size and scaled up: as smooth, and fast enough
    # to generate hundreds of 12-megapixel images for the benchmark.
    w, h = max(1, width // 4), max(1, height // 4)
    square = Image.linear_gradient("L")
    vertical, horizontal = square.resize((w, h)), square.rotate(90).resize((w, h))
    base = Image.merge("RGB", (vertical, horizontal, vertical))
    tint = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), 90))
    image = Image.blend(base, tint, 0.5)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(w), rng.randrange(h)
        r = rng.randrange(max(1, min(w, h) // 10), max(2, min(w, h) // 3))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1, min(w, h) // 60)))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    grain = Image.effect_noise((width, height), 18).convert("RGB")
    return Image.blend(image, grain, 0.3)


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def photo_jpeg(width: int, height: int, *, seed: int = 0, quality: int = 95) -> bytes:
    """A camera-like JPEG: high quality, as marketers upload them."""
    return encoded(photo(width, height, seed=seed), "JPEG", quality=quality)
