"""System checks run at startup (`manage.py check`, runserver, qcluster): a bad SMS setting
stops the process with a clear message instead of failing every SMS at dispatch; the same
for the site's send window."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import DatabaseError

_SMS_URL_HINT = (
    "For example console: (development), "
    "twilio://AC…:AUTH_TOKEN@api.twilio.com?from=+14155550100, or "
    "https://sms.example.com/send with NUDGE_SMS_HTTP_SECRET."
)


@register()
def sms_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from journeys.channels.sms import sms_url_parse

    try:
        parsed = sms_url_parse(settings.NUDGE_SMS_URL)
    except ValueError as exc:
        return [Error(str(exc), hint=_SMS_URL_HINT, id="nudge.E120")]
    if parsed.kind != "http":
        return []
    secret = settings.NUDGE_SMS_HTTP_SECRET
    hint = "Set NUDGE_SMS_HTTP_SECRET to the whsec_… secret the SMS endpoint verifies."
    if not secret:
        return [
            Error(
                "an http(s) NUDGE_SMS_URL needs NUDGE_SMS_HTTP_SECRET", hint=hint, id="nudge.E121"
            )
        ]
    from standardwebhooks.webhooks import Webhook

    try:
        Webhook(secret)
    except Exception as exc:  # the package raises RuntimeError or binascii.Error
        return [
            Error(
                f"NUDGE_SMS_HTTP_SECRET is not a Standard Webhooks secret: {exc}",
                hint=hint,
                id="nudge.E121",
            )
        ]
    return []


@register()
def send_window_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """NUDGE_SEND_WINDOW is read at every send: a typo must stop the process, not each send."""
    from journeys.sendwindow import window_parse

    try:
        window_parse(str(settings.NUDGE_SEND_WINDOW))
    except ValueError as exc:
        return [
            Error(
                f"NUDGE_SEND_WINDOW: {exc}",
                hint='For example "09:00-21:00", "20:00-08:00" (crosses midnight), or "off".',
                id="nudge.E130",
            )
        ]
    return []


@register(Tags.database)
def discount_pool_stock_check(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """`manage.py check --database default` (and migrate) warns of each discount code pool
    below its low-stock threshold: its steps' sends are skipped once it is empty. The admin's
    pool list says the same."""
    if not databases:
        return []
    from journeys.selectors import discount_pools_low

    try:
        low = discount_pools_low()
    except DatabaseError:  # not migrated yet
        return []
    return [
        Warning(
            f"discount code pool {pool.name!r} has {pool.remaining} code(s) left, below its "  # type: ignore[attr-defined]
            f"low-stock threshold of {pool.low_stock_threshold}",
            hint="Upload more codes on the pool's admin page.",
            id="nudge.W130",
        )
        for pool in low
    ]
