"""Admin actions need the permission of what they change: every action declares one, a user
without it is not offered the action and gets a 403 when posting it anyway; django-q2's task
admin lets no marketer re-run or delete a task, or read a failure's traceback."""

from __future__ import annotations

import uuid

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from django_q.models import Failure, OrmQ, Task

from journeys.models import ScheduledSend
from marketing.services import marketer_user_ensure
from media_tasks import services as media_services
from media_tasks.models import ImageStatus
from nudge.admin import GuardedActionsAdmin
from tests.factories import UploadedImageFactory
from tests.journeys.conftest import ingest, make_event, make_journey, minutes_ago

pytestmark = pytest.mark.django_db

NUDGE_APPS = {"marketing", "journeys", "media_tasks", "django_q"}
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/nudge/journeys/tasks.py", line 42, in dispatch\n'
    "    secret_internal_call(api_key='sk_live_do_not_show')\n"
    "ValueError: provider refused the message"
)


def registered_admins():
    return [
        (model, model_admin)
        for model, model_admin in admin.site._registry.items()
        if model._meta.app_label in NUDGE_APPS
    ]


def test_every_admin_action_declares_the_permission_it_needs():
    undeclared = []
    for model, model_admin in registered_admins():
        for func, name, _ in model_admin._get_base_actions():
            permissions = getattr(func, "allowed_permissions", ())
            if not permissions or set(permissions) == {"view"}:
                undeclared.append(f"{model._meta.label}: {name}")
    assert undeclared == []


def test_every_admin_refuses_an_action_it_does_not_offer():
    assert [
        model._meta.label
        for model, model_admin in registered_admins()
        if not isinstance(model_admin, GuardedActionsAdmin)
        and model._meta.label not in {"django_q.Schedule", "django_q.OrmQ"}  # no own actions
    ] == []


def staff_with(username: str, *perms: str) -> User:
    user = User.objects.create_user(username, password="unused-password", is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def action_names(response) -> set[str]:
    form = response.context["action_form"]  # None when the user is offered no action
    return {name for name, _ in form.fields["action"].choices if name} if form else set()


# --- sends ---------------------------------------------------------------------------------


@pytest.fixture
def pending_send() -> ScheduledSend:
    make_journey()
    ingest(make_event("co_1", "checkout_started", at=minutes_ago(1), cart="c_1"))
    return ScheduledSend.objects.get()


def test_a_view_only_user_is_not_offered_cancel_and_is_refused_when_posting_it(
    client, pending_send
):
    client.force_login(staff_with("viewer", "journeys.view_scheduledsend"))

    listing = client.get("/admin/journeys/scheduledsend/")
    assert listing.status_code == 200
    assert "cancel_sends" not in action_names(listing)

    response = client.post(
        "/admin/journeys/scheduledsend/",
        {"action": "cancel_sends", "_selected_action": [str(pending_send.pk)]},
    )

    assert response.status_code == 403
    pending_send.refresh_from_db()
    assert (pending_send.status, pending_send.reason) == (ScheduledSend.Status.PENDING, "")


def test_a_user_who_may_change_sends_cancels_them(client, pending_send):
    client.force_login(
        staff_with("editor", "journeys.view_scheduledsend", "journeys.change_scheduledsend")
    )

    assert "cancel_sends" in action_names(client.get("/admin/journeys/scheduledsend/"))
    response = client.post(
        "/admin/journeys/scheduledsend/",
        {"action": "cancel_sends", "_selected_action": [str(pending_send.pk)]},
    )

    assert response.status_code == 302
    pending_send.refresh_from_db()
    assert pending_send.status == ScheduledSend.Status.CANCELLED


def test_an_action_name_the_admin_does_not_define_is_left_to_django(client, pending_send):
    """Only a known action the user may not run is a 403; any other name is Django's
    "No action selected" (a redirect, or the list when the user has no action at all)."""
    client.force_login(staff_with("viewer", "journeys.view_scheduledsend"))

    response = client.post(
        "/admin/journeys/scheduledsend/",
        {"action": "no_such_action", "_selected_action": [str(pending_send.pk)]},
    )

    assert response.status_code in (200, 302)
    pending_send.refresh_from_db()
    assert pending_send.status == ScheduledSend.Status.PENDING


# --- images --------------------------------------------------------------------------------


def test_a_view_only_user_cannot_compress_images_again(client, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    image = UploadedImageFactory.create(width=200, height=100)
    media_services.image_compress(image_id=image.pk)
    client.force_login(staff_with("viewer", "media_tasks.view_uploadedimage"))

    assert "compress_again" not in action_names(client.get("/admin/media_tasks/uploadedimage/"))
    response = client.post(
        "/admin/media_tasks/uploadedimage/",
        {"action": "compress_again", "_selected_action": [str(image.pk)]},
    )

    assert response.status_code == 403
    image.refresh_from_db()
    assert image.status == ImageStatus.DONE


# --- django-q2's tasks ---------------------------------------------------------------------


@pytest.fixture
def failure() -> Task:
    now = timezone.now()
    return Task.objects.create(
        id=uuid.uuid4().hex,
        name="dispatch-failed-once",
        func="journeys.tasks.dispatch_sends",
        args=([1, 2, 3],),
        kwargs={},
        result=TRACEBACK,
        started=now,
        stopped=now,
        success=False,
        attempt_count=1,
    )


@pytest.fixture
def marketer() -> User:
    return marketer_user_ensure(username="marketer", password=None)


def test_a_marketer_is_not_offered_to_resubmit_a_failed_task_and_is_refused(
    client, marketer, failure
):
    client.force_login(marketer)
    listing = client.get("/admin/django_q/failure/")
    assert listing.status_code == 200
    assert action_names(listing) == set()

    for action in ("resubmit_tasks", "resubmit_task", "delete_selected"):
        response = client.post(
            "/admin/django_q/failure/", {"action": action, "_selected_action": [failure.pk]}
        )
        assert response.status_code in (200, 403), action  # 200: Django's "no action"
        assert Failure.objects.filter(pk=failure.pk).exists(), action
    assert (
        client.post(
            "/admin/django_q/failure/",
            {"action": "resubmit_tasks", "_selected_action": [failure.pk]},
        ).status_code
        == 403
    )
    assert OrmQ.objects.count() == 0


def test_a_marketer_sees_a_failures_exception_but_not_its_traceback(client, marketer, failure):
    client.force_login(marketer)

    for url in ("/admin/django_q/failure/", f"/admin/django_q/failure/{failure.pk}/change/"):
        page = client.get(url)
        assert page.status_code == 200, url
        html = page.content.decode()
        assert "ValueError: provider refused the message" in html, url
        assert "Traceback" not in html, url
        assert "sk_live_do_not_show" not in html, url


def test_a_superuser_sees_the_traceback_and_resubmits_a_failed_task(admin_client, failure):
    page = admin_client.get(f"/admin/django_q/failure/{failure.pk}/change/").content.decode()
    assert "Traceback (most recent call last)" in page
    assert "resubmit_tasks" in action_names(admin_client.get("/admin/django_q/failure/"))

    response = admin_client.post(
        "/admin/django_q/failure/", {"action": "resubmit_tasks", "_selected_action": [failure.pk]}
    )

    assert response.status_code == 302
    assert not Failure.objects.filter(pk=failure.pk).exists()
    assert OrmQ.objects.count() == 1  # queued again on the test settings' ORM broker


def test_resubmitting_a_success_needs_the_change_permission(client, failure):
    Task.objects.filter(pk=failure.pk).update(success=True, result=None)
    client.force_login(staff_with("viewer", "django_q.view_success"))

    assert action_names(client.get("/admin/django_q/success/")) == set()
    response = client.post(
        "/admin/django_q/success/", {"action": "resubmit_tasks", "_selected_action": [failure.pk]}
    )

    assert response.status_code == 403
    assert OrmQ.objects.count() == 0
