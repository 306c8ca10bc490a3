from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
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
    # Entry conditions on the trigger event and its customer (journeys.conditions); {}: always
    conditions = models.JSONField(
        default=dict,
        blank=True,
        help_text="Who may enter, as JSON; empty: everyone the trigger brings.",
    )
    # The holdout group (journeys.services.holdout): this share of enrolments, chosen by a
    # hash of the journey's slug and the customer, is never sent, as the baseline the
    # journey's conversion is compared with (journeys.services.attribution, journeys.stats).
    holdout_percent = models.DecimalField(
        "holdout %",
        max_digits=5,
        decimal_places=2,
        default=Decimal(0),
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(100))],
        help_text="Share of enrolled customers never sent anything (0 to 100, e.g. 10 or "
        "2.5): their conversion is the baseline of the journey's lift.",
    )
    conversion_window = models.DurationField(
        default=timedelta(days=5),
        help_text="A payment this long after a send (or after a held-out send's due time) "
        "counts as the journey's conversion (the last touch across journeys wins).",
    )
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        # a constraint, not unique=True: see marketing.models on the LIKE index
        constraints = [models.UniqueConstraint(fields=["slug"], name="journey_slug_unique")]

    def __str__(self) -> str:
        return self.name


class DiscountCodePool(models.Model):
    """Codes the shop made itself (its own checkout's codes), uploaded in the admin: a step
    with a pool hands each send one of them at dispatch instead of a generated code."""

    name = models.SlugField(
        max_length=64, db_index=False, help_text="Named in journeys-as-code (discount.pool)."
    )  # unique: Meta
    description = models.CharField(max_length=300, blank=True)
    low_stock_threshold = models.PositiveIntegerField(
        default=100,
        help_text="Warn in the admin when fewer codes than this are left to hand out.",
    )
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = "discount code pool"
        # a constraint, not unique=True: see marketing.models on the LIKE index
        constraints = [models.UniqueConstraint(fields=["name"], name="discount_pool_name_unique")]

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
    # The discount rule (journeys.codes): this many % off, or a fixed amount in a currency
    # (one of the two); the code comes from `discount_pool`, or is generated with the prefix.
    discount_percent = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="A unique discount code per send, this many % off."
    )
    discount_amount = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Or: a unique discount code per send worth this fixed amount off.",
    )
    discount_currency = models.CharField(
        max_length=3, blank=True, help_text="With a fixed amount: its ISO 4217 currency (EUR)."
    )
    discount_valid_for = models.DurationField(
        null=True, blank=True, help_text="How long the code is valid after it is sent."
    )
    # Checked at dispatch (journeys.conditions): false skips the send ("condition: ...").
    condition = models.JSONField(
        null=True,
        blank=True,
        help_text="Send only if this holds (JSON), e.g. an earlier step not opened; empty: always.",
    )
    discount_prefix = models.CharField(
        max_length=22,
        blank=True,
        help_text="Generated codes start with this (letters, digits and '-', e.g. WINBACK-).",
    )
    discount_pool = models.ForeignKey(
        DiscountCodePool,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="steps",
        help_text="Hand out the pool's uploaded codes instead of generating them.",
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
    # the code's value, copied from the step at enrolment: a later edit of the step does not
    # change what an issued code is worth
    discount_percent = models.PositiveSmallIntegerField(null=True, blank=True)
    discount_amount = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    discount_currency = models.CharField(max_length=3, blank=True, db_default="")
    # the pool the code is taken from at dispatch (the code is NULL until then)
    discount_pool = models.ForeignKey(
        DiscountCodePool,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,  # few sends have one; the pool's codes point at their sends instead
    )
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
    # The first open and click the ESP's tracking reported (services.feedback): step
    # conditions read them; the delivery status is left as it is.
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
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


class PooledCode(models.Model):
    """One uploaded code of a pool; `send` is set when dispatch hands it to a send (under
    the send's row lock), and never again: a code goes to one send only."""

    pool = models.ForeignKey(DiscountCodePool, on_delete=models.CASCADE, related_name="codes")
    # the width of ScheduledSend.discount_code, where the send keeps it
    code = models.CharField(max_length=32)  # unique: Meta
    send = models.OneToOneField(
        "ScheduledSend",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="pooled_code",
    )
    taken_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["pool", "id"]
        constraints = [models.UniqueConstraint(fields=["code"], name="pooled_code_unique")]
        indexes = [
            # dispatch takes a pool's free codes in id order
            models.Index(fields=["pool", "id"], condition=Q(send=None), name="pooled_code_free"),
        ]

    def __str__(self) -> str:
        return self.code


class CodeRedemption(models.Model):
    """One payment that carried a discount code, and what it meant (journeys.services.codes):
    the first redemption of a sent code, a second one (flagged, not counted), or a code that
    was expired, void (its send never went out) or unknown."""

    class Outcome(models.TextChoices):
        REDEEMED = "redeemed", "redeemed"
        DUPLICATE = "duplicate", "duplicate: redeemed before by another payment"
        EXPIRED = "expired", "expired"
        VOID = "void", "void: its send was not sent"
        UNKNOWN = "unknown", "unknown code"

    # a payment is recorded once (the first time its id is seen), and so is its redemption
    payment = models.OneToOneField(Payment, on_delete=models.CASCADE, related_name="redemption")
    code = models.CharField(max_length=64)
    send = models.ForeignKey(
        ScheduledSend, on_delete=models.PROTECT, null=True, blank=True, related_name="redemptions"
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    detail = models.CharField(max_length=300, blank=True)
    # when the payment happened (its event's occurred_at): what expiry is judged against
    at = models.DateTimeField()
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["-at"]
        permissions = [("check_discount_code", "Can check discount codes (GET /api/codes/)")]

    def __str__(self) -> str:
        return f"{self.code}: {self.outcome}"


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


class Conversion(models.Model):
    """A payment credited to one send, so to its journey (journeys.services.attribution): by
    its discount code (`code`), or as the last touch within the journey's conversion window
    (`window`). `held_out`: the send was a held-out one (its due time stands for the moment
    it would have gone out): a conversion of the holdout group, the baseline.

    One per payment at most; derived from the payment, the sends and the journeys when the
    payment_finished event is applied, and never changed afterwards.
    """

    class Kind(models.TextChoices):
        CODE = "code", "discount code redeemed"
        WINDOW = "window", "payment within the conversion window"

    payment = models.OneToOneField(Payment, on_delete=models.CASCADE, related_name="conversion")
    journey = models.ForeignKey(Journey, on_delete=models.PROTECT, related_name="conversions")
    send = models.ForeignKey(
        ScheduledSend, on_delete=models.PROTECT, related_name="conversions", db_index=False
    )
    # indexed: an enrolment's first conversion is found by it (the "converted" count)
    enrollment = models.ForeignKey(Enrollment, on_delete=models.PROTECT, related_name="conversions")
    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="conversions", db_index=False
    )
    kind = models.CharField(max_length=8, choices=Kind.choices)
    held_out = models.BooleanField(default=False)
    # the enrolment's first conversion: it counts the enrolment as converted, on the day the
    # enrolment was made (enrolled_at, its created_at), beside the enrolments of that day
    first_for_enrollment = models.BooleanField(default=True)
    enrolled_at = models.DateTimeField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    # when the payment happened (its event's occurred_at)
    converted_at = models.DateTimeField()
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["-converted_at"]

    def __str__(self) -> str:
        return f"{self.payment} -> {self.journey.slug} ({self.kind})"


class JourneyDayStat(models.Model):
    """The figures of one journey and UTC day (journeys.stats): `count` (and `amount`, for
    revenue) of one metric and label, e.g. ("skipped", "held out"), ("revenue", "EUR").
    Folded from JourneyStatDelta by the rollup job; read by the stats API."""

    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, db_index=False)
    day = models.DateField()
    metric = models.CharField(max_length=32)
    label = models.CharField(max_length=100, blank=True)
    count = models.BigIntegerField(default=0)
    amount = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal(0))

    class Meta:
        ordering = ["journey", "day", "metric", "label"]
        constraints = [
            models.UniqueConstraint(
                fields=["journey", "day", "metric", "label"], name="journey_day_stat_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.journey_id} {self.day} {self.metric}/{self.label}: {self.count}"


class JourneyStatDelta(models.Model):
    """A change to JourneyDayStat not folded in yet: written in the same transaction as the
    change itself (by PostgreSQL triggers on sends and enrolments, by the attribution for
    conversions; journeys.stats), folded and deleted by the rollup job. Append-only: writers
    never wait for each other on it."""

    journey_id = models.BigIntegerField()
    day = models.DateField()
    metric = models.CharField(max_length=32)
    label = models.CharField(max_length=100, blank=True)
    count = models.BigIntegerField(default=0)
    amount = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal(0))

    class Meta:
        indexes = [models.Index(fields=["journey_id", "day"], name="journey_stat_delta_day")]

    def __str__(self) -> str:
        return f"{self.journey_id} {self.day} {self.metric}/{self.label}: {self.count:+d}"
