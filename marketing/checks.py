from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from marketing import host_sources
from marketing.webhooks import decode_secret

register()(host_sources.host_sources_check)


@register()
def webhook_secrets_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    secrets = settings.NUDGE_WEBHOOK_SECRETS
    if not secrets:
        return [
            Warning(
                "NUDGE_WEBHOOK_SECRET is not set: every POST to /api/events/ is refused.",
                hint="Set it to one or more space-separated whsec_<base64> secrets.",
                id="nudge.W001",
            )
        ]
    problems: list[CheckMessage] = []
    for position, secret in enumerate(secrets, start=1):
        try:
            decode_secret(secret)
        except ValueError as exc:
            problems.append(Error(f"NUDGE_WEBHOOK_SECRET entry {position}: {exc}", id="nudge.E001"))
    return problems


@register()
def public_url_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """The unsubscribe link of every email is NUDGE_PUBLIC_URL + its path: without an origin
    mail clients cannot follow it."""
    url = settings.NUDGE_PUBLIC_URL
    if url.startswith(("https://", "http://")):
        return []
    return [
        Warning(
            "NUDGE_PUBLIC_URL is not an http(s) URL: the List-Unsubscribe link of every email "
            f"is relative ({url!r} + its path) and mail clients cannot follow it.",
            hint="Set it to the site's public origin, e.g. https://shop.example.",
            id="nudge.W002",
        )
    ]


CONSENT_DEFAULTS = ("deny", "allow")


@register()
def consent_default_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """NUDGE_CONSENT_DEFAULT decides whether marketing goes to customers whose consent is
    unknown: a typo must stop the start, not silently pick one of the two."""
    value = settings.NUDGE_CONSENT_DEFAULT
    if isinstance(value, str) and value.strip().lower() in CONSENT_DEFAULTS:
        return []
    return [
        Error(
            f"NUDGE_CONSENT_DEFAULT is {value!r}: it must be 'deny' (no marketing without "
            "recorded consent) or 'allow' (marketing also to customers whose consent is "
            "unknown).",
            hint="Set NUDGE_CONSENT_DEFAULT=deny (the default, as GDPR asks) or allow.",
            id="nudge.E030",
        )
    ]
