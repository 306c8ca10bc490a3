"""The marketer's admin in a real browser: Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import os
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "browser-demo-Passw0rd"


@pytest.fixture
def browser_page():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is missing: scripts/services.sh installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


@pytest.fixture
def demo_site(live_server, monkeypatch):
    monkeypatch.setenv("NUDGE_DEMO_PASSWORD", PASSWORD)
    call_command("nudge_demo", stdout=StringIO())
    return live_server.url


def log_in(page, base: str) -> None:
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", "marketer")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


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
