"""Providers' webhooks (thin adapters over services.feedback and marketing's consent):

- `twilio/status/`: Twilio's status callback for each message (delivered, undelivered, failed).
- `twilio/inbound/`: a customer's SMS reply; STOP and its synonyms opt the number out of SMS,
  START and UNSTOP opt it back in. The answer is an empty TwiML <Response/>: Twilio's own
  Advanced Opt-Out replies to the customer.

Both are verified with twilio.request_validator against NUDGE_PUBLIC_URL + the request's
path and X-Twilio-Signature, keyed with the auth token of NUDGE_SMS_URL's twilio:// URL: a
missing or wrong signature is 403, and nothing is written.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from journeys.channels.sms import phone_normalise, sms_url_parse
from journeys.services.feedback import send_delivery_record
from marketing import services as marketing

logger = logging.getLogger(__name__)

OPT_OUT_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"}
OPT_IN_WORDS = {"START", "UNSTOP"}
_TWILIO_STATUSES = {"delivered": "delivered", "undelivered": "undelivered", "failed": "failed"}
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def _twilio_verified(request: HttpRequest) -> bool:
    from twilio.request_validator import RequestValidator

    try:
        parsed = sms_url_parse(settings.NUDGE_SMS_URL)
    except ValueError:
        return False
    signature = request.headers.get("X-Twilio-Signature", "")
    if parsed.kind != "twilio" or not signature:
        return False
    url = str(settings.NUDGE_PUBLIC_URL).rstrip("/") + request.get_full_path()
    params = {key: request.POST.get(key, "") for key in request.POST}
    return bool(RequestValidator(parsed.password).validate(url, params, signature))


def _twiml() -> HttpResponse:
    return HttpResponse(EMPTY_TWIML, content_type="text/xml")


@csrf_exempt
@require_POST
def twilio_status(request: HttpRequest) -> HttpResponse:
    if not _twilio_verified(request):
        return HttpResponse("invalid Twilio signature", status=403)
    status = _TWILIO_STATUSES.get(request.POST.get("MessageStatus", ""))
    if status is not None:
        code = request.POST.get("ErrorCode", "")
        send_delivery_record(
            provider="twilio",
            provider_message_id=request.POST.get("MessageSid", ""),
            status=status,
            detail=f"Twilio error {code}" if code else "",
            occurred_at=datetime.now(tz=UTC),
        )
    return _twiml()


@csrf_exempt
@require_POST
def twilio_inbound(request: HttpRequest) -> HttpResponse:
    if not _twilio_verified(request):
        return HttpResponse("invalid Twilio signature", status=403)
    word = request.POST.get("Body", "").strip().upper()
    if word in OPT_OUT_WORDS or word in OPT_IN_WORDS:
        try:
            phone = phone_normalise(request.POST.get("From", ""))
        except ValueError:
            logger.warning("SMS reply from an invalid number: %r", request.POST.get("From"))
            return _twiml()
        if word in OPT_OUT_WORDS:
            marketing.customer_sms_opt_out(phone=phone)
        else:
            marketing.customer_sms_opt_in(phone=phone)
    return _twiml()
