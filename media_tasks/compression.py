"""The Pillow work of compressing one image: pure functions, no database, no storage.

`compress()` takes the original's bytes and returns the encoded variants; callers decide where
they go. Kept free of Django so the benchmark can compare it with plain Pillow line for line.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import IO

from PIL import Image, ImageCms, ImageOps

from media_tasks.conf import CompressionSettings
from media_tasks.validation import InvalidImage, open_checked

LOSSLESS_SOURCES = frozenset({"PNG", "GIF", "BMP", "TIFF"})
EXTENSIONS = {"WEBP": "webp", "JPEG": "jpg", "PNG": "png"}
# Resize by integer box reduction until within this factor of the target, then Lanczos:
# several times faster than Lanczos from full size and indistinguishable at 3.
REDUCING_GAP = 3.0
_SRGB = ImageCms.createProfile("sRGB")


@dataclass(frozen=True)
class EncodedVariant:
    name: str
    format: str
    width: int
    height: int
    data: bytes

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def saves_bytes(variant: EncodedVariant, *, original_size: int) -> bool:
    """Whether a variant is worth keeping: it must be smaller than the original. One that is
    not (an 800x600 palette PNG re-encoded as full-colour PNG grew from 109 KB to 268 KB) is no
    compression; the original is served under its name instead (services.image_compress)."""
    return len(variant.data) < original_size


def not_saving_reason(variant: EncodedVariant, *, original_size: int) -> str:
    return (
        f"{variant.format} encoding was {len(variant.data):,} bytes, not smaller than the "
        f"original's {original_size:,}: the original is served"
    )


def fit_within(width: int, height: int, max_px: int) -> tuple[int, int]:
    """Size that fits a max_px square, keeping the aspect ratio; never enlarges."""
    scale = min(1.0, max_px / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_srgb(image: Image.Image) -> Image.Image:
    """Convert colours to sRGB when the image carries another ICC profile, since the profile
    itself is dropped with the rest of the metadata."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode=out_mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # an unusable profile: keep the pixels as they are
    return converted if converted is not None else image


def normalise(image: Image.Image) -> tuple[Image.Image, bool]:
    """Upright, sRGB, 8-bit L/RGB/RGBA pixels with no metadata; and whether alpha is used."""
    # In place: without a rotation to apply, exif_transpose would otherwise copy every pixel.
    ImageOps.exif_transpose(image, in_place=True)
    image = _to_srgb(image)
    has_alpha = image.has_transparency_data
    if has_alpha:
        image = image.convert("RGBA")
        alpha_min, _ = image.getchannel("A").getextrema()
        if alpha_min == 255:  # an alpha channel that is opaque everywhere
            has_alpha = False
            image = image.convert("RGB")
    elif image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode == "1" else "RGB")
    image.info = {}
    return image, has_alpha


def encode(image: Image.Image, fmt: str, settings: CompressionSettings) -> bytes:
    out = io.BytesIO()
    if fmt == "WEBP":
        image.save(out, "WEBP", quality=settings.webp_quality, method=settings.webp_method)
    elif fmt == "JPEG":
        image.save(out, "JPEG", quality=settings.jpeg_quality, optimize=True, progressive=True)
    else:
        image.save(out, "PNG", optimize=True)
    return out.getvalue()


def compress(
    fp: IO[bytes], *, settings: CompressionSettings, max_pixels: int
) -> list[EncodedVariant]:
    """Every configured variant of one image, largest first.

    Each size gets a WebP and a fallback for clients without WebP: JPEG for opaque images,
    PNG for images with transparency (JPEG has no alpha), and for opaque images from a
    lossless source (PNG, GIF...) whichever of JPEG and PNG is smaller. Raises InvalidImage.
    """
    image = open_checked(fp, max_pixels=max_pixels)
    source_format = image.format or ""
    largest = settings.sizes[0]
    if source_format == "JPEG":
        # Decode at reduced DCT scale when the largest variant is far smaller (as thumbnail()).
        target = fit_within(image.width, image.height, largest.max_px)
        image.draft(image.mode, (int(target[0] * REDUCING_GAP), int(target[1] * REDUCING_GAP)))
    try:
        image.load()
        upright, has_alpha = normalise(image)
    except InvalidImage:
        raise
    except Exception as exc:
        raise InvalidImage(f"Image is truncated or damaged: {exc}") from exc

    variants: list[EncodedVariant] = []
    current = upright
    for size in settings.sizes:  # largest first: each size is reduced from the previous one
        target = fit_within(upright.width, upright.height, size.max_px)
        if current.size != target:
            current = current.resize(target, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
        fallbacks = ["PNG"] if has_alpha else ["JPEG"]
        if not has_alpha and source_format in LOSSLESS_SOURCES:
            fallbacks.append("PNG")
        encoded = {fmt: encode(current, fmt, settings) for fmt in ["WEBP", *fallbacks]}
        fallback = min(fallbacks, key=lambda fmt: len(encoded[fmt]))
        for fmt in ("WEBP", fallback):
            variants.append(
                EncodedVariant(
                    name=f"{size.name}-{EXTENSIONS[fmt]}",
                    format=fmt,
                    width=current.width,
                    height=current.height,
                    data=encoded[fmt],
                )
            )
    return variants
