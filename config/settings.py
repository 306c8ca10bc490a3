"""Nudge settings, read entirely from the environment (12-factor, django-environ).

Every setting a deployment changes is an environment variable; `.env` in the project root
is read too when present. Defaults give a working first run on SQLite; production sets
DEBUG=false, SECRET_KEY, ALLOWED_HOSTS and DATABASE_URL (and usually REDIS_URL).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import environ

from nudge.conf import DEFAULTS, provider_rates_parse

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A variable set in the environment wins over `.env`: read_env fills in only what is unset.
# scripts/start.py does the same for every process `make run` starts (honcho reads no env
# file there). NUDGE_ENV_FILE names another file than `.env`.
env_file = Path(os.environ.get("NUDGE_ENV_FILE") or BASE_DIR / ".env")
if env_file.is_file():
    environ.Env.read_env(env_file, overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env(
    "SECRET_KEY",
    default="django-insecure-local-development-key-change-me-in-production-0123456789",
)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # before django_q: its `qcluster` command is Nudge's (nudge/cluster.py says why)
    "nudge",
    "django_q",
    "anymail",
    "marketing",
    "journeys",
    "media_tasks",
    "django_prometheus",
    "axes",
]

MIDDLEWARE = [
    # first and last: django-prometheus's request counts and latencies (GET /metrics)
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # 400 for a NUL (%00) in the path, query string or a form: PostgreSQL refuses NUL (500)
    "nudge.middleware.RejectNulMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # turns a locked-out login into its page (django-axes: after the auth middleware)
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]
# django-prometheus's request and database metrics in GET /metrics (about 0.05-0.15 ms of CPU a
# request, README "Metrics"); false leaves them out, Nudge's own gauges stay.
NUDGE_METRICS_DJANGO = env.bool("NUDGE_METRICS_DJANGO", default=True)
if not NUDGE_METRICS_DJANGO:
    MIDDLEWARE = [name for name in MIDDLEWARE if not name.startswith("django_prometheus.")]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server, the ticker and the workers read while one of them writes;
    # IMMEDIATE transactions take the write lock up front instead of failing on upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    # Off by default: the check is one more round trip at the start of every request. A
    # connection broken by a database restart fails one request (503, which senders retry)
    # and is replaced at its end.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=False)
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault(
        "connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=5)
    )
if NUDGE_METRICS_DJANGO and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # the same backend, counting statements, errors and their durations (GET /metrics)
    DATABASES["default"]["ENGINE"] = "django_prometheus.db.backends.postgresql"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(BASE_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# Large enough for the batch endpoint; the event views enforce their own limits (413).
DATA_UPLOAD_MAX_MEMORY_SIZE = 16 * 1024 * 1024

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "config.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Nudge API",
    "DESCRIPTION": "Signed event ingestion and scheduled marketing sends.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Webhooks -------------------------------------------------------------------------------
# Standard Webhooks secrets (whsec_<base64>), space-separated: several may be active during a
# rotation. Unset means every signed request is refused with 401.
NUDGE_WEBHOOK_SECRETS = env.str("NUDGE_WEBHOOK_SECRET", default="").split()
NUDGE_WEBHOOK_TOLERANCE_SECONDS = env.int(
    "NUDGE_WEBHOOK_TOLERANCE_SECONDS", default=DEFAULTS["NUDGE_WEBHOOK_TOLERANCE_SECONDS"]
)
# PostgreSQL: a single event's fixed statements are prepared once per connection (planning
# them cost more than running them). Set false behind a pooler in transaction mode.
NUDGE_DB_PREPARED_STATEMENTS = env.bool(
    "NUDGE_DB_PREPARED_STATEMENTS", default=DEFAULTS["NUDGE_DB_PREPARED_STATEMENTS"]
)
NUDGE_EVENT_MAX_BYTES = env.int("NUDGE_EVENT_MAX_BYTES", default=DEFAULTS["NUDGE_EVENT_MAX_BYTES"])
NUDGE_BATCH_MAX_BYTES = env.int("NUDGE_BATCH_MAX_BYTES", default=DEFAULTS["NUDGE_BATCH_MAX_BYTES"])
NUDGE_BATCH_MAX_EVENTS = env.int(
    "NUDGE_BATCH_MAX_EVENTS", default=DEFAULTS["NUDGE_BATCH_MAX_EVENTS"]
)
# API throttling (429 with Retry-After): requests per authenticated user, and failed
# authentications per client address; "none" turns one off. Counted in CACHES["default"].
NUDGE_API_TOKEN_RATE = env.str("NUDGE_API_TOKEN_RATE", default=DEFAULTS["NUDGE_API_TOKEN_RATE"])
NUDGE_API_AUTH_FAILURE_RATE = env.str(
    "NUDGE_API_AUTH_FAILURE_RATE", default=DEFAULTS["NUDGE_API_AUTH_FAILURE_RATE"]
)
# Host models as event sources (README, "Events from your own models"); the standalone site's
# only models are Nudge's own, which are sources already.
NUDGE_HOST_EVENTS = list(DEFAULTS["NUDGE_HOST_EVENTS"])

# --- Task queue (django-q2) -----------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
_broker: dict[str, object] = {"redis": REDIS_URL} if REDIS_URL else {"orm": "default"}
# The default cache holds the API's throttling counts: on Redis when REDIS_URL is set, so that
# every web process shares them; else each process counts alone (local memory).
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

Q_MESSAGING_TIMEOUT = env.int("Q_MESSAGING_TIMEOUT", default=DEFAULTS["Q_MESSAGING_TIMEOUT"])
# SIGTERM/SIGINT to `manage.py qcluster`: busy workers get this long to finish (scripts/start.py
# gives the Procfile's processes this plus 10 s before honcho kills them)
NUDGE_SHUTDOWN_GRACE_SECONDS = env.float(
    "NUDGE_SHUTDOWN_GRACE_SECONDS", default=DEFAULTS["NUDGE_SHUTDOWN_GRACE_SECONDS"]
)
Q_CLUSTER: dict[str, object] = {
    # "messaging" runs deadline-bound work (sends); "media" runs CPU-bound work with no
    # deadline. Start the media pool with Q_CLUSTER_NAME=media (see README, "Queues").
    "name": "nudge",
    "cluster_name": "messaging",
    **_broker,
    # Sends wait on providers' HTTP APIs, not on the CPU: more workers than cores.
    "workers": env.int("Q_MESSAGING_WORKERS", default=max(4, 2 * (os.cpu_count() or 1))),
    "recycle": 1000,
    "timeout": Q_MESSAGING_TIMEOUT,
    "retry": env.int("Q_MESSAGING_RETRY", default=90),
    "max_attempts": 3,
    "ack_failures": True,
    "poll": 0.1,
    "bulk": 10,
    "save_limit": 100,
    "queue_limit": 50,
    "catch_up": False,
    "label": "Task queue",
    "ALT_CLUSTERS": {
        "media": {
            # Image compression is CPU-bound: one worker per core (the Procfile runs it niced).
            "workers": env.int("Q_MEDIA_WORKERS", default=os.cpu_count() or 1),
            "timeout": env.int("Q_MEDIA_TIMEOUT", default=600),
            "retry": env.int("Q_MEDIA_RETRY", default=900),
            "bulk": 1,
            "queue_limit": 4,
            "max_attempts": 2,
            "recycle": 50,
            "scheduler": False,
        },
    },
}
NUDGE_MESSAGING_CLUSTER = "messaging"
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" and not REDIS_URL:
    Q_CLUSTER["workers"] = env.int("Q_MESSAGING_WORKERS", default=1)

# --- Media tasks (image compression on the "media" cluster) ---------------------------------
NUDGE_MEDIA_CLUSTER = "media"
NUDGE_MEDIA_MAX_UPLOAD_BYTES = env.int(
    "NUDGE_MEDIA_MAX_UPLOAD_BYTES", default=DEFAULTS["NUDGE_MEDIA_MAX_UPLOAD_BYTES"]
)
# Decoded size limit (decompression bombs); Pillow's own, larger limit applies as well.
NUDGE_MEDIA_MAX_PIXELS = env.int(
    "NUDGE_MEDIA_MAX_PIXELS", default=DEFAULTS["NUDGE_MEDIA_MAX_PIXELS"]
)
# "name:max_px" pairs; each size gets a WebP and a JPEG (PNG for transparent images).
NUDGE_MEDIA_VARIANTS = env.list("NUDGE_MEDIA_VARIANTS", default=DEFAULTS["NUDGE_MEDIA_VARIANTS"])
NUDGE_MEDIA_WEBP_QUALITY = env.int(
    "NUDGE_MEDIA_WEBP_QUALITY", default=DEFAULTS["NUDGE_MEDIA_WEBP_QUALITY"]
)
NUDGE_MEDIA_WEBP_METHOD = env.int(
    "NUDGE_MEDIA_WEBP_METHOD", default=DEFAULTS["NUDGE_MEDIA_WEBP_METHOD"]
)
NUDGE_MEDIA_JPEG_QUALITY = env.int(
    "NUDGE_MEDIA_JPEG_QUALITY", default=DEFAULTS["NUDGE_MEDIA_JPEG_QUALITY"]
)
# A row left in "processing" longer than this was abandoned (its worker is killed after
# Q_MEDIA_TIMEOUT) and may be claimed again.
NUDGE_MEDIA_STALE_AFTER_SECONDS = env.int(
    "NUDGE_MEDIA_STALE_AFTER_SECONDS", default=env.int("Q_MEDIA_TIMEOUT", default=600) + 60
)

# --- Admin logins (django-axes) --------------------------------------------------------------
# After NUDGE_LOGIN_FAILURE_LIMIT failed logins for one username from one client address, that
# username is locked out from that address for NUDGE_LOGIN_COOLOFF_MINUTES: the login answers
# 429 with a page that says so, the right password included. A successful login resets the
# count. Attempts are rows in the database (every web process sees them); `manage.py
# axes_reset_username <name>` (or deleting the "Access attempt" in the admin) unlocks early.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out login
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env.bool("NUDGE_LOGIN_LOCKOUT", default=True)
AXES_FAILURE_LIMIT = env.int("NUDGE_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("NUDGE_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# a try during the lock-out does not start the wait again: the page's "try again in" holds
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "nudge.login.lockout_response"
# The client address: REMOTE_ADDR, or behind NUDGE_TRUSTED_PROXIES reverse proxies that each
# append to X-Forwarded-For, the address the outermost of them saw (nudge.login.client_ip).
# 0, the default, trusts no header: a client could write any address into it.
NUDGE_TRUSTED_PROXIES = env.int("NUDGE_TRUSTED_PROXIES", default=0)
# the API's throttles count the same address (DRF's default, None, believes the whole header)
REST_FRAMEWORK["NUM_PROXIES"] = NUDGE_TRUSTED_PROXIES
AXES_CLIENT_IP_CALLABLE = "nudge.login.client_ip"

# --- Security (production: DEBUG=false) -----------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Email ----------------------------------------------------------------------------------
# EMAIL_URL in django-environ's syntax picks one of Django's backends: smtp://user:pass@host:587,
# smtp+tls://... (STARTTLS), smtp+ssl://... (implicit TLS), consolemail:// (the default: each
# email is printed by the messaging worker), filemail:///dir, memorymail://, dummymail://.
# EMAIL_BACKEND in the environment wins and may name any backend (django-anymail's ESPs).
_email_url = env.str("EMAIL_URL", default="consolemail://")
_email = environ.Env.email_url_config(_email_url)
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default=_email["EMAIL_BACKEND"])
EMAIL_HOST = _email["EMAIL_HOST"] or "localhost"
EMAIL_USE_TLS = _email.get("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = _email.get("EMAIL_USE_SSL", False)
EMAIL_PORT = _email["EMAIL_PORT"] or (465 if EMAIL_USE_SSL else 587 if EMAIL_USE_TLS else 25)
EMAIL_HOST_USER = _email["EMAIL_HOST_USER"] or ""
EMAIL_HOST_PASSWORD = _email["EMAIL_HOST_PASSWORD"] or ""
if EMAIL_BACKEND == "django.core.mail.backends.filebased.EmailBackend":
    # filemail:///var/mail/nudge is an absolute directory (django-environ drops its first /).
    EMAIL_FILE_PATH = urlparse(_email_url).path or str(BASE_DIR / "sent-emails")
# Seconds an SMTP connect or reply may take (Django's default waits for ever); a mail server
# that does not answer fails the chunk's remaining emails, which are retried.
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", default=10.0)
NUDGE_EMAIL_FROM = env.str("NUDGE_EMAIL_FROM", default=DEFAULTS["NUDGE_EMAIL_FROM"])
NUDGE_PUBLIC_URL = env.str("NUDGE_PUBLIC_URL", default="http://127.0.0.1:8000")

# --- Journeys -------------------------------------------------------------------------------
# Channel backends by name: "journeys.channels.email.EmailChannel" sends through EMAIL_BACKEND;
# "journeys.channels.OutboxChannel" records messages on the row only.
NUDGE_CHANNELS = {
    "email": env.str("NUDGE_EMAIL_CHANNEL", default=DEFAULTS["NUDGE_CHANNELS"]["email"]),
    "sms": env.str("NUDGE_SMS_CHANNEL", default=DEFAULTS["NUDGE_CHANNELS"]["sms"]),
}
# Where SMS go: console: (the messaging worker's output), file:///dir, twilio://…, https://…
# (see journeys.channels.sms and the README); the generic https backend signs with the secret.
NUDGE_SMS_URL = env.str("NUDGE_SMS_URL", default=DEFAULTS["NUDGE_SMS_URL"])
NUDGE_SMS_HTTP_SECRET = env.str("NUDGE_SMS_HTTP_SECRET", default=DEFAULTS["NUDGE_SMS_HTTP_SECRET"])
# Twilio status callbacks on each message (true/false; unset: true when NUDGE_PUBLIC_URL is
# https). Inbound and status webhooks are verified with the auth token of NUDGE_SMS_URL.
NUDGE_TWILIO_STATUS_CALLBACK = env.bool("NUDGE_TWILIO_STATUS_CALLBACK", default=None)
# django-anymail, from every ANYMAIL_<NAME> variable: ANYMAIL_WEBHOOK_SECRET ("user:password",
# the HTTP basic auth its tracking webhooks /api/anymail/<esp>/tracking/ require; several
# comma-separated during a rotation) and the ESP's own (ANYMAIL_POSTMARK_SERVER_TOKEN, …).
ANYMAIL: dict[str, object] = {
    name.removeprefix("ANYMAIL_"): value
    for name, value in os.environ.items()
    if name.startswith("ANYMAIL_") and value
}
if isinstance(ANYMAIL.get("WEBHOOK_SECRET"), str):
    ANYMAIL["WEBHOOK_SECRET"] = env.list("ANYMAIL_WEBHOOK_SECRET")
# Event types a journey may use besides the built-in ones and those already received.
NUDGE_EXTRA_EVENT_TYPES = env.list(
    "NUDGE_EXTRA_EVENT_TYPES", default=DEFAULTS["NUDGE_EXTRA_EVENT_TYPES"]
)
# The ticker: how often it looks for due sends, how many it claims per query, and how many
# ids one dispatch task carries.
NUDGE_TICK_SECONDS = env.float("NUDGE_TICK_SECONDS", default=DEFAULTS["NUDGE_TICK_SECONDS"])
# No send goes out sooner than this after its trigger event arrived (0: at occurred_at + delay).
NUDGE_SETTLE_SECONDS = env.float("NUDGE_SETTLE_SECONDS", default=DEFAULTS["NUDGE_SETTLE_SECONDS"])
# Quiet hours: the sending window in the customer's time zone, unless a journey has its own
# ("HH:MM-HH:MM", "" or "off" for none), and whether only on weekdays.
NUDGE_SEND_WINDOW = env.str("NUDGE_SEND_WINDOW", default=DEFAULTS["NUDGE_SEND_WINDOW"])
NUDGE_SEND_WEEKDAYS_ONLY = env.bool(
    "NUDGE_SEND_WEEKDAYS_ONLY", default=DEFAULTS["NUDGE_SEND_WEEKDAYS_ONLY"]
)
# Frequency caps: how far ahead a higher-priority send keeps its slot from a lower one.
NUDGE_CAP_PRIORITY_WINDOW_SECONDS = env.float(
    "NUDGE_CAP_PRIORITY_WINDOW_SECONDS", default=DEFAULTS["NUDGE_CAP_PRIORITY_WINDOW_SECONDS"]
)
NUDGE_CLAIM_BATCH = env.int("NUDGE_CLAIM_BATCH", default=DEFAULTS["NUDGE_CLAIM_BATCH"])
NUDGE_DISPATCH_CHUNK = env.int("NUDGE_DISPATCH_CHUNK", default=DEFAULTS["NUDGE_DISPATCH_CHUNK"])
# ids per dispatch task: a task takes them NUDGE_DISPATCH_CHUNK at a time (one short
# transaction each) as room in its NUDGE_DISPATCH_INFLIGHT window allows, and hands what is
# left after half its timeout to a new task
NUDGE_DISPATCH_TASK_SIZE = env.int(
    "NUDGE_DISPATCH_TASK_SIZE", default=DEFAULTS["NUDGE_DISPATCH_TASK_SIZE"]
)
# A claimed send whose worker has not finished after this long is handed out again.
NUDGE_SEND_LEASE_SECONDS = env.int(
    "NUDGE_SEND_LEASE_SECONDS", default=DEFAULTS["NUDGE_SEND_LEASE_SECONDS"]
)
# How long a process may use its copy of the journeys without re-reading them when nothing
# in the journeys' version (counts, last updates, active ones) changed: bounds how late a
# change the version cannot see (QuerySet.update() without updated_at) is seen. Any saved
# journey or step is seen at once.
NUDGE_JOURNEY_CACHE_SECONDS = env.float(
    "NUDGE_JOURNEY_CACHE_SECONDS", default=DEFAULTS["NUDGE_JOURNEY_CACHE_SECONDS"]
)
# Webhook ingestion asks every event whether it exits a journey; it re-reads the journeys'
# version at most this often (a journey saved by the same process is seen at once).
NUDGE_JOURNEY_RECHECK_SECONDS = env.float(
    "NUDGE_JOURNEY_RECHECK_SECONDS", default=DEFAULTS["NUDGE_JOURNEY_RECHECK_SECONDS"]
)
# A send is marked failed after this many attempts.
NUDGE_SEND_MAX_ATTEMPTS = env.int(
    "NUDGE_SEND_MAX_ATTEMPTS", default=DEFAULTS["NUDGE_SEND_MAX_ATTEMPTS"]
)
# A transient provider error is retried after a random delay of up to
# base * 2**(attempts - 1) seconds, capped, or after the provider's Retry-After
NUDGE_SEND_RETRY_BASE_SECONDS = env.float(
    "NUDGE_SEND_RETRY_BASE_SECONDS", default=DEFAULTS["NUDGE_SEND_RETRY_BASE_SECONDS"]
)
NUDGE_SEND_RETRY_MAX_SECONDS = env.float(
    "NUDGE_SEND_RETRY_MAX_SECONDS", default=DEFAULTS["NUDGE_SEND_RETRY_MAX_SECONDS"]
)
# Provider calls in flight at once per messaging worker process (threads)
NUDGE_EMAIL_MAX_CONNECTIONS = env.int(
    "NUDGE_EMAIL_MAX_CONNECTIONS", default=DEFAULTS["NUDGE_EMAIL_MAX_CONNECTIONS"]
)
NUDGE_DISPATCH_INFLIGHT = env.int(
    "NUDGE_DISPATCH_INFLIGHT", default=DEFAULTS["NUDGE_DISPATCH_INFLIGHT"]
)
# Provider gates, across every worker and machine: NUDGE_PROVIDER_RATES="twilio=100,http=50"
# (calls/s per provider name, as the admin's Providers page and a send's `provider` show it);
# a circuit opens after NUDGE_CIRCUIT_FAILURES transient failures in a row.
NUDGE_PROVIDER_RATES = provider_rates_parse(env.str("NUDGE_PROVIDER_RATES", default=""))
NUDGE_PROVIDER_RATE_HORIZON_SECONDS = env.float(
    "NUDGE_PROVIDER_RATE_HORIZON_SECONDS",
    default=DEFAULTS["NUDGE_PROVIDER_RATE_HORIZON_SECONDS"],
)
NUDGE_CIRCUIT_FAILURES = env.int(
    "NUDGE_CIRCUIT_FAILURES", default=DEFAULTS["NUDGE_CIRCUIT_FAILURES"]
)
NUDGE_CIRCUIT_OPEN_SECONDS = env.float(
    "NUDGE_CIRCUIT_OPEN_SECONDS", default=DEFAULTS["NUDGE_CIRCUIT_OPEN_SECONDS"]
)
NUDGE_CIRCUIT_MAX_OPEN_SECONDS = env.float(
    "NUDGE_CIRCUIT_MAX_OPEN_SECONDS", default=DEFAULTS["NUDGE_CIRCUIT_MAX_OPEN_SECONDS"]
)
# Consent: what an unknown consent means for marketing journeys, "deny" (no marketing without
# recorded consent, as GDPR asks) or "allow"; any other value fails the start-up checks.
NUDGE_CONSENT_DEFAULT = (
    env.str("NUDGE_CONSENT_DEFAULT", default=DEFAULTS["NUDGE_CONSENT_DEFAULT"]).strip().lower()
)
# Privacy: the key of the suppression list's hashed addresses (empty: SECRET_KEY; keep
# it stable), and how many days finished events' payloads and sent messages' bodies are kept
# (0: for ever); `manage.py nudge_purge` and its daily schedule purge in batches of this many.
NUDGE_ERASURE_PEPPER = env.str("NUDGE_ERASURE_PEPPER", default=DEFAULTS["NUDGE_ERASURE_PEPPER"])
NUDGE_RETENTION_EVENT_PAYLOAD_DAYS = env.int(
    "NUDGE_RETENTION_EVENT_PAYLOAD_DAYS", default=DEFAULTS["NUDGE_RETENTION_EVENT_PAYLOAD_DAYS"]
)
NUDGE_RETENTION_MESSAGE_BODY_DAYS = env.int(
    "NUDGE_RETENTION_MESSAGE_BODY_DAYS", default=DEFAULTS["NUDGE_RETENTION_MESSAGE_BODY_DAYS"]
)
NUDGE_RETENTION_BATCH = env.int("NUDGE_RETENTION_BATCH", default=DEFAULTS["NUDGE_RETENTION_BATCH"])
# Stored events are applied to journeys (enrolments) by the messaging workers: the ticker
# hands them out in tasks of this many ids, and hands an event out again when its worker has
# not finished after the lease; an event whose application failed NUDGE_SEND_MAX_ATTEMPTS
# times stays unapplied, with its error (admin, event log).
NUDGE_APPLY_CHUNK = env.int("NUDGE_APPLY_CHUNK", default=DEFAULTS["NUDGE_APPLY_CHUNK"])
NUDGE_APPLY_LEASE_SECONDS = env.int(
    "NUDGE_APPLY_LEASE_SECONDS", default=DEFAULTS["NUDGE_APPLY_LEASE_SECONDS"]
)
# The ticker hands out events only while fewer tasks than this wait in the messaging queue.
NUDGE_APPLY_QUEUE_LIMIT = env.int(
    "NUDGE_APPLY_QUEUE_LIMIT", default=DEFAULTS["NUDGE_APPLY_QUEUE_LIMIT"]
)
# The sweeper (journeys.reconcile, also `manage.py nudge_reconcile`): every
# NUDGE_RECONCILE_MINUTES (0: no schedule) the messaging cluster hands out the sends and events
# a ticker should have handed out NUDGE_RECONCILE_AFTER_SECONDS ago (none running?).
NUDGE_RECONCILE_MINUTES = env.int(
    "NUDGE_RECONCILE_MINUTES", default=DEFAULTS["NUDGE_RECONCILE_MINUTES"]
)
# Every NUDGE_STATS_ROLLUP_MINUTES (0: no schedule) the messaging cluster folds the journeys'
# recorded changes into their daily figures (journeys.services.stats).
NUDGE_STATS_ROLLUP_MINUTES = env.int(
    "NUDGE_STATS_ROLLUP_MINUTES", default=DEFAULTS["NUDGE_STATS_ROLLUP_MINUTES"]
)
NUDGE_RECONCILE_AFTER_SECONDS = env.int(
    "NUDGE_RECONCILE_AFTER_SECONDS", default=DEFAULTS["NUDGE_RECONCILE_AFTER_SECONDS"]
)
# GET /metrics (nudge.metrics): bearer tokens (space-separated, several during a rotation) and
# the addresses allowed without one (comma-separated networks; default loopback only); sets
# counted exactly below NUDGE_METRICS_EXACT_LIMIT rows, estimated above. GET /healthz says
# "degraded" when sends or events are NUDGE_STALL_SECONDS late.
NUDGE_METRICS_TOKENS = env.str("NUDGE_METRICS_TOKEN", default="").split()
NUDGE_METRICS_ALLOWED_IPS = env.list(
    "NUDGE_METRICS_ALLOWED_IPS", default=DEFAULTS["NUDGE_METRICS_ALLOWED_IPS"]
)
NUDGE_METRICS_EXACT_LIMIT = env.int(
    "NUDGE_METRICS_EXACT_LIMIT", default=DEFAULTS["NUDGE_METRICS_EXACT_LIMIT"]
)
NUDGE_STALL_SECONDS = env.float("NUDGE_STALL_SECONDS", default=DEFAULTS["NUDGE_STALL_SECONDS"])
