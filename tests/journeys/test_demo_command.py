from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from journeys.models import Journey, ScheduledSend
from marketing.services import events_apply_pending

pytestmark = pytest.mark.django_db


def run_demo(capture) -> str:
    out = StringIO()
    with capture(execute=True):
        call_command("nudge_demo", stdout=out)
    # the test's transaction never commits: the host events were recorded only now, by the
    # captured on-commit callbacks, after the command applied what was stored before
    events_apply_pending()
    return out.getvalue()


def test_demo_loads_the_three_journeys_and_the_demo_customers_flow_through_them(
    django_capture_on_commit_callbacks,
):
    out = run_demo(django_capture_on_commit_callbacks)

    assert set(Journey.objects.values_list("slug", flat=True)) == {
        "welcome-email",
        "signup-no-purchase-sms",
        "abandoned-checkout",
    }
    assert "Demo journeys: " in out
    sends = {
        (s.customer.external_id, s.journey.slug): (s.status, s.reason)
        for s in ScheduledSend.objects.select_related("customer", "journey")
    }
    assert sends[("demo_u_chloe", "welcome-email")] == ("pending", "")
    assert sends[("demo_u_ben", "abandoned-checkout")] == ("pending", "")
    assert sends[("demo_u_ana", "welcome-email")] == (
        "cancelled",
        "cancelled by payment demo_p_ana",
    )
    assert sends[("demo_u_ana", "abandoned-checkout")] == (
        "cancelled",
        "cancelled by payment demo_p_ana",
    )

    run_demo(django_capture_on_commit_callbacks)
    assert ScheduledSend.objects.count() == len(sends)
