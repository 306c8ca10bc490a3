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
