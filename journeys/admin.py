from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

from journeys import selectors, services
from journeys.models import Journey, JourneyStep, ScheduledSend
from journeys.specs import event_type_problem, step_problems
from nudge.admin import LargeTableAdmin


class JourneyForm(forms.ModelForm):
    exit_on = forms.CharField(
        required=False,
        help_text="Event types that cancel pending sends, separated by commas "
        "(e.g. payment_finished).",
    )

    class Meta:
        model = Journey
        fields = [
            "name", "slug", "active", "trigger", "exit_on", "exit_scope", "max_lateness",
            "dedupe", "max_wait", "reentry", "reentry_period",
        ]  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and isinstance(self.instance.exit_on, list):
            self.initial["exit_on"] = ", ".join(self.instance.exit_on)

    @cached_property
    def known_event_types(self) -> set[str]:
        """Read once per form (one probe of the event log's type index per type)."""
        return selectors.known_event_types()

    def clean_trigger(self) -> str:
        value = self.cleaned_data["trigger"].strip()
        if problem := event_type_problem(value, self.known_event_types):
            raise forms.ValidationError(problem)
        return value

    def clean_exit_on(self) -> list[str]:
        values = [v.strip() for v in (self.cleaned_data.get("exit_on") or "").split(",")]
        values = [v for v in values if v]
        known = self.known_event_types
        problems = [p for v in values if (p := event_type_problem(v, known))]
        if problems:
            raise forms.ValidationError(problems)
        return values

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("reentry") == Journey.Reentry.PERIOD and not cleaned.get("reentry_period"):
            self.add_error("reentry_period", "Required when re-entry is once per period.")
        return cleaned


class JourneyStepForm(forms.ModelForm):
    class Meta:
        model = JourneyStep
        fields = [
            "position", "delay", "channel", "subject", "body", "discount_percent",
            "discount_valid_for",
        ]  # fmt: skip

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.cleaned_data.get("DELETE"):
            return cleaned
        problems = step_problems(
            channel=cleaned.get("channel") or "",
            subject=cleaned.get("subject") or "",
            body=cleaned.get("body") or "",
            discount_percent=cleaned.get("discount_percent"),
        )
        for name, found in problems.items():
            for problem in found:
                self.add_error(name, problem)
        percent = cleaned.get("discount_percent")
        if percent is not None and not 1 <= percent <= 100:
            self.add_error("discount_percent", "A whole number from 1 to 100.")
        return cleaned


class JourneyStepInline(admin.StackedInline):
    model = JourneyStep
    form = JourneyStepForm
    extra = 0
    min_num = 1
    fields = [
        "position",
        "delay",
        "channel",
        "subject",
        "body",
        "discount_percent",
        "discount_valid_for",
    ]


@admin.register(Journey)
class JourneyAdmin(admin.ModelAdmin):
    form = JourneyForm
    inlines = [JourneyStepInline]
    list_display = ["name", "slug", "trigger", "exit_list", "dedupe", "reentry", "active"]
    list_filter = ["active", "trigger", "dedupe"]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}
    fieldsets = [
        (None, {"fields": ["name", "slug", "active"]}),
        ("When", {"fields": ["trigger", "exit_on", "exit_scope", "max_lateness"]}),
        ("Repeats", {"fields": ["dedupe", "max_wait", "reentry", "reentry_period"]}),
    ]

    @admin.display(description="exit on")
    def exit_list(self, journey: Journey) -> str:
        return ", ".join(journey.exit_on)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        removed = [f.instance.pk for f in formset.deleted_forms if f.instance.pk]
        services.scheduled_send_cancel_for_steps(step_ids=removed)
        super().save_formset(request, form, formset, change)


@admin.register(ScheduledSend)
class ScheduledSendAdmin(LargeTableAdmin):
    list_display = ["id", "journey", "customer", "channel", "status", "reason", "due_at", "sent_at"]
    list_filter = ["status", "journey", "channel", "due_at"]
    search_fields = ["customer__external_id", "customer__email", "customer__phone", "discount_code"]
    list_select_related = ["journey", "customer"]
    actions = ["cancel_sends"]
    readonly_fields = [f.name for f in ScheduledSend._meta.fields]
    list_per_page = 100

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Cancel selected sends that have not gone out")
    def cancel_sends(self, request: HttpRequest, queryset: QuerySet[ScheduledSend]) -> None:
        cancelled, refused = 0, 0
        for send_id in queryset.values_list("pk", flat=True):
            try:
                services.scheduled_send_cancel(
                    send_id=send_id, reason=f"cancelled by {request.user.get_username()} in admin"
                )
                cancelled += 1
            except services.SendNotCancellable:
                refused += 1
        self.message_user(request, f"Cancelled {cancelled} send(s).", messages.SUCCESS)
        if refused:
            self.message_user(
                request,
                f"{refused} send(s) already had an outcome and were left.",
                messages.WARNING,
            )
