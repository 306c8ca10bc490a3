from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.utils.timezone import now

E164 = RegexValidator(r"^\+[1-9]\d{6,14}$", "Phone numbers are in E.164 format, e.g. +14155550101.")


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"


class EventType(models.TextChoices):
    """The event types Nudge knows; any other type is stored too and triggers what uses it."""

    USER_REGISTERED = "user_registered", "User registered"
    CHECKOUT_STARTED = "checkout_started", "Checkout started"
    PAYMENT_FINISHED = "payment_finished", "Payment finished"


class ConsentState(models.TextChoices):
    """A customer's consent to marketing on one channel (Customer.<channel>_consent). Unknown
    means nobody said: NUDGE_CONSENT_DEFAULT decides what that means for marketing journeys
    (journeys.services.consent); a transactional journey sends; revoked stops every journey."""

    UNKNOWN = "unknown", "unknown"
    GRANTED = "granted", "granted"
    REVOKED = "revoked", "revoked"


class OptOutSource(models.TextChoices):
    """How a customer opted out themselves (the reason a skipped send gives)."""

    UNSUBSCRIBE_LINK = "unsubscribe_link", "unsubscribe link"
    ESP_UNSUBSCRIBE = "esp_unsubscribe", "unsubscribe at the email provider"
    SMS_REPLY = "sms_reply", "SMS reply"


# Unique keys are constraints in Meta, not unique=True: on PostgreSQL unique=True on a
# CharField adds a second, varchar_pattern_ops index for LIKE 'prefix%', which no query here
# uses (the admin's search is icontains) and every insert paid for.


class Customer(models.Model):
    external_id = models.CharField(max_length=255)
    email = models.EmailField(max_length=254, blank=True)
    phone = models.CharField(max_length=16, blank=True, validators=[E164])
    first_name = models.CharField(max_length=150, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    # Consent per channel: its state, who or what said so ("event:<event id>", "admin:<user>",
    # "unsubscribe_link", "sms_reply", "import", "demo", "migration"...) and when (an event's
    # occurred_at, else the moment it was recorded). An event older than `<channel>_consent_at`
    # does not change it (marketing.services.consent.consent_decide; services.profiles holds
    # the same rule in SQL). db_default: the events' raw INSERTs name only what they set.
    email_consent = models.CharField(
        "email consent",
        max_length=8,
        choices=ConsentState.choices,
        default=ConsentState.UNKNOWN,
        db_default=ConsentState.UNKNOWN,
    )
    email_consent_source = models.CharField(
        "email consent source",
        max_length=300,
        blank=True,
        default="",
        db_default="",
        editable=False,
    )
    email_consent_at = models.DateTimeField(
        "email consent recorded at", null=True, blank=True, editable=False
    )
    sms_consent = models.CharField(
        "SMS consent",
        max_length=8,
        choices=ConsentState.choices,
        default=ConsentState.UNKNOWN,
        db_default=ConsentState.UNKNOWN,
    )
    sms_consent_source = models.CharField(
        "SMS consent source",
        max_length=300,
        blank=True,
        default="",
        db_default="",
        editable=False,
    )
    sms_consent_at = models.DateTimeField(
        "SMS consent recorded at", null=True, blank=True, editable=False
    )
    # Set by the customer's own opt-out (marketing.services.consent: it also revokes the
    # consent, with the opt-out as its source), cleared when they opt in again the same way:
    # while set, an event's consent.email=true does not opt them back in.
    email_opted_out_at = models.DateTimeField(null=True, blank=True, editable=False)
    # db_default: the events' raw INSERTs (services.profiles) name only the profile's columns
    email_opted_out_via = models.CharField(
        max_length=32, choices=OptOutSource.choices, blank=True, db_default="", editable=False
    )
    # The same for SMS: a STOP reply (marketing.services.consent.customer_sms_opt_out)
    sms_opted_out_at = models.DateTimeField(null=True, blank=True, editable=False)
    sms_opted_out_via = models.CharField(
        max_length=32, choices=OptOutSource.choices, blank=True, db_default="", editable=False
    )
    # occurred_at of the event that last set the profile: an older event arriving late
    # does not overwrite newer data.
    profile_as_of = models.DateTimeField(null=True, blank=True, editable=False)
    # Set by the erasure of the customer's personal data (journeys.services.erasure): the row
    # stays, emptied and renamed "erased:<id>", for the counts of its events and sends.
    erased_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["external_id"], name="customer_external_id_unique")
        ]
        indexes = [models.Index(fields=["email"])]
        permissions = [("erase_customer", "Can erase a customer's personal data")]

    def __str__(self) -> str:
        return self.external_id

    def consent(self, channel: str) -> str:
        """The ConsentState of the customer's consent on `channel`."""
        return self.email_consent if channel == Channel.EMAIL else self.sms_consent


class Cart(models.Model):
    external_id = models.CharField(max_length=255)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="carts")
    total = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    currency = models.CharField(max_length=3, default="EUR")
    checkout_url = models.URLField(max_length=2000, blank=True)
    items = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["external_id"], name="cart_external_id_unique")
        ]

    def __str__(self) -> str:
        return self.external_id


class Payment(models.Model):
    external_id = models.CharField(max_length=255)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="payments")
    cart = models.ForeignKey(
        Cart, on_delete=models.SET_NULL, null=True, blank=True, related_name="payments"
    )
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    discount_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["external_id"], name="payment_external_id_unique")
        ]

    def __str__(self) -> str:
        return self.external_id


class Event(models.Model):
    """Every accepted event, stored once: the record journeys decide from."""

    class Source(models.TextChoices):
        WEBHOOK = "webhook", "Webhook"
        HOST = "host", "Host application"

    source = models.CharField(max_length=16, choices=Source.choices)
    event_id = models.CharField(max_length=255)
    type = models.CharField(max_length=64)
    # indexed by event_customer_type_time, which leads with it
    customer = models.ForeignKey(
        Customer,
        on_delete=models.CASCADE,
        related_name="events",
        null=True,
        blank=True,
        db_index=False,
    )
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(default=now)
    payload = models.JSONField()
    body_sha256 = models.CharField(max_length=64)
    # What an event means for journeys (enrolments) is applied after it is stored, by journeys'
    # task on the messaging workers (through services.applying); until then applied_at is null.
    # apply_claimed_at is the lease of the worker applying it; apply_attempts and apply_error
    # count and explain failed applications.
    applied_at = models.DateTimeField(null=True, blank=True)
    apply_claimed_at = models.DateTimeField(null=True, blank=True, editable=False)
    apply_attempts = models.PositiveSmallIntegerField(default=0, editable=False)
    apply_error = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(fields=["source", "event_id"], name="event_unique_per_source"),
        ]
        indexes = [
            models.Index(fields=["type"], name="event_type"),
            models.Index(
                fields=["customer", "type", "occurred_at"], name="event_customer_type_time"
            ),
            # the events still to apply, in arrival order: small, whatever the log's size
            models.Index(
                fields=["id"], condition=models.Q(applied_at__isnull=True), name="event_unapplied"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class Suppression(models.Model):
    """An address no message goes to on that channel, whichever customer holds it
    (marketing.services.suppression): a provider's hard bounce, a spam complaint, an
    unsubscribe, a STOP reply, an erasure, or an operator's entry in the admin. Dispatch skips
    every send to it ("suppressed: <reason>").

    The address is never stored: `address` is a keyed hash ("hmac-sha256:<hex>") of the
    normalised email or phone number (or, for an erasure, also of the external id), made by
    marketing.services.suppression.identifier_digest under NUDGE_ERASURE_PEPPER. One row per
    reason: a re-subscribe removes an unsubscribe's row, a START a STOP's, and neither touches
    a bounce's, a complaint's or an erasure's."""

    class Reason(models.TextChoices):
        BOUNCED = "bounced", "hard bounce"
        COMPLAINED = "complained", "spam complaint"
        ERASED = "erased", "erased customer"
        UNSUBSCRIBED = "unsubscribed", "unsubscribed"
        STOPPED = "stopped", "SMS STOP"
        MANUAL = "manual", "added by an operator"

    channel = models.CharField(max_length=8, choices=Channel.choices)
    # "hmac-sha256:<hex>" of "email:<lower-cased email>", "phone:<E.164>" or "id:<external id>"
    address = models.CharField(max_length=254)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    # who or what suppressed it: "admin:<user>", "unsubscribe_link", "sms_reply", a provider...
    source = models.CharField(max_length=300, blank=True, default="", db_default="")
    # the provider's words (with the address itself cut out), or the operator's note
    detail = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "address", "reason"], name="suppression_unique_reason"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} {self.address[:24]}… ({self.get_reason_display()})"
