"""Discount codes: rules per step, pools of uploaded codes handed out at dispatch, void codes,
redemption from payment_finished, and GET /api/codes/{code}/ (against PostgreSQL)."""

from __future__ import annotations

import gc
import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core import mail
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from journeys import selectors, services
from journeys.codes import DiscountRule, discount_rule_problems, value_text
from journeys.models import (
    CodeRedemption,
    DiscountCodePool,
    JourneyStep,
    PooledCode,
    ScheduledSend,
)
from journeys.services import codes
from journeys.services.dispatch import _sends_lock
from marketing.models import Event, Payment
from tests.journeys.conftest import dispatch_due, ingest, make_event, make_journey, minutes_ago
from tests.webhook_client import SECRET, post_signed

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status
Outcome = CodeRedemption.Outcome

BODY = (
    "{{ discount.code }}: {{ discount.value }} off ({{ discount.kind }}, "
    "percent={{ discount.percent }}, percent_off={{ discount.percent_off }}, "
    "amount={{ discount.amount }} {{ discount.currency }}), until "
    "{{ discount.expires_at|date:'Y-m-d' }}"
)


def discount_journey(discount: dict[str, Any], **overrides: Any):
    return make_journey(
        steps=[
            {
                "delay": "PT10M",
                "channel": "email",
                "template": {"subject": "Your cart", "body": BODY},
                "discount": discount,
            }
        ],
        **overrides,
    )


def checkout(event_id: str, *, user: str = "u_1", minutes: float = 11) -> None:
    ingest(
        make_event(
            event_id, "checkout_started", user=user, at=minutes_ago(minutes), cart=f"c_{event_id}"
        )
    )


def payment_event(event_id: str, payment: str, code: str | None, *, user: str = "u_1") -> dict:
    payload = make_event(
        event_id, "payment_finished", user=user, at=minutes_ago(0), payment=payment
    )
    payload["payment"]["discount_code"] = code
    return payload


def pool(name: str = "winter", codes_: list[str] | None = None, threshold: int = 2):
    made = DiscountCodePool.objects.create(name=name, low_stock_threshold=threshold)
    PooledCode.objects.bulk_create([PooledCode(pool=made, code=c) for c in codes_ or []])
    return made


# --- rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "problems"),
    [
        (DiscountRule(percent=10), {}),
        (DiscountRule(amount=Decimal("10.00"), currency="EUR", prefix="WB-"), {}),
        (DiscountRule(percent=10, pool="winter", has_valid_for=True), {}),
        (
            DiscountRule(percent=10, amount=Decimal("5"), currency="EUR"),
            {"amount": ["a discount is a percentage or a fixed amount, not both"]},
        ),
        (
            DiscountRule(amount=Decimal("5")),
            {"currency": ["a fixed amount needs its currency (ISO 4217, e.g. EUR)"]},
        ),
        (
            DiscountRule(amount=Decimal("5"), currency="EURO"),
            {"currency": ["an ISO 4217 currency code: three capital letters (EUR)"]},
        ),
        (
            DiscountRule(percent=5, currency="EUR"),
            {"currency": ["a currency goes with a fixed amount only"]},
        ),
        (DiscountRule(percent=101), {"percent": ["a whole number from 1 to 100"]}),
        (DiscountRule(percent=5, prefix="A" * 23), {"prefix": [pytest.approx]}),
        (DiscountRule(percent=5, prefix="WB_"), {"prefix": [pytest.approx]}),
        (
            DiscountRule(percent=5, prefix="WB-", pool="winter"),
            {"prefix": ["a pool's codes are used as uploaded: no prefix with a pool"]},
        ),
        (
            DiscountRule(pool="winter", has_valid_for=True),
            {
                "pool": ["needs a discount: a percentage or a fixed amount"],
                "valid_for": ["needs a discount: a percentage or a fixed amount"],
            },
        ),
    ],
)
def test_discount_rule_validation(rule, problems):
    found = discount_rule_problems(rule)
    assert set(found) == set(problems)
    for name, expected in problems.items():
        if expected == [pytest.approx]:
            assert found[name][0].startswith("capital letters, digits and '-', at most 22")
        else:
            assert found[name] == expected


def test_value_text():
    assert value_text(percent=10, amount=None, currency="") == "10%"
    assert value_text(percent=None, amount=Decimal("10"), currency="EUR") == "10.00 EUR"


def test_journeys_as_code_round_trip_with_amount_prefix_and_pool():
    pool("winter")
    data = {
        "journeys": [
            {
                "slug": "winback",
                "name": "Winback",
                "trigger": "checkout_started",
                "steps": [
                    {
                        "delay": "PT10M",
                        "channel": "email",
                        "template": {"subject": "Hi", "body": "{{ discount.value }}"},
                        "discount": {
                            "amount_off": "10.00",
                            "currency": "eur",
                            "valid_for": "P7D",
                            "prefix": "wb-",
                        },
                    },
                    {
                        "delay": "PT20M",
                        "channel": "email",
                        "template": {"subject": "Hi", "body": "{{ discount.code }}"},
                        "discount": {"percent_off": 15, "valid_for": None, "pool": "winter"},
                    },
                    {
                        "delay": "PT30M",
                        "channel": "email",
                        "template": {"subject": "Hi", "body": "{{ discount.code }}"},
                        "discount": {"percent_off": 10, "valid_for": "P7D"},
                    },
                ],
            }
        ]
    }
    services.journeys_import(data=data)
    first, second, _ = JourneyStep.objects.filter(journey__slug="winback").order_by("position")
    assert (first.discount_amount, first.discount_currency, first.discount_prefix) == (
        Decimal("10.00"),
        "EUR",
        "WB-",
    )
    assert first.discount_percent is None
    assert second.discount_pool is not None and second.discount_pool.name == "winter"

    exported = selectors.journeys_export()
    steps = exported["journeys"][0]["steps"]
    assert steps[0]["discount"] == {
        "amount_off": "10.00",
        "currency": "EUR",
        "valid_for": "P7D",
        "prefix": "WB-",
    }
    assert steps[1]["discount"] == {"percent_off": 15, "valid_for": None, "pool": "winter"}
    # the format before amounts and pools, unchanged
    assert steps[2]["discount"] == {"percent_off": 10, "valid_for": "P7D"}
    services.journeys_import(data=exported)
    assert selectors.journeys_export() == exported


@pytest.mark.parametrize(
    ("discount", "error"),
    [
        ({"percent_off": 10, "pool": "summer"}, "discount.pool: unknown pool 'summer'"),
        (
            {"percent_off": 10, "amount_off": "5.00", "currency": "EUR"},
            "discount.amount_off: a discount is a percentage or a fixed amount, not both",
        ),
        ({"amount_off": "5.00"}, "discount.currency: a fixed amount needs its currency"),
        ({"amount_off": "5.001", "currency": "EUR"}, "discount.amount_off: a positive amount"),
        ({"amount_off": "-5", "currency": "EUR"}, "discount.amount_off: a positive amount"),
        ({"valid_for": "P7D"}, "discount: percent_off or amount_off is required"),
        ({"percent_off": 10, "colour": "red"}, "discount: unknown field(s): colour"),
        ({"percent_off": 10, "prefix": "X" * 30}, "discount.prefix: capital letters"),
    ],
)
def test_journeys_as_code_refuses_bad_discounts(discount, error):
    pool("winter")
    data = {
        "journeys": [
            {
                "slug": "bad",
                "name": "Bad",
                "trigger": "checkout_started",
                "steps": [
                    {
                        "delay": "PT10M",
                        "channel": "email",
                        "template": {"subject": "Hi", "body": "{{ discount.code }}"},
                        "discount": discount,
                    }
                ],
            }
        ]
    }
    with pytest.raises(services.JourneyImportError) as raised:
        services.journeys_import(data=data)
    assert any(error in problem for problem in raised.value.errors), raised.value.errors


# --- generated codes ------------------------------------------------------------------------


def test_a_fixed_amount_code_with_a_prefix_is_made_at_enrolment_and_rendered():
    discount_journey(
        {"amount_off": "10.00", "currency": "EUR", "valid_for": "P7D", "prefix": "WB-"}
    )
    checkout("e1")
    (send,) = ScheduledSend.objects.all()
    assert send.discount_code.startswith("WB-") and len(send.discount_code) == 13
    assert (send.discount_amount, send.discount_currency, send.discount_percent) == (
        Decimal("10.00"),
        "EUR",
        None,
    )

    # the step is edited after enrolment: the issued code keeps its value
    JourneyStep.objects.update(discount_amount=Decimal("50.00"))
    dispatch_due()
    send.refresh_from_db()
    assert send.status == Status.SENT
    expires = (send.sent_at + timedelta(days=7)).strftime("%Y-%m-%d")
    # seven days from the moment the message was rendered, just before its call
    assert timedelta(0) <= send.sent_at + timedelta(days=7) - send.discount_expires_at
    assert send.sent_at + timedelta(days=7) - send.discount_expires_at < timedelta(seconds=30)
    assert mail.outbox[0].body.startswith(
        f"{send.discount_code}: 10.00 EUR off (amount, percent=, percent_off=, "
        f"amount=10.00 EUR), until {expires}"
    )


def test_a_percent_code_renders_as_before():
    discount_journey({"percent_off": 10, "valid_for": "P7D"})
    checkout("e1")
    dispatch_due()
    (send,) = ScheduledSend.objects.all()
    assert mail.outbox[0].body.startswith(
        f"{send.discount_code}: 10% off (percent, percent=10, percent_off=10, amount= ), "
    )


def test_a_send_not_pending_at_enrolment_gets_no_code():
    discount_journey({"percent_off": 10})
    checkout("e1", minutes=60 * 5)  # due 4 h 50 min ago: stale at enrolment
    (send,) = ScheduledSend.objects.all()
    assert send.status == Status.SKIPPED
    assert send.discount_code is None
    step = JourneyStep.objects.get()
    for status in (Status.SKIPPED, Status.CANCELLED):  # held out: skipped at enrolment
        assert codes.send_discount_fields(step, status=status)["discount_code"] is None


# --- pools ----------------------------------------------------------------------------------


def test_a_pool_code_is_taken_at_dispatch_only():
    winter = pool("winter", ["W-1", "W-2", "W-3"])
    discount_journey({"percent_off": 15, "pool": "winter", "valid_for": "P1D"})
    checkout("e1", user="u_1")
    checkout("e2", user="u_2")
    pending = list(ScheduledSend.objects.order_by("pk"))
    assert [s.discount_code for s in pending] == [None, None]
    assert [s.discount_pool_id for s in pending] == [winter.pk, winter.pk]
    assert not PooledCode.objects.filter(send__isnull=False).exists()

    dispatch_due()
    first, second = ScheduledSend.objects.order_by("pk")
    assert (first.status, second.status) == (Status.SENT, Status.SENT)
    assert {first.discount_code, second.discount_code} == {"W-1", "W-2"}
    assert PooledCode.objects.get(code=first.discount_code).send_id == first.pk
    assert PooledCode.objects.get(code="W-3").send_id is None
    assert sorted(m.body.split(":")[0] for m in mail.outbox) == ["W-1", "W-2"]


def test_a_cancelled_send_consumes_no_pool_code():
    pool("winter", ["W-1"])
    discount_journey({"percent_off": 15, "pool": "winter"})
    checkout("e1")
    ingest(payment_event("pay1", "p_1", None))  # the payment exits the journey
    (send,) = ScheduledSend.objects.all()
    assert send.status == Status.CANCELLED
    dispatch_due()
    assert PooledCode.objects.get().send_id is None


def test_a_send_refused_at_dispatch_gives_its_pool_code_back():
    pool("winter", ["W-1"])
    journey = discount_journey({"percent_off": 15, "pool": "winter"})
    checkout("e1")
    journey.active = False
    journey.save()
    dispatch_due()
    send = ScheduledSend.objects.get()
    assert (send.status, send.reason) == (Status.CANCELLED, "cancelled: journey deactivated")
    assert send.discount_code is None
    assert PooledCode.objects.get().send_id is None


def test_an_empty_pool_skips_the_send_with_a_reason():
    pool("winter", ["W-1"])
    discount_journey({"percent_off": 15, "pool": "winter"})
    checkout("e1", user="u_1")
    checkout("e2", user="u_2")
    dispatch_due()
    first, second = ScheduledSend.objects.order_by("pk")
    assert (first.status, first.discount_code) == (Status.SENT, "W-1")
    assert (second.status, second.reason) == (
        Status.SKIPPED,
        "no discount code: pool 'winter' is empty",
    )
    assert second.discount_code is None
    assert len(mail.outbox) == 1


def test_a_retried_send_keeps_its_pool_code(settings):
    from journeys.channels import get_channel
    from tests.journeys.test_engine import FlakyChannel

    settings.NUDGE_CHANNELS = {
        **settings.NUDGE_CHANNELS,
        "email": "tests.journeys.test_engine.FlakyChannel",
    }
    get_channel.cache_clear()
    FlakyChannel.calls, FlakyChannel.failures = [], 1
    try:
        pool("winter", ["W-1", "W-2"])
        discount_journey({"percent_off": 15, "pool": "winter"})
        checkout("e1")
        dispatch_due()
        send = ScheduledSend.objects.get()
        assert (send.status, send.discount_code) == (Status.SENDING, "W-1")
        ScheduledSend.objects.filter(pk=send.pk).update(
            claimed_at=timezone.now() - timedelta(hours=1)
        )
        (recovered,) = services.scheduled_sends_recover(lease=timedelta(minutes=2), limit=10)
        assert services.scheduled_send_dispatch(send_id=recovered) == "sent"
    finally:
        get_channel.cache_clear()
    send.refresh_from_db()
    assert send.discount_code == "W-1"
    assert [m.body.split(":")[0] for m in FlakyChannel.calls] == ["W-1", "W-1"]
    assert PooledCode.objects.get(code="W-2").send_id is None


def test_pool_codes_of_a_take_are_one_statement_whatever_its_size():
    pool("winter", [f"W-{n}" for n in range(20)])
    discount_journey({"percent_off": 15, "pool": "winter"})
    for n in range(6):
        checkout(f"e{n}", user=f"u_{n}")
    ids = list(ScheduledSend.objects.order_by("pk").values_list("pk", flat=True))
    ScheduledSend.objects.update(status=Status.SENDING)

    def statements(send_ids: list[int]) -> int:
        with transaction.atomic(), CaptureQueriesContext(connection) as queries:
            codes.pool_codes_take(sends=_sends_lock(send_ids))
        return sum("pooled_code" in q["sql"] or "pooledcode" in q["sql"] for q in queries)

    assert statements(ids[:1]) == statements(ids[1:]) == 1


@pytest.fixture
def garbage_collected():
    """Threads leave cyclic garbage (frames, connections): collected here, so that a later
    timing test (tests/journeys/test_provider_gates.py spaces calls 50 ms apart) does not
    pay for it with a collection pause mid-measurement."""
    yield
    gc.collect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("garbage_collected")
def test_two_dispatches_never_take_the_same_pool_code():
    """Two workers take codes of the same pool at once: the second skips the rows the first
    has locked (no wait), and each code goes to one send."""
    pool("winter", [f"W-{n}" for n in range(10)])
    discount_journey({"percent_off": 15, "pool": "winter"})
    for n in range(8):
        checkout(f"e{n}", user=f"u_{n}")
    ids = list(ScheduledSend.objects.order_by("pk").values_list("pk", flat=True))
    ScheduledSend.objects.update(status=Status.SENDING)
    first_took = threading.Event()
    second_done = threading.Event()
    taken: dict[str, set[str | None]] = {}
    errors: list[BaseException] = []

    def worker(name: str, send_ids: list[int], *, hold: bool) -> None:
        try:
            with transaction.atomic():
                sends = _sends_lock(send_ids)
                codes.pool_codes_take(sends=sends)
                taken[name] = {s.discount_code for s in sends}
                if hold:  # keep the first take's codes locked while the second takes
                    first_took.set()
                    assert second_done.wait(10), "the second take waited for the first"
                else:
                    assert first_took.wait(10)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            if not hold:
                second_done.set()
            connection.close()

    def second() -> None:
        first_took.wait(10)
        worker("b", ids[4:], hold=False)

    threads = [
        threading.Thread(target=worker, args=("a", ids[:4]), kwargs={"hold": True}),
        threading.Thread(target=second),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert len(taken["a"]) == len(taken["b"]) == 4
    assert not taken["a"] & taken["b"]
    assert None not in taken["a"] | taken["b"]
    assert PooledCode.objects.filter(send__isnull=False).count() == 8
    assert ScheduledSend.objects.filter(discount_code__isnull=False).count() == 8


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("garbage_collected")
def test_parallel_dispatches_hand_out_each_pool_code_once():
    pool("winter", [f"W-{n}" for n in range(12)])
    discount_journey({"percent_off": 15, "pool": "winter"})
    for n in range(16):
        checkout(f"e{n}", user=f"u_{n}")
    claimed = services.scheduled_sends_claim_due(limit=100)
    halves = [claimed[0::2], claimed[1::2]]
    errors: list[BaseException] = []

    def run(send_ids: list[int]) -> None:
        try:
            services.scheduled_sends_dispatch(send_ids=send_ids)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(half,)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    sent = ScheduledSend.objects.filter(status=Status.SENT)
    skipped = ScheduledSend.objects.filter(status=Status.SKIPPED)
    assert (sent.count(), skipped.count()) == (12, 4)
    assert len(set(sent.values_list("discount_code", flat=True))) == 12
    assert set(skipped.values_list("reason", flat=True)) == {
        "no discount code: pool 'winter' is empty"
    }
    assert PooledCode.objects.filter(send=None).count() == 0


# --- upload and stock in the admin ----------------------------------------------------------


@pytest.fixture
def admin_client_logged_in(client):
    User.objects.create_superuser("root", password="x" * 12)
    client.login(username="root", password="x" * 12)
    return client


def upload(client, target: DiscountCodePool, content: bytes, name: str = "codes.csv"):
    return client.post(
        f"/admin/journeys/discountcodepool/{target.pk}/upload/",
        {"file": SimpleUploadedFile(name, content, content_type="text/csv")},
        follow=True,
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_admin_upload_adds_valid_codes_and_names_bad_lines(admin_client_logged_in):
    other = pool("summer", ["TAKEN-1"])
    winter = pool("winter", threshold=1)
    content = b"code,batch\nabc-1,x\n\nABC-2,x\nabc-1,y\nbad code,x\nTAKEN-1,x\n,x\nabc-3\n"
    response = upload(admin_client_logged_in, winter, content)

    assert response.status_code == 200
    assert messages_of(response) == [
        "codes.csv: added 3 code(s) to “winter” (7 line(s) read, 4 left out).",
        "line 5: ABC-1 repeats line 2",
        "line 6: 'bad code' is not a valid code (letters, digits, '-' and '_', at most 32 "
        "characters)",
        "line 7: TAKEN-1 is already in pool 'summer'",
        "line 8: no code",
    ]
    assert set(winter.codes.values_list("code", flat=True)) == {"ABC-1", "ABC-2", "ABC-3"}
    assert other.codes.count() == 1


def test_admin_upload_one_code_per_line(admin_client_logged_in):
    winter = pool("winter")
    response = upload(admin_client_logged_in, winter, b"\xef\xbb\xbfW-1\r\nW-2\r\n")
    assert messages_of(response)[0].startswith("codes.csv: added 2 code(s)")
    assert set(winter.codes.values_list("code", flat=True)) == {"W-1", "W-2"}


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"W-1\nW-\xff2\n", "line 2: not UTF-8 text"),
        (b"a,b\nW-1,2\n", "line 1: several columns and none is named 'code'"),
        (b"code\n", "the file holds no codes, only its header"),
        (b"\n\n", "the file holds no codes"),
        (b"W-1\x00\n", "not a text file"),
    ],
)
def test_admin_upload_of_an_unreadable_file_adds_nothing(admin_client_logged_in, content, error):
    winter = pool("winter")
    response = upload(admin_client_logged_in, winter, content)
    (message,) = messages_of(response)
    assert message.startswith("codes.csv: nothing was added: ")
    assert error in message
    assert winter.codes.count() == 0


def test_admin_shows_low_stock(admin_client_logged_in):
    low = pool("winter", ["W-1"], threshold=5)
    pool("summer", [f"S-{n}" for n in range(5)], threshold=5)
    empty = pool("spring", [], threshold=1)
    response = admin_client_logged_in.get("/admin/journeys/discountcodepool/")
    text = response.content.decode()
    warnings = messages_of(response)
    assert any(
        "“winter” is running low: 1 code(s) left, below its threshold of 5" in w for w in warnings
    )
    assert any("“spring” is empty" in w for w in warnings)
    assert not any("summer" in w for w in warnings)
    assert ">low<" in text and ">empty<" in text

    page = admin_client_logged_in.get(f"/admin/journeys/discountcodepool/{low.pk}/change/")
    body = page.content.decode()
    assert 'id="pool-low-stock"' in body and "running low" in body
    assert 'id="pool-upload"' in body
    assert (
        admin_client_logged_in.get(
            f"/admin/journeys/discountcodepool/{empty.pk}/change/"
        ).status_code
        == 200
    )


def test_admin_step_form_validates_the_discount_rule(admin_client_logged_in):
    from tests.journeys.test_admin import journey_form

    response = admin_client_logged_in.post(
        "/admin/journeys/journey/add/",
        journey_form(
            **{
                "steps-0-body": "{{ discount.value }}",
                "steps-0-discount_amount": "10.00",
                "steps-0-discount_currency": "",
                "steps-0-discount_percent": "",
            }
        ),
    )
    assert response.status_code == 200
    assert "A fixed amount needs its currency (ISO 4217, e.g. EUR)." in response.content.decode()

    winter = pool("winter")
    response = admin_client_logged_in.post(
        "/admin/journeys/journey/add/",
        journey_form(
            **{
                "steps-0-body": "{{ discount.value }}",
                "steps-0-discount_amount": "10.00",
                "steps-0-discount_currency": "eur",
                "steps-0-discount_pool": str(winter.pk),
            }
        ),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    step = JourneyStep.objects.get(journey__slug="winback")
    assert (step.discount_amount, step.discount_currency, step.discount_pool_id) == (
        Decimal("10.00"),
        "EUR",
        winter.pk,
    )


def test_admin_lists_redemptions(admin_client_logged_in):
    discount_journey({"percent_off": 10})
    checkout("e1")
    dispatch_due()
    code = ScheduledSend.objects.get().discount_code
    ingest(payment_event("pay1", "p_1", code))
    response = admin_client_logged_in.get("/admin/journeys/coderedemption/")
    assert response.status_code == 200
    assert code in response.content.decode()


# --- redemption -----------------------------------------------------------------------------


def test_end_to_end_signed_events_to_redemption(client, settings):
    """Signed webhooks: a checkout enrols, the send goes out with its code, a payment
    carrying the code redeems it; a second payment with it is flagged, not counted."""
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET]
    discount_journey({"percent_off": 10, "valid_for": "P7D"})
    checkout_payload = make_event("e1", "checkout_started", at=minutes_ago(11), cart="c_1")
    assert post_signed(client, "/api/events/", checkout_payload).status_code == 202
    services.events_apply_pending()
    dispatch_due()
    send = ScheduledSend.objects.get()
    assert send.status == Status.SENT

    # typed lower-case at the checkout
    assert (
        post_signed(
            client, "/api/events/", payment_event("pay1", "p_1", send.discount_code.lower())
        ).status_code
        == 202
    )
    services.events_apply_pending()
    send.refresh_from_db()
    payment = Payment.objects.get(external_id="p_1")
    assert send.discount_payment_id == payment.pk
    assert send.discount_redeemed_at == Event.objects.get(event_id="pay1").occurred_at
    redemption = CodeRedemption.objects.get()
    assert (redemption.outcome, redemption.send_id, redemption.code) == (
        Outcome.REDEEMED,
        send.pk,
        send.discount_code,
    )
    assert redemption.send.journey.slug == "j"  # payment -> code -> send -> journey

    assert (
        post_signed(
            client, "/api/events/", payment_event("pay2", "p_2", send.discount_code, user="u_2")
        ).status_code
        == 202
    )
    services.events_apply_pending()
    second = CodeRedemption.objects.get(payment__external_id="p_2")
    assert (second.outcome, second.detail) == (Outcome.DUPLICATE, "redeemed before by payment p_1")
    send.refresh_from_db()
    assert send.discount_payment_id == payment.pk  # counted once

    # the same events applied again record nothing new
    ids = list(Event.objects.values_list("pk", flat=True))
    codes.code_redemptions_record(events=list(Event.objects.filter(pk__in=ids)))
    assert CodeRedemption.objects.count() == 2


def test_void_expired_and_unknown_codes_are_recorded_as_such():
    discount_journey({"percent_off": 10, "valid_for": "P1D"})
    checkout("e1", user="u_1")  # cancelled by its customer's payment below
    checkout("e2", user="u_2")  # sent, then expired
    checkout("e3", user="u_3")  # still pending
    cancelled, expired, pending = ScheduledSend.objects.order_by("pk")
    ScheduledSend.objects.filter(pk=pending.pk).update(due_at=timezone.now() + timedelta(hours=1))
    ingest(payment_event("x", "p_0", None, user="u_1"))
    dispatch_due()
    ScheduledSend.objects.filter(pk=expired.pk).update(
        discount_expires_at=timezone.now() - timedelta(minutes=1)
    )
    cancelled.refresh_from_db()
    assert cancelled.status == Status.CANCELLED

    ingest(payment_event("p1", "p_1", cancelled.discount_code, user="u_1"))
    ingest(payment_event("p2", "p_2", expired.discount_code, user="u_2"))
    # by another customer: u_3's own payment would cancel the pending send (its exit)
    ingest(payment_event("p3", "p_3", pending.discount_code, user="u_5"))
    ingest(payment_event("p4", "p_4", "NOSUCHCODE", user="u_4"))
    outcomes = {
        r.payment.external_id: (r.outcome, r.detail)
        for r in CodeRedemption.objects.select_related("payment")
    }
    assert outcomes["p_1"][0] == Outcome.VOID
    assert outcomes["p_1"][1].startswith("its send was cancelled: cancelled by payment")
    assert outcomes["p_2"][0] == Outcome.EXPIRED
    assert outcomes["p_3"] == (Outcome.VOID, "its send has not gone out (pending)")
    assert outcomes["p_4"] == (Outcome.UNKNOWN, "no send has this code")
    assert not ScheduledSend.objects.filter(discount_redeemed_at__isnull=False).exists()


def test_redemptions_of_a_chunk_cost_the_same_queries_whatever_their_number():
    discount_journey({"percent_off": 10})
    for n in range(6):
        checkout(f"e{n}", user=f"u_{n}")
    dispatch_due()
    sent = list(ScheduledSend.objects.order_by("pk"))
    from marketing.services import event_ingest
    from marketing.validation import event_validate

    for n, send in enumerate(sent):
        payload = payment_event(f"pay{n}", f"p_{n}", send.discount_code, user=f"u_{n}")
        data, _ = event_validate(payload)
        event_ingest(source=Event.Source.WEBHOOK, data=data, payload=payload)
    events = list(Event.objects.filter(type="payment_finished").order_by("pk"))

    def queries(chunk: list[Event]) -> int:
        with CaptureQueriesContext(connection) as captured:
            codes.code_redemptions_record(events=chunk)
        return len(captured)

    assert queries(events[:1]) == queries(events[1:]) == 4
    assert CodeRedemption.objects.filter(outcome=Outcome.REDEEMED).count() == 6


# --- the code API ---------------------------------------------------------------------------


def api(*permissions: str) -> APIClient:
    user = User.objects.create_user(f"shop{User.objects.count()}", password="x" * 12)
    user.user_permissions.add(*Permission.objects.filter(codename__in=permissions))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_code_api_answers_each_state():
    discount_journey({"amount_off": "10.00", "currency": "EUR", "valid_for": "P7D"})
    for n in range(4):
        checkout(f"e{n}", user=f"u_{n}")
    valid, redeemed, expired, void = ScheduledSend.objects.order_by("pk")
    ingest(payment_event("x", "p_0", None, user="u_3"))  # cancels the last one
    dispatch_due()
    ingest(payment_event("p1", "p_1", redeemed.discount_code, user="u_1"))
    ScheduledSend.objects.filter(pk=expired.pk).update(
        discount_expires_at=timezone.now() - timedelta(seconds=1)
    )
    shop = api("check_discount_code")

    answer = shop.get(f"/api/codes/{valid.discount_code.lower()}/")
    assert answer.status_code == 200
    body = answer.json()
    valid.refresh_from_db()
    assert body["code"] == valid.discount_code
    assert body["status"] == "valid"
    assert body["value"] == {"kind": "amount", "amount": "10.00", "currency": "EUR"}
    assert body["value_text"] == "10.00 EUR"
    assert body["expires_at"] == valid.discount_expires_at.isoformat().replace("+00:00", "Z")
    assert body["redeemed_at"] is None
    assert body["journey"] == "j"

    body = shop.get(f"/api/codes/{redeemed.discount_code}/").json()
    assert (body["status"], body["redeemed_by_payment"]) == ("redeemed", "p_1")
    assert body["redeemed_at"] is not None
    assert shop.get(f"/api/codes/{expired.discount_code}/").json()["status"] == "expired"
    body = shop.get(f"/api/codes/{void.discount_code}/").json()
    assert body["status"] == "void"
    assert body["reason"].startswith("its send was cancelled")

    missing = shop.get("/api/codes/NOSUCHCODE/")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "No such discount code."}


def test_code_api_percent_value_and_auth():
    discount_journey({"percent_off": 10})
    checkout("e1")
    dispatch_due()
    code = ScheduledSend.objects.get().discount_code
    body = api("check_discount_code").get(f"/api/codes/{code}/").json()
    assert body["value"] == {"kind": "percent", "percent": 10}
    assert body["expires_at"] is None

    assert APIClient().get(f"/api/codes/{code}/").status_code == 401
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token nope")
    assert bad.get(f"/api/codes/{code}/").status_code == 401
    assert api("view_scheduledsend").get(f"/api/codes/{code}/").status_code == 403


def test_the_database_check_warns_of_low_pools():
    from journeys.checks import discount_pool_stock_check

    pool("winter", ["W-1"], threshold=3)
    pool("summer", ["S-1"], threshold=1)
    (warning,) = discount_pool_stock_check(databases=["default"])
    assert warning.id == "nudge.W130"
    assert warning.msg == (
        "discount code pool 'winter' has 1 code(s) left, below its low-stock threshold of 3"
    )
    assert discount_pool_stock_check(databases=None) == []


def test_marketers_manage_pools_and_check_codes_but_do_not_edit_records():
    from django.contrib.auth.models import Group

    granted = set(Group.objects.get(name="Marketer").permissions.values_list("codename", flat=True))
    assert {
        "add_discountcodepool",
        "change_discountcodepool",
        "view_pooledcode",
        "view_coderedemption",
        "check_discount_code",
    } <= granted
    assert not {"change_coderedemption", "delete_coderedemption", "change_pooledcode"} & granted
