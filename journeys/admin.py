from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.functional import cached_property
from django.views.decorators.http import require_POST

from journeys import selectors, services
from journeys.models import Conversion, Enrollment, Journey, JourneyStep, ScheduledSend
from journeys.services import erasure
from journeys.services.redrive import scheduled_sends_redrive
from journeys.specs import event_type_problem, step_problems
from marketing import admin as marketing_admin
from marketing.models import Customer
from nudge.admin import GuardedActionsAdmin, LargeTableAdmin


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
            "dedupe", "max_wait", "reentry", "reentry_period", "holdout_percent",
            "conversion_window",
        ]  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and isinstance(self.instance.exit_on, list):
            self.initial["exit_on"] = ", ".join(self.instance.exit_on)
        # left empty: no holdout, and the default window (as journeys-as-code without them)
        for name in ("holdout_percent", "conversion_window"):
            self.fields[name].required = False

    def clean_holdout_percent(self) -> Decimal:
        value = self.cleaned_data.get("holdout_percent")
        return Decimal(0) if value is None else value

    def clean_conversion_window(self) -> timedelta:
        value = self.cleaned_data.get("conversion_window")
        default = Journey._meta.get_field("conversion_window").get_default()
        return default if value is None else value

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
        window = cleaned.get("conversion_window")
        if window is not None and window <= timedelta(0):
            self.add_error("conversion_window", "Must be longer than 0 (e.g. 5 days: 5 00:00:00).")
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


def _with_records(journeys: QuerySet[Journey]) -> QuerySet[Journey]:
    """The journeys that have enrolments or sends: the record of what was promised and sent,
    which PROTECT keeps (one index probe per journey: both indexes lead with the journey)."""
    return journeys.filter(
        Exists(Enrollment.objects.filter(journey=OuterRef("pk")))
        | Exists(ScheduledSend.objects.filter(journey=OuterRef("pk")))
    )


UNDELETABLE = (
    "“{journey}” has enrolments and sends, the record of what was promised and sent, so it "
    "cannot be deleted. Deactivate it instead: it enrols no one, and its pending sends are "
    "cancelled as they come due (“cancelled: journey deactivated”)."
)


@admin.register(Journey)
class JourneyAdmin(GuardedActionsAdmin):
    """Marketers deactivate journeys; they do not delete them. The delete permission is
    withheld from a journey with enrolments or sends, for superusers too, and the change page
    and the list offer deactivation instead."""

    form = JourneyForm
    inlines = [JourneyStepInline]
    list_display = [
        "name", "slug", "trigger", "exit_list", "dedupe", "reentry", "holdout_percent", "active",
    ]  # fmt: skip
    list_filter = ["active", "trigger", "dedupe"]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}
    fieldsets = [
        (None, {"fields": ["name", "slug", "active"]}),
        ("When", {"fields": ["trigger", "exit_on", "exit_scope", "max_lateness"]}),
        ("Repeats", {"fields": ["dedupe", "max_wait", "reentry", "reentry_period"]}),
        (
            "Results",
            {
                "fields": ["holdout_percent", "conversion_window"],
                "description": "A holdout group is never sent anything: comparing its "
                "conversion with the others' shows what the journey earns (GET "
                "/api/journeys/&lt;slug&gt;/stats/).",
            },
        ),
    ]
    actions = ["deactivate_journeys"]
    # named here, not found by app label: the Deactivate button does not depend on the label
    change_form_template = "admin/journeys/journey/change_form.html"

    @admin.display(description="exit on")
    def exit_list(self, journey: Journey) -> str:
        return ", ".join(journey.exit_on)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        removed = [f.instance.pk for f in formset.deleted_forms if f.instance.pk]
        services.scheduled_send_cancel_for_steps(step_ids=removed)
        super().save_formset(request, form, formset, change)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not super().has_delete_permission(request, obj):
            return False
        return obj is None or not _with_records(Journey.objects.filter(pk=obj.pk)).exists()

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        """Refuse, naming each journey with records, before the collector gathers (and the
        page lists) every protected enrolment and send: a journey may have millions."""
        ids = [journey.pk for journey in objs]
        kept = list(_with_records(Journey.objects.filter(pk__in=ids)))
        if kept:
            return [], {}, set(), [UNDELETABLE.format(journey=journey) for journey in kept]
        return super().get_deleted_objects(objs, request)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        journey = self.get_object(request, unquote(object_id))
        if (
            journey is not None
            and self.has_view_or_change_permission(request, journey)
            and _with_records(Journey.objects.filter(pk=journey.pk)).exists()
        ):
            self.message_user(request, UNDELETABLE.format(journey=journey), messages.ERROR)
            return HttpResponseRedirect(self._change_url(journey))
        return super().delete_view(request, object_id, extra_context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        journey = self.get_object(request, unquote(object_id))
        if journey is not None and journey.active and self.has_change_permission(request, journey):
            extra_context = {
                **(extra_context or {}),
                "deactivate_url": reverse(
                    f"admin:{self.opts.app_label}_{self.opts.model_name}_deactivate",
                    args=[journey.pk],
                ),
                "undeletable": not self.has_delete_permission(request, journey),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list[URLPattern]:
        deactivate = path(
            "<path:object_id>/deactivate/",
            self.admin_site.admin_view(require_POST(self.deactivate_view)),
            name=f"{self.opts.app_label}_{self.opts.model_name}_deactivate",
        )
        return [deactivate, *super().get_urls()]  # before the catch-all "<object_id>/"

    def deactivate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's Deactivate button (it posts the change form here, and only the
        journey's id is read)."""
        journey = self.get_object(request, unquote(object_id))
        if journey is None or not self.has_change_permission(request, journey):
            raise PermissionDenied
        self._deactivate(Journey.objects.filter(pk=journey.pk))
        self.message_user(
            request,
            f"“{journey}” is deactivated: it enrols no one, and its pending sends are cancelled "
            "as they come due (“cancelled: journey deactivated”). Tick Active to switch it on "
            "again.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(self._change_url(journey))

    @admin.action(description="Deactivate selected journeys", permissions=["change"])
    def deactivate_journeys(self, request: HttpRequest, queryset: QuerySet[Journey]) -> None:
        deactivated = self._deactivate(queryset)
        self.message_user(
            request,
            f"Deactivated {deactivated} journey(s): they enrol no one, and their pending sends "
            "are cancelled as they come due.",
            messages.SUCCESS,
        )

    @staticmethod
    def _deactivate(journeys: QuerySet[Journey]) -> int:
        return services.journeys_deactivate(journey_ids=list(journeys.values_list("pk", flat=True)))

    def _change_url(self, journey: Journey) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[journey.pk]
        )


@admin.register(ScheduledSend)
class ScheduledSendAdmin(LargeTableAdmin):
    list_display = [
        "id",
        "journey",
        "customer",
        "channel",
        "status",
        "reason",
        "due_at",
        "sent_at",
        "delivery_status",
    ]
    list_filter = ["status", "delivery_status", "journey", "channel", "due_at"]
    search_fields = ["customer__external_id", "customer__email", "customer__phone", "discount_code"]
    list_select_related = ["journey", "customer"]
    actions = ["cancel_sends", "retry_failed_sends"]
    readonly_fields = [f.name for f in ScheduledSend._meta.fields]
    list_per_page = 100

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(
        description="Cancel selected sends that have not gone out", permissions=["change"]
    )
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

    @admin.action(description="Retry the selected failed sends", permissions=["change"])
    def retry_failed_sends(self, request: HttpRequest, queryset: QuerySet[ScheduledSend]) -> None:
        """The re-drive of `manage.py sends_retry` (services.redrive) for the ticked rows:
        failed ones go back to pending, due now; the others are left as they are."""
        result = scheduled_sends_redrive(
            send_ids=list(queryset.values_list("pk", flat=True)),
            by=f"{request.user.get_username()} in admin",
        )
        self.message_user(
            request,
            f"Re-queued {len(result.requeued)} failed send(s): they are due now, and dispatch "
            "checks each again (exit, consent, journey on) before it goes out.",
            messages.SUCCESS,
        )
        for why, count in result.refusals().items():
            self.message_user(
                request, f"{count} failed send(s) were left failed: {why}.", messages.WARNING
            )
        if result.not_failed:
            self.message_user(
                request,
                f"{len(result.not_failed)} selected send(s) were not failed and were left as "
                "they are.",
                messages.INFO,
            )


@admin.register(Conversion)
class ConversionAdmin(LargeTableAdmin):
    """Payments credited to a journey's send (journeys.services.attribution): read only, as
    they are derived from the payments and the sends."""

    list_display = [
        "converted_at", "journey", "kind", "held_out", "amount", "currency", "payment", "send",
    ]  # fmt: skip
    list_filter = ["journey", "kind", "held_out", "converted_at"]
    search_fields = ["payment__external_id", "customer__external_id"]
    list_select_related = ["journey", "payment"]
    readonly_fields = [f.name for f in Conversion._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- the customer list's erasure ----------------------------------------------------------
# The customer admin is marketing's, and erasure (services.erasure) spans both apps: it
# cancels and empties sends. Marketing never imports journeys, so journeys extends
# marketing's admin with the action and registers it in its place (journeys.admin is
# imported after marketing.admin, which it imports).

ERASE_AT_ONCE_MAX = 100


class ErasableCustomerAdmin(marketing_admin.CustomerAdmin):
    # marketing's own actions, if it has any, and the erasure
    actions = [*(getattr(marketing_admin.CustomerAdmin, "actions", None) or []), "erase_customers"]

    def has_erase_permission(self, request: HttpRequest) -> bool:
        """The dedicated permission marketing.erase_customer (not the Marketer group's)."""
        return request.user.has_perm(f"{self.opts.app_label}.erase_customer")

    @admin.action(description="Erase the selected customers' personal data", permissions=["erase"])
    def erase_customers(
        self, request: HttpRequest, queryset: QuerySet[Customer]
    ) -> HttpResponse | None:
        """A confirmation page with what each erasure would change (a dry run), as Django's
        delete confirmation; its "Yes, I'm sure" posts again with post=yes and erases."""
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: ERASE_AT_ONCE_MAX + 1])
        if len(ids) > ERASE_AT_ONCE_MAX:
            self.message_user(
                request,
                f"Erase at most {ERASE_AT_ONCE_MAX} customers at once "
                "(manage.py customer_erase takes any number).",
                messages.ERROR,
            )
            return None
        if request.POST.get("post") == "yes":
            reports = erasure.customers_erase(customer_ids=ids)
            done = [r for r in reports if not r.already_erased]
            self.message_user(
                request,
                f"Erased the personal data of {len(done)} customer(s).",
                messages.SUCCESS,
            )
            for report in done:
                self.message_user(request, report.summary(), messages.INFO)
            if len(done) < len(reports):
                self.message_user(
                    request,
                    f"{len(reports) - len(done)} customer(s) were erased already.",
                    messages.WARNING,
                )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Erase personal data: are you sure?",
            "opts": self.opts,
            "queryset": queryset.filter(pk__in=ids),
            "reports": erasure.customers_erase(customer_ids=ids, dry_run=True),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/journeys/customer_erase_confirmation.html", context)


admin.site.unregister(Customer)
admin.site.register(Customer, ErasableCustomerAdmin)
