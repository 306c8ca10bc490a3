"""The admin of discount codes: pools (with their stock, the low-stock warning and the CSV
upload), the pools' codes, and the redemptions of codes by payments."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from journeys import selectors
from journeys.models import CodeRedemption, DiscountCodePool, PooledCode
from journeys.services.codes import PoolUploadRefused, pooled_codes_upload
from nudge.admin import GuardedActionsAdmin, LargeTableAdmin

# how many of an upload's problems are shown one by one (the rest are counted)
PROBLEMS_SHOWN = 20


class PoolUploadForm(forms.Form):
    file = forms.FileField(
        help_text="One code per line, or a CSV file with a 'code' column (UTF-8). Codes are "
        "upper-cased; letters, digits, '-' and '_'."
    )


def _low(pool: DiscountCodePool) -> bool:
    return pool.remaining < pool.low_stock_threshold  # type: ignore[attr-defined]


def _low_message(pool: DiscountCodePool) -> str:
    remaining = pool.remaining  # type: ignore[attr-defined]
    if remaining == 0:
        return (
            f"Discount code pool “{pool.name}” is empty: its steps' sends are skipped "
            "(“no discount code: pool … is empty”) until codes are uploaded."
        )
    return (
        f"Discount code pool “{pool.name}” is running low: {remaining} code(s) left, below "
        f"its threshold of {pool.low_stock_threshold}. Upload more codes."
    )


@admin.register(DiscountCodePool)
class DiscountCodePoolAdmin(GuardedActionsAdmin):
    list_display = ["name", "remaining", "taken", "low_stock_threshold", "stock", "description"]
    search_fields = ["name", "description"]
    fields = ["name", "description", "low_stock_threshold"]
    change_form_template = "admin/journeys/discountcodepool/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[DiscountCodePool]:
        return selectors.discount_pools_with_stock()

    @admin.display(description="codes left", ordering="remaining")
    def remaining(self, pool: DiscountCodePool) -> int:
        return int(pool.remaining)  # type: ignore[attr-defined]

    @admin.display(description="handed out", ordering="taken")
    def taken(self, pool: DiscountCodePool) -> int:
        return int(pool.taken)  # type: ignore[attr-defined]

    @admin.display(description="stock")
    def stock(self, pool: DiscountCodePool) -> str:
        if pool.remaining == 0:  # type: ignore[attr-defined]
            return format_html('<strong style="color:#ba2121">{}</strong>', "empty")
        if _low(pool):
            return format_html('<strong style="color:#ba2121">{}</strong>', "low")
        return "ok"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "GET":
            for pool in selectors.discount_pools_low():
                self.message_user(request, _low_message(pool), messages.WARNING)
        return super().changelist_view(request, extra_context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        pool = self.get_object(request, unquote(object_id))
        if pool is not None:
            extra_context = {
                **(extra_context or {}),
                "pool": pool,
                "low_stock": _low_message(pool) if _low(pool) else "",
                "upload_form": PoolUploadForm(),
                "can_upload": self.has_change_permission(request, pool),
                "upload_url": reverse(
                    f"admin:{self.opts.app_label}_{self.opts.model_name}_upload", args=[pool.pk]
                ),
                "codes_url": reverse(f"admin:{self.opts.app_label}_pooledcode_changelist")
                + f"?pool__id__exact={pool.pk}",
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list[URLPattern]:
        upload = path(
            "<path:object_id>/upload/",
            self.admin_site.admin_view(require_POST(self.upload_view)),
            name=f"{self.opts.app_label}_{self.opts.model_name}_upload",
        )
        return [upload, *super().get_urls()]  # before the catch-all "<object_id>/"

    def upload_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's upload form: the valid codes are added, each problem is named
        with its line; a file that cannot be read adds nothing."""
        pool = self.get_object(request, unquote(object_id))
        if pool is None or not self.has_change_permission(request, pool):
            raise PermissionDenied
        back = HttpResponseRedirect(
            reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[pool.pk])
        )
        form = PoolUploadForm(request.POST, request.FILES)
        if not form.is_valid():
            self.message_user(request, "Choose a file of codes to upload.", messages.ERROR)
            return back
        upload = form.cleaned_data["file"]
        try:
            report = pooled_codes_upload(pool=pool, data=upload.read())
        except PoolUploadRefused as exc:
            self.message_user(request, f"{upload.name}: nothing was added: {exc}.", messages.ERROR)
            return back
        level = messages.SUCCESS if report.added else messages.WARNING
        self.message_user(
            request,
            f"{upload.name}: added {report.added} code(s) to “{pool.name}” "
            f"({report.lines} line(s) read, {len(report.problems)} left out).",
            level,
        )
        for problem in report.problems[:PROBLEMS_SHOWN]:
            self.message_user(request, problem, messages.WARNING)
        if len(report.problems) > PROBLEMS_SHOWN:
            self.message_user(
                request,
                f"… and {len(report.problems) - PROBLEMS_SHOWN} more line(s) left out.",
                messages.WARNING,
            )
        return back


class TakenFilter(admin.SimpleListFilter):
    title = "handed out"
    parameter_name = "taken"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "handed out"), ("no", "still free")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(send__isnull=False)
        if self.value() == "no":
            return queryset.filter(send=None)
        return queryset


@admin.register(PooledCode)
class PooledCodeAdmin(LargeTableAdmin):
    """A pool's codes; they are added by upload only. A free code may be deleted; one handed
    out to a send is the record of what the send carried, and stays."""

    list_display = ["code", "pool", "send", "taken_at", "created_at"]
    list_filter = ["pool", TakenFilter]
    search_fields = ["code"]
    list_select_related = ["pool"]
    readonly_fields = ["pool", "code", "send", "taken_at", "created_at"]
    actions: list[Any] = []
    list_per_page = 100

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.send_id is not None:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        """No bulk delete: it would not tell free codes from handed-out ones."""
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


@admin.register(CodeRedemption)
class CodeRedemptionAdmin(LargeTableAdmin):
    """Every payment that carried a discount code, and what it came to: payment → code →
    send → journey."""

    list_display = ["at", "code", "outcome", "payment", "amount", "send", "journey", "detail"]
    list_filter = ["outcome", "at"]
    search_fields = ["code", "payment__external_id"]
    list_select_related = ["payment", "send__journey"]
    readonly_fields = ["payment", "code", "send", "outcome", "detail", "at", "created_at"]
    list_per_page = 100

    @admin.display(description="amount")
    def amount(self, redemption: CodeRedemption) -> str:
        return f"{redemption.payment.amount} {redemption.payment.currency}"

    @admin.display(description="journey")
    def journey(self, redemption: CodeRedemption) -> str:
        send = redemption.send
        return send.journey.slug if send is not None else ""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
