"""Customers, carts, payments and the event log for the marketer; every save calls a service."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import models
from django.http import HttpRequest
from django.utils.html import format_html

from marketing import selectors, services
from marketing.models import (
    E164,
    Cart,
    Channel,
    ConsentState,
    Customer,
    Event,
    Payment,
    Suppression,
)
from marketing.services.suppression import address_digest, suppression_search_digests
from nudge.admin import GuardedActionsAdmin, LargeTableAdmin


class CustomerForm(forms.ModelForm):
    """The customer page's form: consent is granted or revoked here on the customer's behalf
    (recorded as "admin:<username>"), never set back to unknown, and never granted over the
    customer's own opt-out (only their re-subscribe or START lifts it)."""

    class Meta:
        model = Customer
        fields = ["external_id", "email", "phone", "first_name", "timezone"]
        fields += ["email_consent", "sms_consent"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        customer = self.instance
        for channel, (state, _, _) in services.CONSENT_FIELDS.items():
            if state not in self.changed_data or state not in cleaned:
                continue
            wanted = cleaned[state]
            if wanted == ConsentState.UNKNOWN:
                self.add_error(state, "Consent cannot be set back to unknown: grant or revoke it.")
            elif wanted == ConsentState.GRANTED and customer.pk is not None:
                opted_out_at = services.OPT_OUT_FIELDS[channel][0]
                if getattr(customer, opted_out_at) is not None:
                    self.add_error(
                        state,
                        f"{customer} opted out of this channel themselves "
                        f"({services.opted_out_reason(customer, channel, channel)}): only "
                        "their own opt-in (the unsubscribe page, an SMS START) grants it again.",
                    )
        return cleaned


@admin.register(Customer)
class CustomerAdmin(LargeTableAdmin):
    form = CustomerForm
    list_display = [
        "external_id",
        "email",
        "phone",
        "first_name",
        "timezone",
        "email_consent",
        "sms_consent",
        "created_at",
    ]
    list_filter = ["email_consent", "sms_consent", "timezone", "created_at"]
    search_fields = ["external_id", "email", "phone", "first_name"]
    readonly_fields = [
        "email_consent_record",
        "email_opted_out_at",
        "email_opted_out_via",
        "sms_consent_record",
        "sms_opted_out_at",
        "sms_opted_out_via",
        "profile_as_of",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["external_id", "email", "phone", "first_name", "timezone"]}),
        (
            "Consent",
            {
                "description": (
                    "Granted or revoked per channel, with who or what said so and when. "
                    "A change here is recorded as yours (admin:<username>). Unknown: "
                    "NUDGE_CONSENT_DEFAULT decides for marketing journeys; transactional "
                    "journeys send."
                ),
                "fields": [
                    "email_consent",
                    "email_consent_record",
                    ("email_opted_out_at", "email_opted_out_via"),
                    "sms_consent",
                    "sms_consent_record",
                    ("sms_opted_out_at", "sms_opted_out_via"),
                ],
            },
        ),
        (None, {"fields": ["profile_as_of", "created_at", "updated_at"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # the shop's id is the key every event refers to: fixed once created
        return [*self.readonly_fields, "external_id"] if obj else self.readonly_fields

    @admin.display(description="email consent recorded")
    def email_consent_record(self, obj: Customer) -> str:
        return services.consent_text(obj, Channel.EMAIL)

    @admin.display(description="SMS consent recorded")
    def sms_consent_record(self, obj: Customer) -> str:
        return services.consent_text(obj, Channel.SMS)

    def save_model(self, request: HttpRequest, obj: Customer, form: Any, change: bool) -> None:
        saved = services.customer_upsert(
            external_id=obj.external_id,
            email=obj.email,
            phone=obj.phone,
            first_name=obj.first_name,
            timezone_name=obj.timezone,
        )
        source = f"admin:{request.user.get_username()}"
        for channel, (state, _, _) in services.CONSENT_FIELDS.items():
            wanted = getattr(obj, state)
            if state in form.changed_data and wanted != ConsentState.UNKNOWN:
                saved = services.customer_consent_set(
                    customer_id=saved.pk,
                    channel=channel,
                    granted=wanted == ConsentState.GRANTED,
                    source=source,
                )
        obj.pk = saved.pk


@admin.register(Cart)
class CartAdmin(LargeTableAdmin):
    list_display = ["external_id", "customer", "total", "currency", "created_at", "updated_at"]
    list_filter = ["currency", "created_at"]
    search_fields = ["external_id", "customer__external_id", "customer__email"]
    list_select_related = ["customer"]
    autocomplete_fields = ["customer"]
    readonly_fields = ["created_at", "updated_at"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*self.readonly_fields, "external_id", "customer"] if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Cart, form: Any, change: bool) -> None:
        saved = services.cart_upsert(
            customer=obj.customer,
            external_id=obj.external_id,
            total=obj.total,
            currency=obj.currency,
            checkout_url=obj.checkout_url,
            items=obj.items,
        )
        obj.pk = saved.pk


@admin.register(Payment)
class PaymentAdmin(LargeTableAdmin):
    list_display = [
        "external_id",
        "customer",
        "cart",
        "amount",
        "currency",
        "discount_code",
        "created_at",
    ]
    list_filter = ["currency", "created_at"]
    search_fields = ["external_id", "customer__external_id", "customer__email", "discount_code"]
    list_select_related = ["customer", "cart"]
    autocomplete_fields = ["customer", "cart"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # a payment is a record of money taken: it can be added, never rewritten
        if obj:
            return ["external_id", "customer", "cart", "amount", "currency", "discount_code"]
        return []

    def save_model(self, request: HttpRequest, obj: Payment, form: Any, change: bool) -> None:
        if change:
            return
        saved = services.payment_upsert(
            customer=obj.customer,
            external_id=obj.external_id,
            amount=obj.amount,
            currency=obj.currency,
            cart_external_id=obj.cart.external_id if obj.cart else None,
            discount_code=obj.discount_code,
        )
        obj.pk = saved.pk


# The event log's columns, also the first of its read-only fields.
EVENT_COLUMNS = (
    "event_id",
    "type",
    "source",
    "customer",
    "occurred_at",
    "received_at",
    "applied_at",
)


class EventTypeFilter(admin.SimpleListFilter):
    """By type, offering the types the log holds. Django's own filter for a field without
    choices runs `SELECT DISTINCT type` over every event on each page of the list."""

    title = "type"
    parameter_name = "type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(value, value) for value in selectors.event_types_received()]

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        return queryset.filter(type=self.value()) if self.value() else queryset


@admin.register(Event)
class EventAdmin(LargeTableAdmin):
    """The event log is evidence of what happened: read-only for everyone."""

    list_display = EVENT_COLUMNS
    list_filter = [
        "source",
        EventTypeFilter,
        ("applied_at", admin.EmptyFieldListFilter),
        "received_at",
    ]
    search_fields = ["event_id", "type", "customer__external_id", "customer__email"]
    list_select_related = ["customer"]
    readonly_fields = (
        *EVENT_COLUMNS,
        "apply_attempts",
        "apply_error",
        "body_sha256",
        "payload_pretty",
    )
    fields = readonly_fields

    @admin.display(description="payload")
    def payload_pretty(self, obj: Event) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, ensure_ascii=False))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SuppressionAddForm(forms.ModelForm):
    """An operator's suppression: the address is typed, and only its keyed hash is stored."""

    typed_address = forms.CharField(
        label="address",
        max_length=254,
        help_text="An email address, or a phone number in E.164 (+14155550101). Only its "
        "keyed hash is stored.",
    )

    class Meta:
        model = Suppression
        fields = ["channel", "detail"]
        labels = {"detail": "note"}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        address = (cleaned.get("typed_address") or "").strip()
        channel = cleaned.get("channel")
        if address and channel:
            try:
                (validate_email if channel == Channel.EMAIL else E164)(address)
            except ValidationError as exc:
                self.add_error("typed_address", exc)
            else:
                digest = address_digest(channel, address)
                reason = Suppression.Reason.MANUAL
                if Suppression.objects.filter(
                    channel=channel, address=digest, reason=reason
                ).exists():
                    self.add_error("typed_address", "This address is already suppressed here.")
        return cleaned


@admin.register(Suppression)
class SuppressionAdmin(GuardedActionsAdmin):
    """The suppression list (marketing.services.suppression): addresses no message goes to,
    whichever customer holds them, stored as keyed hashes. An operator adds one by typing it
    (reason "added by an operator"), finds one by typing it (the search hashes the query),
    and deletes a row to unsuppress: sends to that address go out again unless another row
    (another reason) still holds it."""

    list_display = ["hashed_address", "channel", "reason", "source", "detail", "created_at"]
    list_filter = ["channel", "reason", "created_at"]
    search_fields = ["address"]
    search_help_text = (
        "Type an email address, a phone number (E.164) or a customer's external id: it is "
        "hashed and the list searched for the hash."
    )
    readonly_fields = ["channel", "address", "reason", "source", "detail", "created_at"]

    @admin.display(description="address (keyed hash)", ordering="address")
    def hashed_address(self, obj: Suppression) -> str:
        return f"{obj.address[:24]}…"

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = SuppressionAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ["channel", "typed_address", "detail"]
        return self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def get_search_results(
        self, request: HttpRequest, queryset: models.QuerySet, search_term: str
    ) -> tuple[models.QuerySet, bool]:
        """The typed address's hashes, not a LIKE over hashes (which matches nothing)."""
        digests = suppression_search_digests(search_term)
        if not digests:
            return queryset, False
        return queryset.filter(address__in=digests), False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Suppression, form: Any, change: bool) -> None:
        saved = services.address_suppress(
            channel=form.cleaned_data["channel"],
            address=form.cleaned_data["typed_address"],
            reason=Suppression.Reason.MANUAL,
            source=f"admin:{request.user.get_username()}",
            detail=form.cleaned_data.get("detail") or "",
        )
        # the admin logs str(obj): the saved row's, with the hash, never the typed address
        for field in Suppression._meta.concrete_fields:
            setattr(obj, field.attname, getattr(saved, field.attname))
        obj._state.adding = False

    def delete_model(self, request: HttpRequest, obj: Suppression) -> None:
        services.suppressions_delete(suppressions=Suppression.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        services.suppressions_delete(suppressions=queryset)
