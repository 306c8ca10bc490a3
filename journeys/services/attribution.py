"""Attribution: which send, so which journey, a payment is credited to (a `Conversion`),
decided when its payment_finished event is applied (services.enrolment calls
`conversions_record` for every chunk, inside the chunk's transaction).

The rule, for a payment of customer C at time T (its event's occurred_at):

1. **Code.** The payment carries a discount code that is a sent send's code
   (`ScheduledSend.discount_code`, whoever the customer): that send wins, however long ago it
   went out (kind `code`).
2. **Last touch.** Otherwise, among C's touches before T (a sent send at its `sent_at`; a
   held-out send at its `due_at`, the moment it would have gone out) that are within their
   own journey's `conversion_window` of T, the most recent wins, across every journey (kind
   `window`). A held-out send winning makes it a conversion of that journey's holdout group
   (`held_out`), the baseline: held-out sends compete as the sends they stand for would
   have, so another journey's later touch takes a payment from a holdout group exactly as it
   would from the sent group.
3. Otherwise the payment is no journey's conversion.

A payment is credited once (Conversion.payment is one-to-one; applying the event again
changes nothing). A payment applied before the send it could be credited to goes out is not
credited later: the payment cancels that send anyway (an exit), and a send sent after the
payment is no cause of it.

Reads are batched: one query for the chunk's payments, one for the candidate sends (the
chunk's customers' recent sent and held-out sends, and the sends whose code a payment
carries), one for the enrolments converted already; one INSERT.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Q

from journeys import selectors
from journeys.models import Conversion, Journey, ScheduledSend
from marketing.models import Event, EventType, Payment

Status = ScheduledSend.Status


@dataclass(frozen=True)
class Touch:
    """A send as a candidate for a payment: when it touched (or would have) the customer."""

    send: ScheduledSend
    at: datetime
    held_out: bool
    kind: str = Conversion.Kind.WINDOW


def conversions_record(*, events: list[Event]) -> list[Conversion]:
    """Credit the payments of the chunk's payment_finished events (see the module's rule);
    returns the conversions written now (none for a payment credited already)."""
    paid = [
        (event, event.payload["payment"]["id"])
        for event in events
        if event.type == EventType.PAYMENT_FINISHED
        and event.customer_id is not None
        and isinstance(event.payload.get("payment"), dict)
        and event.payload["payment"].get("id")
    ]
    if not paid:
        return []
    payments = {
        p.external_id: p
        for p in Payment.objects.filter(external_id__in={pid for _, pid in paid}).exclude(
            conversion__isnull=False
        )
    }
    paid = [(event, pid) for event, pid in paid if pid in payments]
    if not paid:
        return []
    journeys = {j.pk: j for j in selectors.journeys_all()}
    if not journeys:
        return []
    touches, by_code = _candidates(paid, payments, journeys)
    converted = set(
        Conversion.objects.filter(
            enrollment_id__in={t.send.enrollment_id for ts in touches.values() for t in ts}
            | {s.enrollment_id for s in by_code.values()}
        ).values_list("enrollment_id", flat=True)
    )
    conversions: list[Conversion] = []
    credited: set[int] = set()
    for event, payment_id in paid:
        payment = payments[payment_id]
        if payment.pk in credited:  # two events of one payment in the chunk
            continue
        touch = payment_touch(
            payment=payment,
            paid_at=event.occurred_at,
            touches=touches.get(payment.customer_id, []),
            by_code=by_code,
            journeys=journeys,
        )
        if touch is None:
            continue
        send = touch.send
        credited.add(payment.pk)
        conversions.append(
            Conversion(
                payment=payment,
                journey_id=send.journey_id,
                send=send,
                enrollment_id=send.enrollment_id,
                enrolled_at=send.enrollment.created_at,
                customer_id=payment.customer_id,
                kind=touch.kind,
                held_out=touch.held_out,
                first_for_enrollment=send.enrollment_id not in converted,
                amount=payment.amount,
                currency=payment.currency,
                converted_at=event.occurred_at,
            )
        )
        converted.add(send.enrollment_id)
    # ignore_conflicts: a payment credited by a concurrent chunk meanwhile keeps its conversion
    Conversion.objects.bulk_create(conversions, ignore_conflicts=True)
    return conversions


def payment_touch(
    *,
    payment: Payment,
    paid_at: datetime,
    touches: list[Touch],
    by_code: dict[str, ScheduledSend],
    journeys: dict[int, Journey],
) -> Touch | None:
    """The touch a payment is credited to, by the module's rule (None: no journey's)."""
    code = payment.discount_code
    if code and (send := by_code.get(code)) is not None:
        assert send.sent_at is not None
        return Touch(send=send, at=send.sent_at, held_out=False, kind=Conversion.Kind.CODE)
    best: Touch | None = None
    for touch in touches:
        journey = journeys.get(touch.send.journey_id)
        if journey is None or not touch.at <= paid_at <= touch.at + journey.conversion_window:
            continue
        if best is None or (touch.at, touch.send.pk) > (best.at, best.send.pk):
            best = touch
    return best


def _candidates(
    paid: list[tuple[Event, str]], payments: dict[str, Payment], journeys: dict[int, Journey]
) -> tuple[dict[int, list[Touch]], dict[str, ScheduledSend]]:
    """The chunk's customers' touches within the longest window before their payments (by
    customer id), and the sent sends whose code a payment carries (by code): one query."""
    longest = max((j.conversion_window for j in journeys.values()), default=timedelta(0))
    customers = {payments[pid].customer_id for _, pid in paid}
    earliest = min(event.occurred_at for event, _ in paid) - longest
    latest = max(event.occurred_at for event, _ in paid)
    codes = {p.discount_code for p in payments.values() if p.discount_code}
    recent = Q(customer_id__in=customers) & (
        Q(status=Status.SENT, sent_at__gte=earliest, sent_at__lte=latest)
        | Q(
            status=Status.SKIPPED,
            enrollment__held_out=True,
            due_at__gte=earliest,
            due_at__lte=latest,
        )
    )
    where = recent | Q(status=Status.SENT, discount_code__in=codes) if codes else recent
    touches: dict[int, list[Touch]] = {}
    by_code: dict[str, ScheduledSend] = {}
    for send in (
        ScheduledSend.objects.filter(where)
        .select_related("enrollment")
        .only(
            "id", "journey_id", "customer_id", "enrollment_id", "status", "sent_at", "due_at",
            "discount_code", "enrollment__created_at", "enrollment__held_out",
        )
    ):  # fmt: skip
        if send.status == Status.SENT and send.discount_code in codes:
            by_code[send.discount_code] = send
        if send.customer_id not in customers:
            continue
        if send.status == Status.SENT and send.sent_at is not None:
            touch = Touch(send=send, at=send.sent_at, held_out=False)
        elif send.enrollment.held_out:
            touch = Touch(send=send, at=send.due_at, held_out=True)
        else:
            continue
        touches.setdefault(send.customer_id, []).append(touch)
    return touches, by_code
