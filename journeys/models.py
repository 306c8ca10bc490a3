from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from journeys.querysets import ScheduledSendManager
from marketing.models import Cart, Channel, Customer, Event, Payment


class Journey(models.Model):
    """A marketer's rule: on `trigger`, schedule the steps; `exit_on` events cancel them."""

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
            # feedback finds its send by the provider's message id
            models.Index(
                fields=["provider_message_id"],
                condition=~Q(provider_message_id=""),
                name="send_provider_message_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.journey.slug}#{self.step_position} to {self.customer} ({self.status})"


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
