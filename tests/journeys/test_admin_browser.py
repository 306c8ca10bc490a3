"""A marketer works with journeys and sends in the admin, in a real browser."""

from __future__ import annotations

import os

import pytest

from journeys.models import Journey, ScheduledSend
from tests.browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_marketer_sees_demo_journeys_and_is_told_what_is_wrong_with_a_broken_one(
    demo_site, browser_page, tmp_path
):
    page = browser_page
    log_in(page, demo_site)

    page.goto(f"{demo_site}/admin/journeys/journey/")
    page.wait_for_selector("#result_list")
    listing = page.inner_text("#result_list")
    for name in ("Welcome email", "Sign-up, no purchase: SMS", "Abandoned checkout reminder"):
        assert name in listing

    page.click("text=Abandoned checkout reminder")
    page.wait_for_selector("#steps-group")
    assert page.input_value("#id_trigger") == "checkout_started"
    assert page.input_value("#id_exit_on") == "payment_finished"
    assert "{{ cart.checkout_url }}" in page.input_value("#id_steps-0-body")

    page.goto(f"{demo_site}/admin/journeys/journey/add/")
    page.fill("#id_name", "Winback")
    page.fill("#id_trigger", "checkout_strated")
    page.fill("#id_exit_on", "payment_finished")
    page.fill("#id_steps-0-delay", "00:20:00")
    page.select_option("#id_steps-0-channel", "email")
    page.fill("#id_steps-0-subject", "Come back")
    page.fill("#id_steps-0-body", "Hi {{ custmer.first_name }}")
    page.click("input[name=_save]")
    page.wait_for_selector(".errornote")
    errors = page.inner_text("#content")
    assert "unknown event type 'checkout_strated'" in errors
    assert "unknown variable {{ custmer.first_name }}" in errors
    page.screenshot(path=f"{os.environ.get('NUDGE_SCREENSHOTS', tmp_path)}/journey-errors.png")
    assert not Journey.objects.filter(slug="winback").exists()

    page.fill("#id_trigger", "checkout_started")
    page.fill("#id_steps-0-body", "Hi {{ customer.first_name }}, {{ cart.checkout_url }}")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist")
    assert Journey.objects.get(slug="winback").steps.get().subject == "Come back"


def test_marketer_filters_sends_and_cancels_one_with_a_reason(demo_site, browser_page, tmp_path):
    page = browser_page
    log_in(page, demo_site)

    page.goto(f"{demo_site}/admin/journeys/scheduledsend/?status__exact=pending")
    page.wait_for_selector("#result_list")
    pending = page.inner_text("#result_list")
    assert "demo_u_ben" in pending
    assert "demo_u_ana" not in pending  # Ana paid: her sends are cancelled

    page.goto(f"{demo_site}/admin/journeys/scheduledsend/?status__exact=cancelled")
    page.wait_for_selector("#result_list")
    assert "cancelled by payment demo_p_ana" in page.inner_text("#result_list")

    ben = ScheduledSend.objects.get(
        customer__external_id="demo_u_ben", journey__slug="abandoned-checkout"
    )
    page.goto(f"{demo_site}/admin/journeys/scheduledsend/?q=demo_u_ben")
    page.wait_for_selector("#result_list")
    page.check(f"input[name=_selected_action][value='{ben.pk}']")
    page.select_option("select[name=action]", "cancel_sends")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist")
    assert "Cancelled 1 send(s)." in page.inner_text(".messagelist")
    page.screenshot(
        path=f"{os.environ.get('NUDGE_SCREENSHOTS', tmp_path)}/sends.png", full_page=True
    )
    ben.refresh_from_db()
    assert (ben.status, ben.reason) == ("cancelled", "cancelled by marketer in admin")


def test_marketer_deactivates_a_journey_with_sends_where_delete_was(
    demo_site, browser_page, tmp_path
):
    page = browser_page
    log_in(page, demo_site)
    assert page.inner_text("#site-name") == "Nudge"
    welcome = Journey.objects.get(slug="welcome-email")
    sms = Journey.objects.get(slug="signup-no-purchase-sms")
    send_ids = set(welcome.sends.values_list("pk", flat=True))
    assert send_ids  # the demo customers were enrolled

    page.goto(f"{demo_site}/admin/journeys/journey/{welcome.pk}/change/")
    page.wait_for_selector("#deactivate-row")
    assert page.locator("a.deletelink").count() == 0
    assert "cannot be deleted" in page.inner_text("#deactivate-row")
    page.screenshot(
        path=f"{os.environ.get('NUDGE_SCREENSHOTS', tmp_path)}/journey-deactivate.png",
        full_page=True,
    )
    page.click("#deactivate-row input[name=_deactivate]")
    page.wait_for_selector(".messagelist")
    assert "“Welcome email” is deactivated" in page.inner_text(".messagelist")
    assert not page.is_checked("#id_active")

    page.goto(f"{demo_site}/admin/journeys/journey/{welcome.pk}/delete/")
    page.wait_for_selector(".messagelist")
    assert "so it cannot be deleted" in page.inner_text(".messagelist")

    page.goto(f"{demo_site}/admin/journeys/journey/")
    page.wait_for_selector("#result_list")
    page.check(f"input[name=_selected_action][value='{sms.pk}']")
    page.select_option("select[name=action]", "deactivate_journeys")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist")
    assert "Deactivated 1 journey(s)" in page.inner_text(".messagelist")

    assert set(Journey.objects.filter(active=False).values_list("slug", flat=True)) == {
        "welcome-email",
        "signup-no-purchase-sms",
    }
    assert set(welcome.sends.values_list("pk", flat=True)) == send_ids


def test_marketer_sees_a_condition_in_words_while_typing_it(demo_site, browser_page, tmp_path):
    page = browser_page
    log_in(page, demo_site)
    page.goto(f"{demo_site}/admin/journeys/journey/add/")

    page.fill(
        "#id_conditions",
        '{"all": [{"field": "cart.total", "op": ">=", "value": 50}, '
        '{"history": {"event": "payment_finished", "within": "P30D", "op": "=", "count": 0}}]}',
    )
    page.wait_for_selector("#id_conditions_preview:has-text('In words')")
    assert page.inner_text("#id_conditions_preview") == (
        "In words: cart total ≥ 50 and no payment_finished in the last 30 days"
    )

    page.fill("#id_conditions", '{"field": "cart.totl", "op": ">=", "value": 50}')
    page.wait_for_selector("#id_conditions_preview .errorlist")
    assert "unknown field 'cart.totl'" in page.inner_text("#id_conditions_preview")

    page.fill("#id_steps-0-position", "1")
    page.select_option("#id_steps-0-channel", "sms")
    page.fill("#id_steps-0-condition", '{"step": 0, "was": "not opened"}')
    page.wait_for_selector("#id_steps-0-condition_preview .errorlist")
    assert "0 is not an earlier step of this journey (earlier: none)" in page.inner_text(
        "#id_steps-0-condition_preview"
    )
    page.screenshot(path=f"{os.environ.get('NUDGE_SCREENSHOTS', tmp_path)}/conditions-preview.png")
