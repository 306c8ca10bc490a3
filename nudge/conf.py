"""Every setting Nudge's apps read, with its default, so that a host project sets only what
it changes. `defaults_apply()` (called by each app's AppConfig module, before any model or
service is imported) gives `django.conf.settings` each default the host left out, as
django-appconf does; the apps then read plain `settings.NUDGE_*`.

The standalone site (`config/settings.py`) reads the same names from the environment, with
these values as its defaults.
"""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # --- webhooks
    # Standard Webhooks secrets (whsec_<base64>); several may be active during a rotation.
    # None means every signed request is refused with 401.
    "NUDGE_WEBHOOK_SECRETS": [],
    "NUDGE_WEBHOOK_TOLERANCE_SECONDS": 300,
    # PostgreSQL: a single event's fixed statements are prepared once per connection. Set
    # False behind a pooler in transaction mode.
    "NUDGE_DB_PREPARED_STATEMENTS": True,
    "NUDGE_EVENT_MAX_BYTES": 256 * 1024,
    "NUDGE_BATCH_MAX_BYTES": 8 * 1024 * 1024,
    "NUDGE_BATCH_MAX_EVENTS": 1000,
    # --- API (nudge.api): requests per authenticated user (token or session) and failed
    # authentications per client address, "<n>/<s|min|hour|day>" (None: no limit), counted in
    # the default cache; the signed event endpoints are not throttled
    "NUDGE_API_TOKEN_RATE": "600/min",
    "NUDGE_API_AUTH_FAILURE_RATE": "30/min",
    # --- journeys
    "NUDGE_CHANNELS": {
        "email": "journeys.channels.email.EmailChannel",
        "sms": "journeys.channels.sms.SmsChannel",
    },
    # Where SMS go (journeys.channels.sms): console:, file:///dir, twilio://SID:TOKEN@host?from=…,
    # or an http(s) URL speaking the generic JSON protocol, signed with NUDGE_SMS_HTTP_SECRET.
    "NUDGE_SMS_URL": "console:",
    "NUDGE_SMS_HTTP_SECRET": "",
    # Twilio: ask for status callbacks (StatusCallback=NUDGE_PUBLIC_URL + nudge:twilio-status)
    # on each message; None: yes when NUDGE_PUBLIC_URL is https (Twilio must reach it).
    "NUDGE_TWILIO_STATUS_CALLBACK": None,
    # The From of every email (the Message-ID's domain is its domain).
    "NUDGE_EMAIL_FROM": "Nudge <nudge@localhost>",
    # open connections to the email backend per worker process (SMTP servers limit them)
    "NUDGE_EMAIL_MAX_CONNECTIONS": 10,
    # The site's public origin (https://shop.example), before the path of Nudge's URLs: the
    # unsubscribe link of every email (List-Unsubscribe) is NUDGE_PUBLIC_URL + its path.
    "NUDGE_PUBLIC_URL": "",
    "NUDGE_EXTRA_EVENT_TYPES": [],
    # A send never goes out sooner than this after its trigger arrived (received_at): a
    # burst of late events collapses under dedupe "latest", and a payment just behind a late
    # trigger still cancels its sends (README, "How sends become due").
    "NUDGE_SETTLE_SECONDS": 60.0,
    # Quiet hours (journeys.services.pacing): the site's default sending window in the
    # customer's local time ("HH:MM-HH:MM"; an end before the start crosses midnight; "" or
    # "off": none), Monday to Friday only or not. A journey may have its own or none.
    "NUDGE_SEND_WINDOW": "09:00-21:00",
    "NUDGE_SEND_WEEKDAYS_ONLY": False,
    # Frequency caps: a send gives way to a higher-priority send of the same customer and
    # channel due within this many seconds (pending, or claimed and not called yet).
    "NUDGE_CAP_PRIORITY_WINDOW_SECONDS": 900.0,
    "NUDGE_TICK_SECONDS": 0.2,
    "NUDGE_CLAIM_BATCH": 500,
    "NUDGE_DISPATCH_CHUNK": 100,
    "NUDGE_DISPATCH_TASK_SIZE": 200,
    "NUDGE_SEND_LEASE_SECONDS": 120,
    "NUDGE_JOURNEY_CACHE_SECONDS": 5.0,
    "NUDGE_JOURNEY_RECHECK_SECONDS": 1.0,
    "NUDGE_SEND_MAX_ATTEMPTS": 5,
    # a failed attempt's next try: a random delay up to base * 2**(attempts - 1) seconds,
    # capped (exponential backoff with full jitter), or the provider's Retry-After
    "NUDGE_SEND_RETRY_BASE_SECONDS": 5.0,
    "NUDGE_SEND_RETRY_MAX_SECONDS": 300.0,
    # provider calls in flight at once per dispatching worker process
    "NUDGE_DISPATCH_INFLIGHT": 64,
    # provider gates (journeys.services.providers): calls/s per provider name, shared by every
    # worker ({} or a missing name: no limit), and the circuit breaker
    "NUDGE_PROVIDER_RATES": {},
    "NUDGE_PROVIDER_RATE_HORIZON_SECONDS": 1.0,
    "NUDGE_CIRCUIT_FAILURES": 10,
    "NUDGE_CIRCUIT_OPEN_SECONDS": 5.0,
    "NUDGE_CIRCUIT_MAX_OPEN_SECONDS": 60.0,
    "NUDGE_APPLY_CHUNK": 50,
    "NUDGE_APPLY_LEASE_SECONDS": 120,
    "NUDGE_APPLY_QUEUE_LIMIT": 20,
    # --- monitoring (nudge.metrics: GET /metrics; config.health: GET /healthz)
    # bearer tokens that may read /metrics (several during a rotation), and the addresses
    # that may without one (a request a proxy forwarded never passes by its address)
    "NUDGE_METRICS_TOKENS": [],
    "NUDGE_METRICS_ALLOWED_IPS": ["127.0.0.0/8", "::1/128"],
    # sets of sends and events are counted exactly below this many rows, estimated above
    "NUDGE_METRICS_EXACT_LIMIT": 10_000,
    # /healthz says "degraded" when work is this many seconds late (due, or past its lease)
    "NUDGE_STALL_SECONDS": 120.0,
    # the sweeper (journeys.reconcile): a django-q2 schedule on the messaging cluster every so
    # many minutes (0: none), handing out what the ticker left this many seconds past due
    "NUDGE_RECONCILE_MINUTES": 1,
    "NUDGE_RECONCILE_AFTER_SECONDS": 60,
    # the journeys' figures (journeys.services.stats): the rollup folding the changes into the
    # daily figures runs every so many minutes on the messaging cluster (0: no schedule)
    "NUDGE_STATS_ROLLUP_MINUTES": 1,
    # Host models as event sources (see README, "Events from your own models").
    "NUDGE_HOST_EVENTS": [],
    # The django-q2 cluster that runs sends and event application (None: the default
    # cluster, Q_CLUSTER's cluster_name or name), and its task timeout.
    "NUDGE_MESSAGING_CLUSTER": None,
    "Q_MESSAGING_TIMEOUT": 60,
    # `manage.py qcluster` (nudge.cluster): how long busy workers get to finish their task
    # after SIGTERM/SIGINT before they are killed (their rows' leases bring the work back)
    "NUDGE_SHUTDOWN_GRACE_SECONDS": 20,
    # --- consent (journeys.services.consent): what a customer's "unknown" consent means for
    # marketing journeys: "deny" (GDPR: no marketing without recorded consent) or "allow".
    # Transactional journeys send when it is unknown; a revoked consent stops every journey.
    "NUDGE_CONSENT_DEFAULT": "deny",
    # --- privacy (journeys.services.erasure, journeys.services.retention)
    # The key of the suppression list's hashed addresses (bounces, complaints, unsubscribes,
    # STOP replies, erasures, operators' entries); "" means SECRET_KEY. Keep
    # it when SECRET_KEY rotates: entries hashed with another key no longer match.
    "NUDGE_ERASURE_PEPPER": "",
    # Days after which finished events' payloads and finished sends' rendered messages are
    # purged (the rows and their counts stay); 0 keeps them for ever.
    "NUDGE_RETENTION_EVENT_PAYLOAD_DAYS": 90,
    "NUDGE_RETENTION_MESSAGE_BODY_DAYS": 90,
    "NUDGE_RETENTION_BATCH": 1000,
    # --- media tasks (image compression on their own cluster)
    "NUDGE_MEDIA_CLUSTER": "media",
    "NUDGE_MEDIA_MAX_UPLOAD_BYTES": 25 * 1024 * 1024,
    "NUDGE_MEDIA_MAX_PIXELS": 50_000_000,
    "NUDGE_MEDIA_VARIANTS": ["large:1600", "thumb:400"],
    "NUDGE_MEDIA_WEBP_QUALITY": 80,
    "NUDGE_MEDIA_WEBP_METHOD": 4,
    "NUDGE_MEDIA_JPEG_QUALITY": 82,
    # a row left "processing" longer than this was abandoned (Q_MEDIA_TIMEOUT + 60 s)
    "NUDGE_MEDIA_STALE_AFTER_SECONDS": 660,
}


def defaults_apply() -> None:
    """Set each of DEFAULTS that the project's settings leave out (idempotent)."""
    for name, value in DEFAULTS.items():
        if not hasattr(settings, name):
            setattr(settings, name, copy.deepcopy(value))


def messaging_cluster() -> str:
    """The name of the django-q2 cluster whose workers run sends and event application."""
    if settings.NUDGE_MESSAGING_CLUSTER:
        return str(settings.NUDGE_MESSAGING_CLUSTER)
    q_cluster = getattr(settings, "Q_CLUSTER", {})
    return str(q_cluster.get("cluster_name") or q_cluster.get("name") or "default")


def provider_rates_parse(text: str) -> dict[str, float]:
    """NUDGE_PROVIDER_RATES from the environment: `twilio=100,http=50` (or `;` between the
    pairs), calls per second per provider name. ValueError names what is wrong."""
    rates: dict[str, float] = {}
    for pair in text.replace(";", ",").split(","):
        if not pair.strip():
            continue
        name, equals, value = pair.partition("=")
        name = name.strip()
        try:
            rate = float(value) if equals and name else float("nan")
        except ValueError:
            rate = float("nan")
        if not rate > 0 or rate == float("inf"):
            raise ValueError(
                f"NUDGE_PROVIDER_RATES: {pair.strip()!r} is not name=calls_per_second "
                "(a number above 0), as in twilio=100,http=50"
            )
        rates[name] = rate
    return rates
