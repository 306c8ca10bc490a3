"""A minimal shop project: Django's defaults, its own `shop` app, and what Nudge's README,
"Install Nudge into your Django project", asks for. Nothing copied from config/settings.py."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "shop-test-secret-key-not-for-production-0123456789abcdefghijklmnop"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "shop",
    # Nudge
    "rest_framework",
    "nudge",
    "django_q",
    "marketing",
    "journeys",
    "media_tasks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "hostproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DATABASE", str(BASE_DIR / "shop.sqlite3")),
    }
}

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# --- Nudge: only what has no default ---------------------------------------------------------
NUDGE_WEBHOOK_SECRETS = os.environ.get("NUDGE_WEBHOOK_SECRET", "").split()
# The origin the unsubscribe links in emails start with (check nudge.W002 warns without it).
NUDGE_PUBLIC_URL = "https://shop.example"
# retry above timeout (django-q2 warns otherwise); Q_MESSAGING_TIMEOUT matches timeout.
Q_CLUSTER = {"name": "shop", "orm": "default", "workers": 1, "timeout": 60, "retry": 120}

NUDGE_HOST_EVENTS = [
    {
        "model": "shop.Order",
        "event": "payment_finished",
        "on": "save",
        "when": {"status": "paid"},
        "occurred_at": "paid_at",
        "fields": {
            "user.id": "customer_id",
            "user.email": "customer.email",
            "payment.id": "pk",
            "payment.amount": "total",
            "payment.currency": "currency",
        },
    },
    {
        "model": "auth.User",
        "event": "user_registered",
        "on": "create",
        "fields": {"user.id": "pk", "user.email": "email", "user.first_name": "first_name"},
    },
]
