from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from media_tasks import services
from media_tasks.models import ImageVariant, UploadedImage
from media_tasks.validation import InvalidImage, inspect_upload
from nudge.admin import GuardedActionsAdmin


class UploadedImageAddForm(forms.ModelForm):
    """Upload form: the same validation as the API, shown as a field error."""

    class Meta:
        model = UploadedImage
        fields = ["original"]

    def clean_original(self) -> Any:
        file = self.cleaned_data["original"]
        try:
            inspect_upload(
                file,
                size=file.size or 0,
                max_bytes=settings.NUDGE_MEDIA_MAX_UPLOAD_BYTES,
                max_pixels=settings.NUDGE_MEDIA_MAX_PIXELS,
            )
        except InvalidImage as exc:
            raise forms.ValidationError(str(exc)) from exc
        return file


class ImageVariantInline(admin.TabularInline):
    model = ImageVariant
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "name",
        "format",
        "width",
        "height",
        "size",
        "saving_percent",
        "link",
        "reason",
    )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="saving")
    def saving_percent(self, variant: ImageVariant) -> str:
        return f"{variant.saving:.1%}"

    @admin.display(description="file")
    def link(self, variant: ImageVariant) -> str:
        return format_html('<a href="{}">{}</a>', variant.file.url, variant.file.name)


@admin.register(UploadedImage)
class UploadedImageAdmin(GuardedActionsAdmin):
    list_display = [
        "id",
        "original_name",
        "status",
        "original_width",
        "original_height",
        "original_size",
        "created_at",
    ]
    list_filter = ["status", "original_format"]
    search_fields = ["original_name"]
    actions = ["compress_again"]
    inlines = [ImageVariantInline]
    readonly_fields = [
        "original",
        "original_name",
        "original_format",
        "original_width",
        "original_height",
        "original_size",
        "status",
        "error",
        "attempts",
        "claimed_at",
        "uploaded_by",
        "created_at",
        "processed_at",
    ]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        if obj is None:
            kwargs["form"] = UploadedImageAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else ["original"]

    def get_inlines(self, request: HttpRequest, obj: Any) -> list[Any]:
        return self.inlines if obj is not None else []

    def save_model(self, request: HttpRequest, obj: UploadedImage, form: Any, change: bool) -> None:
        if change:
            return  # nothing on an uploaded image is edited by hand
        created = services.image_upload(
            file=form.cleaned_data["original"], uploaded_by=request.user
        )
        obj.pk = created.pk
        obj.__dict__.update({k: v for k, v in created.__dict__.items() if not k.startswith("_")})
        obj._state.adding = False

    @admin.action(description="Compress selected images again", permissions=["change"])
    def compress_again(self, request: HttpRequest, queryset: QuerySet[UploadedImage]) -> None:
        queued = sum(
            services.image_requeue(image_id=pk) for pk in queryset.values_list("pk", flat=True)
        )
        skipped = queryset.count() - queued
        self.message_user(request, f"{queued} image(s) queued for compression.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"{skipped} image(s) are being processed now; not queued.",
                messages.WARNING,
            )
