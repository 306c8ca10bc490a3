"""Customers, carts, payments and the event log for the marketer; every save calls a service."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db import models
from django.http import HttpRequest
from django.utils.html import format_html

from marketing import selectors, services
from marketing.models import Cart, Customer, Event, Payment, Suppression
from nudge.admin import GuardedActionsAdmin, LargeTableAdmin


@admin.register(Customer)
class CustomerAdmin(LargeTableAdmin):
    list_display = [
        "external_id",
        "email",
        "phone",
        "first_name",
        "timezone",
        "consent_email",
        "consent_sms",
        "created_at",
    ]
    list_filter = ["consent_email", "consent_sms", "timezone", "created_at"]
    search_fields = ["external_id", "email", "phone", "first_name"]
    readonly_fields = ["profile_as_of", "created_at", "updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # the shop's id is the key every event refers to: fixed once created
        return [*self.readonly_fields, "external_id"] if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Customer, form: Any, change: bool) -> None:
        saved = services.customer_upsert(
            external_id=obj.external_id,
            email=obj.email,
            phone=obj.phone,
            first_name=obj.first_name,
            timezone_name=obj.timezone,
            consent_email=obj.consent_email,
            consent_sms=obj.consent_sms,
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


@admin.register(Suppression)
class SuppressionAdmin(GuardedActionsAdmin):
    """Addresses suppressed by a hard bounce or a complaint (marketing.services.suppression).
    Read-only here: an operator who deletes one lets sends to that address go out again."""

    list_display = ["address", "channel", "reason", "detail", "created_at"]
    list_filter = ["channel", "reason", "created_at"]
    search_fields = ["address"]
    readonly_fields = ["channel", "address", "reason", "detail", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
