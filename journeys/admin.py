from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.functional import cached_property
from django.views.decorators.http import require_POST

from journeys import selectors, services
from journeys.codes import DiscountRule, discount_rule_problems
from journeys.conditions import (
    condition_problems,
    condition_step_positions,
    condition_words,
    entry_scope,
    known_fields,
    step_scope,
)
from journeys.models import (
    Conversion,
    Enrollment,
    FrequencyCap,
    Journey,
    JourneyStep,
    ScheduledSend,
    SendWindowMode,
)
from journeys.services import erasure
from journeys.services.redrive import scheduled_sends_redrive
from journeys.specs import event_type_problem, send_window_problem, step_problems
from marketing import admin as marketing_admin
from marketing.models import Customer
from nudge.admin import GuardedActionsAdmin, LargeTableAdmin

ENTRY_CONDITIONS_HELP = (
    "Who may enter, as JSON; empty: everyone the trigger brings. A comparison "
    '{"field": "cart.total", "op": ">=", "value": 50}, a history condition '
    '{"history": {"event": "payment_finished", "within": "P30D", "op": "=", "count": 0}} '
    '(no payment in the last 30 days), combined with {"all": [...]} or {"any": [...]}. '
    "Operators: = != < <= > >= in, not in (a list), starts with, contains, is set, is not set. "
    f"Fields: {known_fields(entry_scope())}. Example: "
    '{"all": [{"field": "cart.total", "op": ">=", "value": 50}, '
    '{"field": "customer.timezone", "op": "starts with", "value": "Europe/"}]}'
)
STEP_CONDITION_HELP = (
    "Send only if this holds, as JSON; empty: always. An earlier step of the same enrolment "
    '{"step": 0, "was": "not opened"} (sent, opened, clicked, not sent, not opened, not '
    "clicked; by its position), or a comparison on the customer or cart, e.g. "
    '{"field": "cart.total", "op": ">=", "value": 50}; combine with {"all": [...]} or '
    '{"any": [...]}.'
)


def _json_textarea() -> forms.Textarea:
    return forms.Textarea(attrs={"rows": 4, "cols": 90, "style": "font-family: monospace"})


class JourneyForm(forms.ModelForm):
    exit_on = forms.CharField(
        required=False,
        help_text="Event types that cancel pending sends, separated by commas "
        "(e.g. payment_finished).",
    )
    conditions = forms.JSONField(
        required=False, label="Entry conditions", help_text=ENTRY_CONDITIONS_HELP
    )

    class Meta:
        model = Journey
        fields = [
            "name", "slug", "active", "trigger", "exit_on", "exit_scope", "max_lateness",
            "dedupe", "max_wait", "reentry", "reentry_period", "conditions", "transactional",
            "priority", "send_window", "send_window_start", "send_window_end",
            "send_weekdays_only", "holdout_percent",
            "conversion_window",
        ]  # fmt: skip
        widgets = {
            "send_window_start": forms.TimeInput(format="%H:%M"),
            "send_window_end": forms.TimeInput(format="%H:%M"),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["conditions"].widget = _json_textarea()
        if self.instance.pk and isinstance(self.instance.exit_on, list):
            self.initial["exit_on"] = ", ".join(self.instance.exit_on)
        # left out of a post (a script, an older form): the defaults, not an error
        for name in ("priority", "send_window"):
            if name in self.fields:
                self.fields[name].required = False
        # left empty: no holdout, and the default window (as journeys-as-code without them)
        for name in ("holdout_percent", "conversion_window"):
            self.fields[name].required = False

    def clean_priority(self) -> int:
        value = self.cleaned_data.get("priority")
        return 0 if value is None else int(value)

    def clean_send_window(self) -> str:
        return self.cleaned_data.get("send_window") or SendWindowMode.SITE

    def clean_conditions(self) -> dict[str, Any]:
        value = self.cleaned_data.get("conditions") or {}
        problems = condition_problems(
            value, scope=entry_scope(), known_types=self.known_event_types
        )
        if problems:
            raise forms.ValidationError(problems)
        return value

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
        if cleaned.get("send_window") == SendWindowMode.CUSTOM and (
            problem := send_window_problem(
                cleaned.get("send_window_start"), cleaned.get("send_window_end")
            )
        ):
            self.add_error("send_window_end", f"Own hours: {problem}.")
        window = cleaned.get("conversion_window")
        if window is not None and window <= timedelta(0):
            self.add_error("conversion_window", "Must be longer than 0 (e.g. 5 days: 5 00:00:00).")
        return cleaned


class JourneyStepForm(forms.ModelForm):
    condition = forms.JSONField(required=False, help_text=STEP_CONDITION_HELP)

    class Meta:
        model = JourneyStep
        fields = [
            "position", "delay", "channel", "subject", "body", "discount_percent",
            "discount_amount", "discount_currency", "discount_valid_for", "discount_prefix",
            "discount_pool", "condition",
        ]  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["condition"].widget = _json_textarea()

    def clean_condition(self) -> dict[str, Any] | None:
        return self.cleaned_data.get("condition") or None

    def clean_discount_currency(self) -> str:
        return str(self.cleaned_data.get("discount_currency") or "").strip().upper()

    def clean_discount_prefix(self) -> str:
        return str(self.cleaned_data.get("discount_prefix") or "").strip().upper()

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.cleaned_data.get("DELETE"):
            return cleaned
        problems = step_problems(
            channel=cleaned.get("channel") or "",
            subject=cleaned.get("subject") or "",
            body=cleaned.get("body") or "",
            discount_percent=cleaned.get("discount_percent"),
            discount_amount=cleaned.get("discount_amount"),
        )
        for name, found in problems.items():
            for problem in found:
                self.add_error(name, problem)
        pool = cleaned.get("discount_pool")
        rule = DiscountRule(
            percent=cleaned.get("discount_percent"),
            amount=cleaned.get("discount_amount"),
            currency=cleaned.get("discount_currency") or "",
            prefix=cleaned.get("discount_prefix") or "",
            pool=pool.name if pool is not None else None,
            has_valid_for=cleaned.get("discount_valid_for") is not None,
        )
        for name, found in discount_rule_problems(rule).items():
            for problem in found:
                self.add_error(f"discount_{name}", f"{problem[0].upper()}{problem[1:]}.")
        return cleaned


class JourneyStepFormSet(BaseInlineFormSet):
    """Step conditions refer to earlier steps by position: checked against the steps kept."""

    def clean(self) -> None:
        super().clean()
        kept = [
            form
            for form in self.forms
            if hasattr(form, "cleaned_data")
            and not form.cleaned_data.get("DELETE")
            and form.cleaned_data.get("position") is not None
        ]
        positions = {form.cleaned_data["position"] for form in kept}
        for form in kept:
            condition = form.cleaned_data.get("condition")
            if not condition:
                continue
            own = form.cleaned_data["position"]
            earlier = {p for p in positions if p < own}
            problems = condition_problems(condition, scope=step_scope(earlier), path="condition")
            for problem in problems:
                form.add_error("condition", problem)


class JourneyStepInline(admin.StackedInline):
    model = JourneyStep
    form = JourneyStepForm
    formset = JourneyStepFormSet
    extra = 0
    min_num = 1
    fields = [
        "position",
        "delay",
        "channel",
        "subject",
        "body",
        ("discount_percent", "discount_amount", "discount_currency"),
        ("discount_valid_for", "discount_prefix", "discount_pool"),
        "condition",
        "condition_in_words",
    ]
    readonly_fields = ["condition_in_words"]

    @admin.display(description="condition in words")
    def condition_in_words(self, step: JourneyStep) -> str:
        if step.pk is None or not step.condition:
            return "always"
        positions = condition_step_positions(step.condition)
        channels = {
            s.position: s.get_channel_display()
            for s in step.journey.steps.all()
            if s.position in positions
        }
        return condition_words(step.condition, step_channels=channels)


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
        "name", "slug", "trigger", "conditions_in_words", "exit_list", "dedupe", "reentry",
        "priority", "transactional", "holdout_percent", "active",
    ]  # fmt: skip
    list_filter = ["active", "trigger", "dedupe", "transactional"]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["conditions_in_words"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "active"]}),
        ("When", {"fields": ["trigger", "exit_on", "exit_scope", "max_lateness"]}),
        ("Who", {"fields": ["conditions", "conditions_in_words"]}),
        ("Repeats", {"fields": ["dedupe", "max_wait", "reentry", "reentry_period"]}),
        (
            "Pacing",
            {
                "fields": [
                    "transactional",
                    "priority",
                    "send_window",
                    ("send_window_start", "send_window_end"),
                    "send_weekdays_only",
                ],
                "description": "Quiet hours are read in the customer's time zone (an unknown "
                "one is UTC); a send due outside them waits for the next opening, or is "
                "skipped when that is past the max lateness. The site-wide frequency caps "
                "are under Frequency caps. A transactional journey ignores both.",
            },
        ),
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

    @admin.display(description="entry conditions in words")
    def conditions_in_words(self, journey: Journey) -> str:
        return condition_words(journey.conditions)

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
        extra_context = {**(extra_context or {}), "conditions_preview_url": self._preview_url()}
        if journey is not None and journey.active and self.has_change_permission(request, journey):
            extra_context = {
                **extra_context,
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
        preview = path(
            "conditions/preview/",
            self.admin_site.admin_view(require_POST(self.conditions_preview_view)),
            name=f"{self.opts.app_label}_{self.opts.model_name}_conditions_preview",
        )
        # before the catch-all "<object_id>/"
        return [preview, deactivate, *super().get_urls()]

    def conditions_preview_view(self, request: HttpRequest) -> JsonResponse:
        """The change page's live check of a condition as it is typed: {"words": "...",
        "problems": [...]}, what saving would say. `kind` is entry or step; a step's
        `position`, and `steps` ("position:channel" of the page's steps), tell which steps
        are earlier."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        text = request.POST.get("condition", "").strip()
        if not text:
            return JsonResponse({"words": "always", "problems": []})
        try:
            raw = json.loads(text)
        except ValueError as exc:
            return JsonResponse({"words": "", "problems": [f"not valid JSON: {exc}"]})
        channels: dict[int, str] = {}
        if request.POST.get("kind") == "step":
            for entry in request.POST.getlist("steps"):
                position, _, channel = entry.partition(":")
                if position.strip().isdigit():
                    channels[int(position)] = channel.strip()
            own = request.POST.get("position", "").strip()
            if not own.isdigit():
                return JsonResponse(
                    {"words": "", "problems": ["position: give the step a position"]}
                )
            earlier = {p for p in channels if p < int(own)}
            problems = condition_problems(raw, scope=step_scope(earlier), path="condition")
        else:
            problems = condition_problems(
                raw, scope=entry_scope(), known_types=selectors.known_event_types()
            )
        words = "" if problems else condition_words(raw, step_channels=channels)
        return JsonResponse({"words": words, "problems": problems})

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

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "conditions_preview_url": self._preview_url()}
        return super().add_view(request, form_url, extra_context)

    def _preview_url(self) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_conditions_preview")

    def _change_url(self, journey: Journey) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[journey.pk]
        )


@admin.register(FrequencyCap)
class FrequencyCapAdmin(GuardedActionsAdmin):
    """The site's caps per channel across every journey (journeys.services.pacing): a
    marketer adds, edits or deactivates them; each active one must allow a send."""

    list_display = ["__str__", "channel", "max_sends", "period", "active", "updated_at"]
    list_editable = ["active"]
    list_filter = ["channel", "active"]
    fields = ["channel", "max_sends", "period", "active"]


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


# the discount code pools, their codes and the redemptions (journeys.admin_codes)
from journeys import admin_codes  # noqa: E402, F401
