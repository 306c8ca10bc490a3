"""What compression produces: upright, metadata-free variants at the configured sizes, and
real savings on a set of generated images."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageCms, ImageDraw, ImageStat

from media_tasks.compression import compress
from media_tasks.conf import CompressionSettings, VariantSize, compression_settings, parse_sizes
from media_tasks.samples import encoded, photo, photo_jpeg

ORIENTATION = 0x0112
MAX_PIXELS = 50_000_000


def run(data: bytes, conf: CompressionSettings | None = None):
    return {
        v.name: v
        for v in compress(
            io.BytesIO(data), settings=conf or compression_settings(), max_pixels=MAX_PIXELS
        )
    }


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def with_alpha(width: int, height: int) -> Image.Image:
    image = photo(width, height).convert("RGBA")
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse((0, 0, width, height), fill=255)
    image.putalpha(mask)
    return image


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [(1, (1600, 1200)), (6, (1200, 1600)), (8, (1200, 1600)), (3, (1600, 1200))],
)
def test_exif_orientation_is_applied_and_then_dropped(orientation, expected):
    """A camera stores 3200x2400 pixels plus 'rotate 90°' (6 or 8): the variants are upright."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = "NudgeCam"  # Make: metadata that must not survive
    data = encoded(photo(3200, 2400), "JPEG", quality=92, exif=exif.tobytes())

    variants = run(data)

    assert (variants["large-webp"].width, variants["large-webp"].height) == expected
    for variant in variants.values():
        image = opened(variant.data)
        assert image.size == (variant.width, variant.height)
        assert dict(image.getexif()) == {}
        assert "icc_profile" not in image.info


def test_rotated_pixels_match_the_upright_scene():
    upright = photo(300, 200)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90° clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    data = encoded(stored, "PNG", exif=exif.tobytes())

    result = opened(run(data)["large-webp"].data).convert("RGB")

    assert result.size == upright.size
    mean_difference = sum(ImageStat.Stat(ImageChops.difference(result, upright)).mean) / 3
    assert mean_difference < 8


def test_icc_profile_and_text_metadata_are_dropped():
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encoded(photo(200, 100), "JPEG", icc_profile=srgb, comment=b"shot by someone")

    variants = run(data)

    for variant in variants.values():
        info = opened(variant.data).info
        assert "icc_profile" not in info
        assert "comment" not in info
        assert "exif" not in info


def test_variants_follow_the_configured_sizes():
    conf = CompressionSettings(
        sizes=parse_sizes(["hero:1000", "card:250", "icon:64"]),
        webp_quality=75,
        webp_method=4,
        jpeg_quality=80,
    )

    variants = run(photo_jpeg(2000, 500), conf)

    assert {name: (v.width, v.height) for name, v in variants.items()} == {
        "hero-webp": (1000, 250),
        "hero-jpg": (1000, 250),
        "card-webp": (250, 62),
        "card-jpg": (250, 62),
        "icon-webp": (64, 16),
        "icon-jpg": (64, 16),
    }


def test_small_images_are_not_enlarged():
    variants = run(photo_jpeg(120, 90))

    assert {(v.width, v.height) for v in variants.values()} == {(120, 90)}


def test_transparent_png_keeps_alpha_in_webp_and_png():
    variants = run(encoded(with_alpha(1200, 900), "PNG"))

    assert set(variants) == {"large-webp", "large-png", "thumb-webp", "thumb-png"}
    assert opened(variants["large-webp"].data).mode == "RGBA"
    assert opened(variants["large-png"].data).getchannel("A").getextrema() == (0, 255)


def test_png_with_an_opaque_alpha_channel_is_treated_as_opaque():
    data = encoded(photo(800, 600).convert("RGBA"), "PNG")

    variants = run(data)

    assert set(variants) == {"large-webp", "large-jpg", "thumb-webp", "thumb-jpg"}


def test_flat_graphic_png_keeps_png_when_it_is_smaller_than_jpeg():
    logo = Image.new("RGB", (800, 400), "white")
    ImageDraw.Draw(logo).rectangle((100, 100, 700, 300), fill=(200, 30, 30))

    variants = run(encoded(logo, "PNG"))

    assert variants["large-png"].format == "PNG"
    assert "large-jpg" not in variants


def test_palette_and_greyscale_images_are_compressed():
    palette = photo(300, 200).convert("P", palette=Image.Palette.ADAPTIVE)
    grey = photo(300, 200).convert("L")

    assert run(encoded(palette, "GIF"))["large-webp"].width == 300
    assert opened(run(encoded(grey, "JPEG"))["large-jpg"].data).mode == "L"


SAMPLES = {
    "photo JPEG 2400x1600 q95": lambda: photo_jpeg(2400, 1600, seed=1),
    "large photo JPEG 6000x4000 q92": lambda: photo_jpeg(6000, 4000, seed=2, quality=92),
    "photo PNG 1600x1200 opaque": lambda: encoded(photo(1600, 1200, seed=3), "PNG"),
    "photo PNG 1200x900 with alpha": lambda: encoded(with_alpha(1200, 900), "PNG"),
}


@pytest.mark.parametrize("sample", SAMPLES)
def test_variants_save_bytes_on_generated_images(sample):
    data = SAMPLES[sample]()

    variants = run(data)

    savings = {name: 1 - len(v.data) / len(data) for name, v in variants.items()}
    print(sample, len(data), {name: f"{s:.1%}" for name, s in savings.items()})
    assert savings["large-webp"] >= 0.5, savings
    assert savings["thumb-webp"] >= 0.9, savings
    fallback = next(name for name in variants if name.startswith("large-") and name != "large-webp")
    # Lossless PNG (kept for transparent images) cannot shrink a photo much at the same size.
    assert savings[fallback] >= (0.0 if fallback == "large-png" else 0.3), savings


def test_variant_sizes_setting_is_validated():
    assert parse_sizes(["thumb:400", "large:1600"]) == (
        VariantSize("large", 1600),
        VariantSize("thumb", 400),
    )
    for bad in (["large"], ["large:0"], ["large:x"], ["a:1", "a:2"]):
        with pytest.raises(ValueError, match="NUDGE_MEDIA_VARIANTS"):
            parse_sizes(bad)


def test_bad_media_settings_fail_the_system_check(settings):
    from media_tasks.checks import media_settings_check

    assert media_settings_check(None) == []
    settings.NUDGE_MEDIA_VARIANTS = ["large"]
    settings.NUDGE_MEDIA_JPEG_QUALITY = 120

    assert [problem.id for problem in media_settings_check(None)] == ["media.E001", "media.E002"]
