"""A marketer makes a discount code pool and fills it from a CSV file, in a real browser."""

from __future__ import annotations

import os

import pytest

from journeys.models import DiscountCodePool
from tests.browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_marketer_creates_a_pool_uploads_codes_and_sees_the_stock(
    demo_site, browser_page, tmp_path
):
    page = browser_page
    log_in(page, demo_site)

    page.goto(f"{demo_site}/admin/journeys/discountcodepool/add/")
    page.fill("#id_name", "winter")
    page.fill("#id_low_stock_threshold", "5")
    with page.expect_navigation():
        page.click("input[name=_continue]")
    page.wait_for_selector("#pool-upload")
    assert "winter" in page.inner_text("#pool-low-stock")  # empty: 0 left, below 5

    codes = tmp_path / "winter.csv"
    codes.write_text("code,note\nwin-1,a\nWIN-2,b\nwin-1,again\nnot a code,c\n")
    page.set_input_files("#pool-upload input[type=file]", str(codes))
    with page.expect_navigation():
        page.click("#pool-upload input[type=submit]")
    page.wait_for_selector("ul.messagelist")
    shown = page.inner_text("ul.messagelist")  # the admin capitalises each message
    assert "Winter.csv: added 2 code(s) to “winter” (4 line(s) read, 2 left out)." in shown
    assert "Line 4: WIN-1 repeats line 2" in shown
    assert "Line 5: 'not a code' is not a valid code" in shown
    assert "2 code(s) left to hand out" in page.inner_text("#pool-stock")
    assert "running low: 2 code(s) left" in page.inner_text("#pool-low-stock")
    page.screenshot(path=f"{os.environ.get('NUDGE_SCREENSHOTS', tmp_path)}/pool-upload.png")
    pool = DiscountCodePool.objects.get(name="winter")
    assert set(pool.codes.values_list("code", flat=True)) == {"WIN-1", "WIN-2"}

    page.goto(f"{demo_site}/admin/journeys/discountcodepool/")
    page.wait_for_selector("#result_list")
    assert "running low" in page.inner_text("ul.messagelist")
    assert "low" in page.inner_text("#result_list")
