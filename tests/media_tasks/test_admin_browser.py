"""A marketer uploads a campaign image in the admin, in a real browser."""

from __future__ import annotations

import os

import pytest

from media_tasks import tasks
from media_tasks.models import UploadedImage
from media_tasks.samples import photo_jpeg
from tests.browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def test_marketer_uploads_an_image_and_sees_its_variants(
    demo_site, browser_page, media_root, tmp_path
):
    page = browser_page
    upload = tmp_path / "campaign.jpg"
    upload.write_bytes(photo_jpeg(2400, 1600, seed=3))
    log_in(page, demo_site)

    page.goto(f"{demo_site}/admin/media_tasks/uploadedimage/add/")
    page.set_input_files("#id_original", str(upload))
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist")
    image = UploadedImage.objects.get()
    assert image.status == "pending"

    tasks.compress_image(image.pk)  # what the media cluster's worker runs

    page.goto(f"{demo_site}/admin/media_tasks/uploadedimage/{image.pk}/change/")
    page.wait_for_selector("#content")
    content = page.inner_text("#content")
    assert "Status:\nDone" in content or "Status:\ndone" in content
    for name in ("large-webp", "thumb-webp"):
        assert name in content
    page.screenshot(
        path=f"{os.environ.get('NUDGE_SCREENSHOTS', tmp_path)}/image.png", full_page=True
    )


def test_a_file_that_is_not_an_image_is_refused_with_a_clear_error(
    demo_site, browser_page, media_root, tmp_path
):
    page = browser_page
    upload = tmp_path / "notes.jpg"
    upload.write_bytes(b"these are not the pixels you are looking for")
    log_in(page, demo_site)

    page.goto(f"{demo_site}/admin/media_tasks/uploadedimage/add/")
    page.set_input_files("#id_original", str(upload))
    page.click("input[name=_save]")
    page.wait_for_selector(".errorlist")

    assert "not an image" in page.inner_text(".errorlist").lower()
    assert not UploadedImage.objects.exists()
