"""An operator's re-drive of failed sends: `manage.py sends_retry` and the sends admin's
action, both over journeys.services.redrive."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.management import CommandError, call_command
from django.utils import timezone

from journeys import services
from journeys.channels import ChannelError, OutgoingMessage, get_channel
from journeys.models import Journey, ScheduledSend
from tests.journeys.conftest import dispatch_due, ingest, make_event, minutes_ago, sends
from tests.journeys.conftest import make_journey as make_journey_j

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status
REFUSED = "failed: provider error: mailbox unavailable"


class RefusingChannel:
    """An email provider that refuses every message for good (a permanent error)."""

    def send(self, message: OutgoingMessage) -> str:
        raise ChannelError("mailbox unavailable", retryable=False)


def make_journey(**overrides: Any) -> Journey:
    return make_journey_j(**{"slug": "cart", "name": "Cart", **overrides})


@pytest.fixture
def fail_due(settings):
    """Dispatch what is due through a provider that refuses it: the sends end up failed,
    with their last error and attempt log, as a real outage leaves them."""

    def run() -> list[int]:
        default = settings.NUDGE_CHANNELS
        settings.NUDGE_CHANNELS = {
            **default,
            "email": f"{__name__}.RefusingChannel",
        }
        get_channel.cache_clear()
        try:
            statuses = dispatch_due()
        finally:
            settings.NUDGE_CHANNELS = default
            get_channel.cache_clear()
        assert set(statuses.values()) == {Status.FAILED}
        return sorted(statuses)

    return run


def enrol(n: int, user: str = "u_1", **kwargs) -> None:
    """A checkout started 11 minutes ago: its send of the 10-minute step is due."""
    cart = kwargs.pop("cart", f"c_{n}")
    ingest(make_event(f"e{n}", "checkout_started", user=user, at=minutes_ago(11), cart=cart))


def retry(*args: str) -> str:
    out = StringIO()
    call_command("sends_retry", *args, stdout=out)
    return out.getvalue()


def snapshot() -> list[tuple]:
    return list(
        ScheduledSend.objects.order_by("pk").values_list(
            "pk", "status", "due_at", "attempts", "reason", "claimed_at", "updated_at"
        )
    )


# --- the command ------------------------------------------------------------------------


def test_failed_sends_go_back_to_pending_due_now_with_their_history(fail_due):
    make_journey()
    enrol(1, user="ana")
    enrol(2, user="bob")
    failed = fail_due()
    ScheduledSend.objects.filter(pk=failed[0]).update(ambiguous_retries=1)
    before = timezone.now()

    output = retry("--failed", "--since", "1h")

    after = timezone.now()
    assert output.startswith("sends_retry: 2 failed sends since ")
    assert output.rstrip().endswith(" re-queued")
    for send in sends():
        assert send.status == Status.PENDING
        assert before - timedelta(seconds=2) <= send.due_at <= after + timedelta(seconds=2)
        assert (send.attempts, send.claimed_at, send.call_started_at) == (0, None, None)
        assert send.reason == f"re-driven by sends_retry (was: {REFUSED})"
        assert send.last_error == "mailbox unavailable"
        assert [e["outcome"] for e in send.attempt_log] == ["permanent error: mailbox unavailable"]
    assert [s.ambiguous_retries for s in sends()] == [1, 0]


def test_dry_run_changes_nothing_and_lists_the_sends_at_verbosity_2(fail_due):
    make_journey()
    enrol(1, user="ana")
    enrol(2, user="bob")
    failed = fail_due()
    before = snapshot()

    output = retry("--failed", "--since", "1h", "--dry-run", "--verbosity", "2")

    assert snapshot() == before
    lines = output.splitlines()
    assert lines[-1].startswith("sends_retry: would re-queue 2 failed sends since ")
    assert [line.split(" (")[0].strip() for line in lines[:-1]] == [f"send {i}" for i in failed]
    assert all(line.endswith(f"{REFUSED}): would re-queue") for line in lines[:-1])


def test_since_and_until_select_by_when_the_send_failed(fail_due):
    make_journey()
    enrol(1, user="ana")
    enrol(2, user="bob")
    old, recent = fail_due()
    # the first failed three days ago
    ScheduledSend.objects.filter(pk=old).update(updated_at=timezone.now() - timedelta(days=3))

    assert "1 failed send since " in retry("--failed", "--since", "1d")
    assert ScheduledSend.objects.get(pk=recent).status == Status.PENDING
    assert ScheduledSend.objects.get(pk=old).status == Status.FAILED

    ScheduledSend.objects.filter(pk=recent).update(status=Status.FAILED)
    output = retry("--failed", "--since", "P4D", "--until", "2d")
    assert " until " in output and "1 failed send " in output
    assert ScheduledSend.objects.get(pk=old).status == Status.PENDING


def test_since_takes_an_iso_time_and_journey_narrows_to_one_journey(fail_due):
    make_journey()
    make_journey(slug="other", name="Other")
    enrol(1, user="ana")  # enrols in both journeys
    fail_due()
    start = (timezone.now() - timedelta(hours=1)).replace(microsecond=0)

    output = retry("--failed", "--since", start.isoformat(), "--journey", "other")

    since = start.isoformat().replace("+00:00", "Z")
    assert output == f"sends_retry: 1 failed send since {since} in other re-queued\n"
    assert {(s.journey.slug, s.status) for s in sends()} == {
        ("cart", Status.FAILED),
        ("other", Status.PENDING),
    }


def test_sends_that_did_not_fail_are_left_alone(fail_due):
    make_journey()
    enrol(1, user="ana")
    dispatch_due()  # sent
    enrol(2, user="bob")
    (failed,) = fail_due()
    enrol(3, user="cy")
    cancelled = sends(customer__external_id="cy")[0]
    services.scheduled_send_cancel(send_id=cancelled.pk, reason="campaign pulled")
    ingest(make_event("e4", "checkout_started", user="dee", at=minutes_ago(1), cart="c_4"))
    ScheduledSend.objects.filter(customer__external_id="dee").update(
        status=Status.SKIPPED, reason="skipped: opted out of email"
    )
    ingest(make_event("e5", "checkout_started", user="eve", at=minutes_ago(1), cart="c_5"))
    others = [row for row in snapshot() if row[0] != failed]
    assert {row[1] for row in others} == {
        Status.SENT,
        Status.CANCELLED,
        Status.SKIPPED,
        Status.PENDING,
    }

    assert "sends_retry: 1 failed send since " in retry("--failed", "--since", "1h")

    assert [row for row in snapshot() if row[0] != failed] == others
    assert ScheduledSend.objects.get(pk=failed).status == Status.PENDING


# --- what a re-drive refuses ----------------------------------------------------------------


def test_a_failed_send_with_a_newer_pending_send_of_the_step_stays_failed(fail_due):
    make_journey()
    enrol(1)
    (old,) = fail_due()
    enrol(2)  # nothing active any more: the customer is enrolled again
    (newer,) = sends(status=Status.PENDING)
    before = snapshot()

    output = retry("--failed", "--since", "1h", "--verbosity", "2")

    assert snapshot() == before
    assert output.splitlines()[-1].endswith(" re-queued, 1 left failed (a newer send exists)"), (
        output
    )
    assert output.splitlines()[-1].startswith("sends_retry: 0 failed sends since ")
    assert f"send {old} " in output
    assert f"left failed: a newer send exists (send {newer.pk}, pending)" in output


def test_a_failed_send_whose_step_went_out_since_stays_failed(fail_due):
    make_journey()
    enrol(1)
    (old,) = fail_due()
    enrol(2)
    assert list(dispatch_due().values()) == [Status.SENT]

    assert "0 failed sends" in retry("--failed", "--since", "1h")
    assert ScheduledSend.objects.get(pk=old).status == Status.FAILED
    assert len(mail.outbox) == 1


def test_of_two_failed_sends_of_one_step_only_the_newest_is_requeued(fail_due):
    """Both back to pending would send the step twice, and break the one-active-send-per-
    dedupe-key constraint (PostgreSQL refuses the second)."""
    make_journey()
    enrol(1)
    (old,) = fail_due()
    enrol(2)
    (newer,) = fail_due()

    output = retry("--failed", "--since", "1h", "--verbosity", "2")

    assert " 1 failed send since " in output
    assert output.rstrip().endswith("re-queued, 1 left failed (a newer send exists)")
    assert f"(send {newer}, failed too, re-queued instead)" in output
    statuses = dict(ScheduledSend.objects.values_list("pk", "status"))
    assert statuses == {old: Status.FAILED, newer: Status.PENDING}


def test_an_older_send_that_went_out_does_not_block_a_later_enrolment(fail_due):
    make_journey()
    enrol(1)
    dispatch_due()
    enrol(2)
    (failed,) = fail_due()

    assert "1 failed send " in retry("--failed", "--since", "1h")
    assert ScheduledSend.objects.get(pk=failed).status == Status.PENDING


def test_a_failed_send_whose_dedupe_key_an_active_send_holds_stays_failed(fail_due):
    """The constraint's own guard: whatever made the key busy, the update never fails on it."""
    make_journey()
    enrol(1, user="ana")
    ingest(make_event("e2", "checkout_started", user="bob", at=minutes_ago(1), cart="c_2"))
    (failed,) = fail_due()  # ana's, due
    (pending,) = sends(status=Status.PENDING)  # bob's, not due yet
    key = ScheduledSend.objects.get(pk=failed).dedupe_key
    ScheduledSend.objects.filter(pk=pending.pk).update(dedupe_key=key)

    output = retry("--failed", "--since", "1h", "--verbosity", "2")

    assert output.rstrip().endswith(", 1 left failed (an active send holds its dedupe key)")
    assert f"(send {pending.pk})" in output
    assert ScheduledSend.objects.get(pk=failed).status == Status.FAILED


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "1h"], "--failed is required"),
        (["--failed"], "the following arguments are required: --since"),
        (["--failed", "--since", "yesterday"], "--since 'yesterday' is not an ISO 8601 time"),
        (["--failed", "--since", "2026-02-30"], "--since '2026-02-30' is not"),
        (["--failed", "--since", "PT"], "--since 'PT' is not"),
        (["--failed", "--since", "2h", "--until", "soon"], "--until 'soon' is not"),
        (["--failed", "--since", "2999-01-01T00:00:00Z"], "is in the future"),
        (["--failed", "--since", "1h", "--until", "2h"], "must come after --since"),
        (["--failed", "--since", "1h", "--journey", "nope"], "no journey with slug 'nope'"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(args, message):
    with pytest.raises(CommandError, match=message):
        retry(*args)


# --- the admin action -----------------------------------------------------------------------


@pytest.fixture
def admin_client_logged_in(client):
    User.objects.create_superuser("root", password="x" * 12)
    client.login(username="root", password="x" * 12)
    return client


def retry_in_admin(client, ids: list[int]) -> str:
    response = client.post(
        "/admin/journeys/scheduledsend/",
        {"action": "retry_failed_sends", "_selected_action": [str(i) for i in ids]},
        follow=True,
    )
    assert response.status_code == 200
    return response.content.decode()


def test_admin_action_requeues_the_selected_failed_sends_and_says_what_it_left(
    admin_client_logged_in, fail_due
):
    make_journey()
    enrol(1, user="ana")
    dispatch_due()
    (sent,) = sends(status=Status.SENT)
    enrol(2, user="bob")
    (failed,) = fail_due()
    enrol(3, user="cy")
    (other_failed,) = fail_due()  # not selected

    page = retry_in_admin(admin_client_logged_in, [failed, sent.pk])

    assert "Re-queued 1 failed send(s)" in page
    assert "1 selected send(s) were not failed and were left as they are." in page
    send = ScheduledSend.objects.get(pk=failed)
    assert (send.status, send.attempts) == (Status.PENDING, 0)
    assert send.reason == f"re-driven by root in admin (was: {REFUSED})"
    assert ScheduledSend.objects.get(pk=sent.pk).status == Status.SENT
    assert ScheduledSend.objects.get(pk=other_failed).status == Status.FAILED


def test_admin_action_refuses_a_send_with_a_newer_one_of_the_step(admin_client_logged_in, fail_due):
    make_journey()
    enrol(1)
    (old,) = fail_due()
    enrol(2)
    (newer,) = fail_due()

    page = retry_in_admin(admin_client_logged_in, [old, newer])

    assert "Re-queued 1 failed send(s)" in page
    assert "1 failed send(s) were left failed: a newer send exists." in page
    statuses = dict(ScheduledSend.objects.values_list("pk", "status"))
    assert statuses == {old: Status.FAILED, newer: Status.PENDING}


# --- end to end -----------------------------------------------------------------------------
# Committed for real (transaction=True): the re-drive makes a send due at the database's
# clock, and PostgreSQL's now() in the claim is its transaction's start, which inside one
# test transaction would come before the re-drive.


@pytest.mark.django_db(transaction=True)
def test_a_requeued_send_is_dispatched_and_goes_out(fail_due):
    """Long after its first due time too: lateness runs from the re-drive's due time."""
    make_journey()
    enrol(1, user="ana")
    (failed,) = fail_due()
    assert mail.outbox == []
    ScheduledSend.objects.filter(pk=failed).update(due_at=timezone.now() - timedelta(hours=5))

    retry("--failed", "--since", "1h")

    assert dispatch_due() == {failed: Status.SENT}
    send = ScheduledSend.objects.get(pk=failed)
    assert (send.status, send.reason, send.attempts) == (Status.SENT, "", 1)
    assert [e["outcome"] for e in send.attempt_log] == [
        "permanent error: mailbox unavailable",
        "sent",
    ]
    (message,) = mail.outbox
    assert message.to == ["ana@example.com"]
    assert "https://shop.example/checkout/c_1" in message.body


@pytest.mark.django_db(transaction=True)
def test_a_requeued_send_is_still_cancelled_by_a_payment_since(fail_due):
    make_journey()
    enrol(1, user="ana")
    (failed,) = fail_due()
    ingest(
        make_event(
            "pay", "payment_finished", user="ana", at=minutes_ago(1), cart="c_1", payment="p_1"
        )
    )
    assert ScheduledSend.objects.get(pk=failed).status == Status.FAILED  # not active: untouched

    retry("--failed", "--since", "1h")

    assert dispatch_due() == {failed: Status.CANCELLED}
    assert ScheduledSend.objects.get(pk=failed).reason == "cancelled by payment p_1"
    assert mail.outbox == []
