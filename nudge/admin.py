"""Admin base classes shared by Nudge's apps, and django-q2's task admin made safe for
marketers (who may view tasks and failures, not re-run or delete them)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django_q import admin as q_admin
from django_q.models import Failure, Success


class GuardedActionsAdmin(admin.ModelAdmin):
    """An admin whose actions a user without their permission cannot run at all.

    Each action that changes anything declares `permissions=[...]` (tests/nudge/
    test_admin_security.py holds every registered action to it), so Django offers it only to
    users with those permissions. Django answers a POST of an action it does not offer with a
    200 "No action selected"; here it is a 403, as any forged request deserves."""

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST" and "action" in request.POST:
            name = request.POST["action"]
            # every action of this admin and the site's, before Django filters them by
            # permission (_get_base_actions is not in django-stubs)
            base_actions = self._get_base_actions()  # type: ignore[attr-defined]
            defined = {action_name for _, action_name, _ in base_actions}
            if name in defined and name not in self.get_actions(request):
                raise PermissionDenied
        return super().changelist_view(request, extra_context)


class LargeTableAdmin(GuardedActionsAdmin):
    """The list of a table that reaches millions of rows (customers, carts, payments, events,
    sends), cheap to open: newest first by primary key (an index; the model's ordering, by a
    date without an index, sorted the whole table for each page); no date hierarchy (it runs
    SELECT DISTINCT date_trunc(...) over the whole table: the date filter does its job); one
    COUNT(*), not a second one for the unfiltered total. At a million rows each list took
    1.3-3.0 s to open, most of it in those queries."""

    ordering = ("-pk",)
    date_hierarchy = None
    show_full_result_count = False


def _last_line(text: str | None) -> str:
    """The last non-empty line of a task's result: for a traceback, the exception itself."""
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# django-q2's admins of successful and failed tasks, replaced.
#
# django-q2's "Resubmit selected tasks to queue" declares no permission: a user who may only
# view failures (the Marketer group) re-runs any failed task, and deletes its row, with it.
# Here it needs the change permission (and for a failure, whose row it deletes, delete as
# well). The full result of a failure, a traceback with the task's code and arguments, is
# shown to superusers only; others see its last line (the exception).


class SuccessAdmin(GuardedActionsAdmin, q_admin.TaskAdmin):
    actions = ["resubmit_tasks"]

    @admin.action(description="Resubmit selected tasks to queue", permissions=["resubmit"])
    def resubmit_tasks(self, request: HttpRequest, queryset: Any) -> None:
        q_admin.resubmit_task(self, request, queryset)

    def has_resubmit_permission(self, request: HttpRequest) -> bool:
        return self.has_change_permission(request)


class FailureAdmin(GuardedActionsAdmin, q_admin.FailAdmin):
    actions = ["resubmit_tasks"]

    @admin.action(
        description="Resubmit selected tasks to queue (their failure rows are deleted)",
        permissions=["resubmit"],
    )
    def resubmit_tasks(self, request: HttpRequest, queryset: Any) -> None:
        q_admin.resubmit_task(self, request, queryset)  # deletes each row: a FailAdmin

    def has_resubmit_permission(self, request: HttpRequest) -> bool:
        return self.has_change_permission(request) and self.has_delete_permission(request)

    @admin.display(description="Error")
    def error(self, obj: Failure) -> str:
        return _last_line(obj.result)

    @admin.display(description="Short result")
    def short_error(self, obj: Failure) -> str:
        return q_admin.truncatechars(_last_line(obj.result), 100)

    def get_list_display(self, request: HttpRequest) -> Any:
        columns = list(super().get_list_display(request))
        if request.user.is_superuser:
            return columns
        return ["short_error" if name == "short_result" else name for name in columns]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        return fields if request.user.is_superuser else [*fields, "error"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_fields(request, obj))
        return fields if request.user.is_superuser else [f for f in fields if f != "result"]


def _register_task_admins() -> None:
    for model, model_admin in ((Success, SuccessAdmin), (Failure, FailureAdmin)):
        if admin.site.is_registered(model):
            admin.site.unregister(model)
        admin.site.register(model, model_admin)


_register_task_admins()  # django_q is a required app (nudge.checks)
