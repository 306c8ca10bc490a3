"""Checks an upload must pass before anything is stored: size, format, integrity, pixels, mode.

Every refusal is an `InvalidImage` whose message is shown to the uploader as is.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import IO

from PIL import Image, UnidentifiedImageError

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
# Modes the compressor can turn into RGB/RGBA/L without guessing: no 16-bit or float data,
# whose tone mapping is a decision we do not make for the marketer.
SUPPORTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})


class InvalidImage(Exception):
    """The upload is refused; the message says why, for a person to read."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str
    size: int


def open_checked(fp: IO[bytes], *, max_pixels: int) -> Image.Image:
    """Open an image lazily (header only), refusing decompression bombs and unknown data.

    Pillow's DecompressionBombWarning is an error here, as is anything over `max_pixels`.
    """
    fp.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidImage(f"Image has too many pixels (decompression bomb?): {exc}") from exc
        except UnidentifiedImageError as exc:
            raise InvalidImage("Not an image, or an image format we cannot read.") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidImage(f"Image is damaged: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(
            f"Image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} pixels."
        )
    return image


def inspect_upload(fp: IO[bytes], *, size: int, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Validate an uploaded file completely (decoding it) and describe it.

    Decoding is what finds a truncated file; JPEGs are decoded at reduced scale (draft mode),
    which still reads the whole bitstream, so the web process spends little CPU on it.
    """
    if size > max_bytes:
        raise InvalidImage(f"File is {size} bytes, over the limit of {max_bytes} bytes.")
    if size == 0:
        raise InvalidImage("File is empty.")
    image = open_checked(fp, max_pixels=max_pixels)
    info = ImageInfo(
        format=image.format or "",
        width=image.width,
        height=image.height,
        mode=image.mode,
        size=size,
    )
    if info.format not in SUPPORTED_FORMATS:
        raise InvalidImage(
            f"Image format {info.format or 'unknown'} is not supported; "
            f"use one of {', '.join(sorted(SUPPORTED_FORMATS))}."
        )
    if info.mode not in SUPPORTED_MODES:
        raise InvalidImage(
            f"Image mode {info.mode} is not supported (16-bit and floating-point images are "
            "not); save it as 8-bit RGB, RGBA or greyscale."
        )
    if getattr(image, "n_frames", 1) > 1:
        raise InvalidImage(
            "Animated and multi-page images are not supported; upload a single still image."
        )
    try:
        image.verify()  # chunk CRCs and structure (PNG); cheap
        image = open_checked(fp, max_pixels=max_pixels)
        if image.format == "JPEG":
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except InvalidImage:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error, ...
        raise InvalidImage(f"Image is truncated or damaged: {exc}") from exc
    finally:
        fp.seek(0)
    return info
