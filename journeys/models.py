from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from journeys.querysets import ScheduledSendManager
from marketing.models import Cart, Channel, Customer, Event, Payment


class SendWindowMode(models.TextChoices):
    SITE = "site", "the site's default (NUDGE_SEND_WINDOW)"
    CUSTOM = "custom", "own hours (below)"
    ALWAYS = "always", "any time (no quiet hours)"


class Journey(models.Model):
    """A marketer's rule: on `trigger`, schedule the steps; `exit_on` events cancel them."""

    SendWindow = SendWindowMode

    class Dedupe(models.TextChoices):
        FIRST = "first", "first: ignore later triggers while one is pending"
        LATEST = "latest", "latest: a later trigger replaces the pending send"
        EVERY = "every", "every: each trigger schedules its own sends"

    class Reentry(models.TextChoices):
        ONCE = "once", "once ever"
        PERIOD = "period", "once per period"
        EVERY = "every", "every time"

    class ExitScope(models.TextChoices):
        CUSTOMER = "customer", "any exit event of the customer"
        CART = "cart", "only an exit event about the same cart"

    slug = models.SlugField(max_length=100, db_index=False)  # unique: Meta
    name = models.CharField(max_length=200)
    trigger = models.CharField(max_length=64, help_text="Event type that enrols a customer.")
    exit_on = models.JSONField(
        default=list, blank=True, help_text="Event types that cancel what is still pending."
    )
    exit_scope = models.CharField(
        max_length=16, choices=ExitScope.choices, default=ExitScope.CUSTOMER
    )
    dedupe = models.CharField(max_length=16, choices=Dedupe.choices, default=Dedupe.FIRST)
    max_wait = models.DurationField(
        null=True,
        blank=True,
        help_text="With 'latest': later triggers postpone the sends by at most this much "
        "past the first trigger.",
    )
    reentry = models.CharField(max_length=16, choices=Reentry.choices, default=Reentry.ONCE)
    reentry_period = models.DurationField(
        null=True, blank=True, help_text="With 'once per period': the period."
    )
    max_lateness = models.DurationField(
        default=timedelta(hours=2),
        help_text="A send later than this after its due time is dropped instead of sent.",
    )
    active = models.BooleanField(default=True)
    # A transactional journey (a receipt, a password reset) is not marketing: frequency caps,
    # quiet hours and the marketing consent default do not apply to it.
    transactional = models.BooleanField(
        default=False,
        help_text="Not marketing (a receipt, an account message): caps, quiet hours and the "
        "marketing consent default do not apply.",
    )
    # Pacing (journeys.services.pacing): which journey's send takes a slot a frequency cap
    # leaves when several compete, and the hours of the customer's day it may send in.
    priority = models.IntegerField(
        default=0,
        db_default=0,
        help_text="When sends of several journeys compete for what a frequency cap allows, "
        "the higher priority goes first (default 0; negative numbers are allowed).",
    )
    send_window = models.CharField(
        max_length=8,
        choices=SendWindowMode.choices,
        default=SendWindowMode.SITE,
        db_default=SendWindowMode.SITE,
        help_text="Quiet hours: the hours of the customer's local day when this journey may "
        "send (the customer's time zone; an unknown one is UTC).",
    )
    send_window_start = models.TimeField(
        null=True, blank=True, help_text="With 'own hours': from this local time …"
    )
    send_window_end = models.TimeField(
        null=True,
        blank=True,
        help_text="… to this one (excluded). An end before the start crosses midnight "
        "(20:00 to 08:00).",
    )
    send_weekdays_only = models.BooleanField(
        default=False, db_default=False, help_text="With 'own hours': Monday to Friday only."
    )
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        # a constraint, not unique=True: see marketing.models on the LIKE index
        constraints = [models.UniqueConstraint(fields=["slug"], name="journey_slug_unique")]

    def __str__(self) -> str:
        return self.name


class JourneyStep(models.Model):
    # indexed by step_unique_position, which leads with it
    journey = models.ForeignKey(
        Journey, on_delete=models.CASCADE, related_name="steps", db_index=False
    )
    position = models.PositiveSmallIntegerField(default=0)
    delay = models.DurationField(help_text="After the trigger event occurred.")
    channel = models.CharField(max_length=8, choices=Channel.choices)
    subject = models.CharField(
        max_length=300, blank=True, help_text="Email subject (Django template); empty for SMS."
    )
    body = models.TextField(
        help_text="Django template; context: customer, cart, discount, journey."
    )
    discount_percent = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="A unique discount code per send, this many % off."
    )
    discount_valid_for = models.DurationField(
        null=True, blank=True, help_text="How long the code is valid after it is sent."
    )
    # part of the journeys' cache version (selectors.journeys_all): an edited step is seen
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["journey", "position"]
        constraints = [
            models.UniqueConstraint(fields=["journey", "position"], name="step_unique_position"),
        ]

    def __str__(self) -> str:
        return f"{self.journey.slug} step {self.position}"


class Enrollment(models.Model):
    """A customer entering a journey because of one trigger event (re-entry is counted here).

    Kept as long as the journey and the customer are: both are PROTECTed, like the sends.
    """

    # indexed by enrollment_lookup, which leads with it
    journey = models.ForeignKey(
        Journey, on_delete=models.PROTECT, related_name="enrollments", db_index=False
    )
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="enrollments")
    cart = models.ForeignKey(Cart, on_delete=models.SET_NULL, null=True, blank=True)
    trigger_event = models.ForeignKey(Event, on_delete=models.SET_NULL, null=True, blank=True)
    trigger_occurred_at = models.DateTimeField()
    # With dedupe 'latest', when the chain of superseding triggers began (caps the wait).
    chain_started_at = models.DateTimeField()
    # In the journey's holdout group: its sends are never sent (skipped, reason "held out"),
    # and its customers' payments are the baseline the journey's conversion is compared with.
    held_out = models.BooleanField(default=False, db_default=False)
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["journey", "customer", "trigger_occurred_at"], name="enrollment_lookup"
            )
        ]

    def __str__(self) -> str:
        return f"{self.customer} in {self.journey.slug}"


class ScheduledSend(models.Model):
    """The promise of one message: the source of truth, whatever the queue does.

    pending -> sending (claimed by the ticker, handed to a worker) -> sent; or cancelled /
    skipped / failed with a human-readable reason.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        SENDING = "sending", "sending"
        SENT = "sent", "sent"
        CANCELLED = "cancelled", "cancelled"
        SKIPPED = "skipped", "skipped"
        FAILED = "failed", "failed"

    class DeliveryStatus(models.TextChoices):
        """What the provider said happened after it took the message (services.feedback)."""

        DELIVERED = "delivered", "delivered"
        BOUNCED = "bounced", "bounced"
        COMPLAINED = "complained", "complained"
        UNSUBSCRIBED = "unsubscribed", "unsubscribed"
        UNDELIVERED = "undelivered", "undelivered"
        FAILED = "failed", "failed"

    ACTIVE = (Status.PENDING, Status.SENDING)

    # PROTECT towards the journey, its enrolment and the customer: deleting any of them must
    # not erase the record of what was promised or sent (deactivate a journey instead). A
    # step may go: journeys-as-code and the admin cancel its sends first, and the send keeps
    # step_position and its rendered message.
    enrollment = models.ForeignKey(Enrollment, on_delete=models.PROTECT, related_name="sends")
    # indexed by send_journey_status, which leads with it
    journey = models.ForeignKey(
        Journey, on_delete=models.PROTECT, related_name="sends", db_index=False
    )
    step = models.ForeignKey(JourneyStep, on_delete=models.SET_NULL, null=True, blank=True)
    step_position = models.PositiveSmallIntegerField()
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="sends")
    cart = models.ForeignKey(Cart, on_delete=models.SET_NULL, null=True, blank=True)
    channel = models.CharField(max_length=8, choices=Channel.choices)
    trigger_occurred_at = models.DateTimeField()
    due_at = models.DateTimeField()
    # When the send was meant to go out, once pacing (a frequency cap, quiet hours) moved
    # its due_at; NULL: due_at is. Max lateness is measured from it (see `intended`). NULL,
    # not a db_default: the raw INSERTs (bench, enrolment) and every row before it mean due_at.
    intended_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When it was meant to go out, if pacing (a frequency cap, quiet hours) "
        "moved it; its max lateness counts from here.",
    )
    # One active send per (step, dedupe_key): the database refuses a second pending promise.
    dedupe_key = models.CharField(max_length=300)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reason = models.CharField(max_length=500, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # NULL, not "": most sends have no code, and the unique constraint (Meta) allows many NULLs
    discount_code = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001
    discount_percent = models.PositiveSmallIntegerField(null=True, blank=True)
    discount_expires_at = models.DateTimeField(null=True, blank=True)
    # The code's redemption: the first payment_finished that carried it (later ones are
    # flagged, not counted again).
    discount_redeemed_at = models.DateTimeField(null=True, blank=True)
    discount_payment = models.ForeignKey(
        Payment,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="redeemed_sends",
        # no index: every send would pay for it, and payments are never deleted while
        # their customer's sends exist (sends PROTECT the customer)
        db_index=False,
    )
    recipient = models.CharField(max_length=254, blank=True)
    subject = models.CharField(max_length=300, blank=True)
    body = models.TextField(blank=True)
    # SMS only: how many segments the rendered body takes (GSM-7 or UCS-2), what the provider bills
    segments = models.PositiveSmallIntegerField(null=True, blank=True)
    provider_message_id = models.CharField(max_length=200, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # The delivery record: which provider took (or refused) it, the last provider error, and
    # one entry per provider call ({"at": ISO time, "ms": duration, "outcome": text}).
    # db_default on these: the enrolments' and the bench's raw INSERTs name only their columns
    provider = models.CharField(max_length=32, blank=True, db_default="")
    last_error = models.CharField(max_length=500, blank=True, db_default="")
    attempt_log = models.JSONField(default=list, blank=True, db_default=[])
    # Set while a provider call is under way, cleared with its outcome: a send handed out
    # again with it set may have been accepted already (an ambiguous retry, counted here).
    call_started_at = models.DateTimeField(null=True, blank=True)
    ambiguous_retries = models.PositiveSmallIntegerField(default=0, db_default=0)
    # The provider's feedback after the call (services.feedback): ESP tracking webhooks,
    # Twilio status callbacks; when it last changed (the provider's time) and its detail.
    delivery_status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, blank=True, db_default=""
    )
    delivery_updated_at = models.DateTimeField(null=True, blank=True)
    delivery_detail = models.CharField(max_length=300, blank=True, db_default="")
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ScheduledSendManager()

    class Meta:
        ordering = ["-due_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["step_position", "journey", "dedupe_key"],
                condition=Q(status__in=["pending", "sending"]),
                name="send_one_active_per_dedupe_key",
            ),
            # a constraint, not unique=True: see marketing.models on the LIKE index
            models.UniqueConstraint(fields=["discount_code"], name="send_discount_code_unique"),
        ]
        indexes = [
            # the timer: due pending rows, in due order
            models.Index(fields=["due_at"], condition=Q(status="pending"), name="send_pending_due"),
            # cancellation on an exit event: a customer's active sends
            models.Index(
                fields=["customer"],
                condition=Q(status__in=["pending", "sending"]),
                name="send_active_customer",
            ),
            # recovery of sends whose worker never finished
            models.Index(
                fields=["claimed_at"], condition=Q(status="sending"), name="send_in_flight"
            ),
            models.Index(fields=["journey", "status"], name="send_journey_status"),
            # frequency caps (services.pacing): a customer's sends sent on a channel lately.
            # Partial: a row enters it once, when it is sent (its status changes anyway, so
            # that update is no HOT update already); later feedback updates change none of
            # these columns and stay HOT.
            models.Index(
                fields=["customer", "channel", "sent_at"],
                condition=Q(status="sent"),
                name="send_sent_customer_channel",
            ),
            # feedback finds its send by the provider's message id
            models.Index(
                fields=["provider_message_id"],
                condition=~Q(provider_message_id=""),
                name="send_provider_message_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.journey.slug}#{self.step_position} to {self.customer} ({self.status})"

    @property
    def intended(self) -> datetime:
        """When the send was meant to go out, before pacing moved it: its max lateness counts
        from here."""
        return self.intended_at or self.due_at


class FrequencyCap(models.Model):
    """At most `max_sends` messages on `channel` per `period` to one customer, across every
    journey that is not transactional (services.pacing). Several caps may hold for a channel
    (1 SMS per 24 h and 3 per 7 days): each must allow a send."""

    channel = models.CharField(max_length=8, choices=Channel.choices)
    max_sends = models.PositiveIntegerField(help_text="At most this many messages …")
    period = models.DurationField(help_text="… in any period this long (e.g. 1 day, 7 days).")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["channel", "period"]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "period"],
                name="cap_one_per_period",
                violation_error_message="This channel has a cap for this period already: "
                "edit that one.",
            ),
            models.CheckConstraint(
                condition=Q(max_sends__gte=1),
                name="cap_max_sends_positive",
                violation_error_message="A cap allows at least 1 message (deactivate it to "
                "lift it).",
            ),
            models.CheckConstraint(
                condition=Q(period__gt=timedelta(0)),
                name="cap_period_positive",
                violation_error_message="A cap's period must be longer than zero.",
            ),
        ]

    def __str__(self) -> str:
        return cap_label(self.channel, self.max_sends, self.period)


def cap_label(channel: str, max_sends: int, period: timedelta) -> str:
    """'1 SMS per 24 h', '3 emails per 7 days': how reasons and the admin name a cap."""
    noun = "SMS" if channel == Channel.SMS else "email" if max_sends == 1 else "emails"
    seconds = int(period.total_seconds())
    if seconds % 86400 == 0 and seconds >= 2 * 86400:
        span = f"{seconds // 86400} days"
    elif seconds % 3600 == 0:
        span = f"{seconds // 3600} h"
    elif seconds % 60 == 0:
        span = f"{seconds // 60} min"
    else:
        span = f"{seconds} s"
    return f"{max_sends} {noun} per {span}"


class ProviderState(models.Model):
    """One row per provider (a channel backend's `provider` name): what every dispatching
    worker on every machine shares about it (services.providers).

    - `next_at`: the rate limit's next free slot (GCRA: each call takes 1/rate seconds).
    - The circuit breaker: `failures` in a row; `open_until` set while the provider is left
      alone (its sends wait, costing no attempt), since `opened_at`; `opens` in a row, which
      doubles the time it stays open.
    """

    name = models.CharField(max_length=32)
    next_at = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveIntegerField(default=0)
    open_until = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    opens = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "provider"
        # a constraint, not unique=True or a CharField primary key: see marketing.models on
        # the LIKE index
        constraints = [models.UniqueConstraint(fields=["name"], name="provider_state_name_unique")]

    def __str__(self) -> str:
        return self.name
