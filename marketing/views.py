"""Pages a customer opens from an email: the unsubscribe link (List-Unsubscribe, RFC 8058).

No login, no cookie and no CSRF token: the signed token in the URL is the customer's
authority, and a mail provider's one-click POST carries nothing else."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from marketing import services
from marketing.models import Channel, ConsentState, Customer

PAGE_TEMPLATE = "nudge/unsubscribe/page.html"
INVALID_TEMPLATE = "nudge/unsubscribe/invalid.html"


@csrf_exempt
@never_cache
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET: the page, with a button to unsubscribe (or, once unsubscribed, to re-subscribe).
    POST: unsubscribe at once, as a one-click client (body `List-Unsubscribe=One-Click`) or
    the page's button does; `action=resubscribe` (the page's other button) opts back in.
    A forged or altered token: 400, and nothing changes."""
    try:
        customer_id, channel = services.unsubscribe_token_read(token)
    except services.UnsubscribeTokenInvalid:
        return render(request, INVALID_TEMPLATE, status=400)
    if channel != Channel.EMAIL:
        return render(request, INVALID_TEMPLATE, status=400)
    try:
        if request.method == "POST":
            if request.POST.get("action") == "resubscribe":
                customer = services.customer_resubscribe(customer_id=customer_id, channel=channel)
            else:
                customer = services.customer_unsubscribe(customer_id=customer_id, channel=channel)
        else:
            customer = Customer.objects.get(pk=customer_id)
    except Customer.DoesNotExist:
        return render(request, INVALID_TEMPLATE, status=404)
    context = {
        "email": customer.email,
        "subscribed": customer.email_opted_out_at is None
        and customer.email_consent != ConsentState.REVOKED,
        "changed": request.method == "POST",
    }
    response = render(request, PAGE_TEMPLATE, context)
    response["X-Robots-Tag"] = "noindex"
    return response
