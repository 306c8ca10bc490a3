"""The marketer's admin in a real browser: Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import os

import pytest

from tests.browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_marketer_logs_in_and_sees_customers_and_events(demo_site, browser_page, tmp_path):
    # demo_site first: its database writes finish before Playwright starts its event loop
    page = browser_page
    log_in(page, demo_site)
    assert "Site administration" in page.content()
    assert page.is_visible("text=Customers")
    assert page.is_visible("text=Events")

    page.click("a[href='/admin/marketing/customer/']")
    page.wait_for_selector("#result_list")
    customers = page.inner_text("#result_list")
    assert "demo_u_ana" in customers
    assert "demo_u_chloe" in customers

    page.fill("#searchbar", "ben@example.com")
    page.press("#searchbar", "Enter")
    page.wait_for_selector("#result_list")
    found = page.inner_text("#result_list")
    assert "demo_u_ben" in found
    assert "demo_u_ana" not in found

    page.goto(f"{demo_site}/admin/marketing/event/")
    page.wait_for_selector("#result_list")
    events = page.inner_text("#result_list")
    assert "payment:demo_p_ana:payment_finished" in events
    assert events.count("\tuser_registered\t") == 3
    assert not page.is_visible("text=Add event")
    page.screenshot(path=str(os.environ.get("NUDGE_SCREENSHOTS", tmp_path)) + "/events.png")

    page.click("text=payment:demo_p_ana:payment_finished")
    page.wait_for_selector("#content")
    assert page.locator("input[name=_save]").count() == 0  # read-only
    assert "WELCOME10" in page.inner_text("#content")


def test_wrong_password_does_not_log_in(demo_site, browser_page):
    page = browser_page
    page.goto(f"{demo_site}/admin/login/")
    page.fill("#id_username", "marketer")
    page.fill("#id_password", "not-the-password")
    page.click("input[type=submit]")

    page.wait_for_selector(".errornote")
    assert "/admin/login/" in page.url
