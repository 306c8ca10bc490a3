"""Login throttling with django-axes: the client address it counts by, and the page a
locked-out login gets (settings AXES_CLIENT_IP_CALLABLE and AXES_LOCKOUT_CALLABLE)."""

from __future__ import annotations

import math
from typing import Any

from axes.helpers import get_client_username, get_cool_off, get_failure_limit
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

LOCKED_OUT_TEMPLATE = "nudge/login/locked_out.html"


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR; behind NUDGE_TRUSTED_PROXIES reverse proxies
    (each appending the address it saw to X-Forwarded-For), the address the outermost one
    saw, as DRF's NUM_PROXIES counts. Entries further left were written by the client and
    are never trusted."""
    remote_addr = str(request.META.get("REMOTE_ADDR") or "")
    proxies = int(getattr(settings, "NUDGE_TRUSTED_PROXIES", 0) or 0)
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if proxies <= 0 or not forwarded:
        return remote_addr
    addresses = [a.strip() for a in str(forwarded).split(",") if a.strip()]
    if not addresses:
        return remote_addr
    return addresses[-min(proxies, len(addresses))]


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """429 with a page that says the login is locked, for how long, and how to unlock it
    early; Retry-After in seconds."""
    cool_off = get_cool_off(request)
    minutes = math.ceil(cool_off.total_seconds() / 60) if cool_off else None
    response = render(
        request,
        LOCKED_OUT_TEMPLATE,
        {
            "title": "Login locked",
            "username": get_client_username(request, credentials) or "",
            "failure_limit": get_failure_limit(request, credentials),
            "minutes": minutes,
        },
        status=429,
    )
    if cool_off:
        response["Retry-After"] = str(math.ceil(cool_off.total_seconds()))
    return response
