"""Entry conditions: the language (validation, operators, all/any, words), their evaluation
in the batched apply path (as of the trigger's occurred_at, a constant number of queries per
chunk), journeys-as-code and the admin, and a webhook-to-enrolment run."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from journeys import selectors, services
from journeys.conditions import (
    ENTRY_FIELDS,
    MISSING,
    StepState,
    condition_compile,
    condition_problems,
    condition_words,
    entry_scope,
    step_scope,
)
from journeys.models import Enrollment, Journey, JourneyStep, ScheduledSend
from journeys.services.enrolment import EnrolmentPlan
from marketing.models import Event
from marketing.services import event_ingest
from marketing.validation import event_validate
from tests.journeys.conftest import ingest, make_event, make_journey, minutes_ago, sends
from tests.journeys.test_admin import journey_form
from tests.webhook_client import SECRET, post_signed

pytestmark = pytest.mark.django_db
Status = ScheduledSend.Status
KNOWN = {"checkout_started", "payment_finished", "user_registered"}


class Facts:
    """Facts as the loaders give them, written out by hand."""

    def __init__(
        self,
        values: dict[str, Any] | None = None,
        history: dict[str, int] | None = None,
        steps: dict[int, StepState] | None = None,
    ) -> None:
        self.values = values or {}
        self.history = history or {}
        self.steps = steps or {}

    def value(self, field: str) -> Any:
        return self.values.get(field, MISSING)

    def history_count(self, event_type: str, within: timedelta) -> int:
        return self.history.get(event_type, 0)

    def step_state(self, position: int) -> StepState | None:
        return self.steps.get(position)


def holds(condition: dict[str, Any], facts: Facts) -> bool:
    assert condition_problems(condition, scope=entry_scope(), known_types=KNOWN) == []
    return condition_compile(condition).failure(facts) is None


# --- the operators ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "op", "value", "actual", "expected"),
    [
        ("cart.total", "=", 50, "50.00", True),
        ("cart.total", "=", "49.90", "49.9", True),
        ("cart.total", "!=", 50, "50.00", False),
        ("cart.total", "!=", 50, "20.00", True),
        ("cart.total", "<", 50, "49.99", True),
        ("cart.total", "<", 50, "50.00", False),
        ("cart.total", "<=", 50, "50.00", True),
        ("cart.total", ">", 50, "50.00", False),
        ("cart.total", ">", 50, "50.01", True),
        ("cart.total", ">=", 50, "50.00", True),
        ("cart.total", ">=", 50, 49, False),  # a JSON number in the payload
        ("cart.total", "in", [10, "20.5"], "20.50", True),
        ("cart.total", "not in", [10, 20], "20.00", False),
        ("payment.amount", ">=", "100", "120.00", True),
        ("cart.item_count", ">", 2, 3, True),
        ("cart.currency", "=", "EUR", "EUR", True),
        ("cart.currency", "!=", "EUR", "USD", True),
        ("cart.currency", "in", ["EUR", "CHF"], "USD", False),
        ("cart.currency", "not in", ["EUR", "CHF"], "USD", True),
        ("customer.timezone", "starts with", "Europe/", "Europe/Berlin", True),
        ("customer.timezone", "starts with", "Europe/", "America/New_York", False),
        ("customer.email", "contains", "@example.", "ana@example.com", True),
        ("customer.email", "contains", "@shop.", "ana@example.com", False),
        ("customer.first_name", "=", "Ana", "ana", False),  # text is case-sensitive
        ("customer.first_name", "is set", None, "Ana", True),
        ("customer.first_name", "is set", None, "", False),  # blank is not set
        ("customer.first_name", "is not set", None, "", True),
        ("event.type", "=", "checkout_started", "checkout_started", True),
        ("event.properties.plan", "=", "pro", "pro", True),
        ("event.properties.plan", "!=", "pro", "basic", True),
        ("event.properties.plan", "in", ["pro", "team"], "team", True),
        ("event.properties.plan", "not in", ["pro", "team"], "basic", True),
        ("event.properties.plan", "starts with", "pr", "pro", True),
        ("event.properties.plan", "contains", "ro", "pro", True),
        ("event.properties.seats", ">=", 5, 7, True),
        ("event.properties.seats", "<", 5, "7", False),
        ("event.properties.seats", "=", 7, 7.0, True),
        ("event.properties.trial", "=", True, True, True),
        ("event.properties.trial", "=", True, "true", False),  # a boolean is not text
        ("event.properties.trial", "is set", None, False, True),
    ],
)
def test_every_operator(field, op, value, actual, expected):
    condition = {"field": field, "op": op}
    if value is not None:
        condition["value"] = value

    assert holds(condition, Facts({field: actual})) is expected


@pytest.mark.parametrize(
    ("op", "value"), [("=", 1), ("!=", 1), ("<", 1), ("in", [1]), ("not in", [1]), ("is set", None)]
)
def test_a_value_the_event_does_not_carry_fails_every_comparison_but_is_not_set(op, value):
    condition = {"field": "cart.total", "op": op}
    if value is not None:
        condition["value"] = value

    assert holds(condition, Facts()) is False
    assert holds({"field": "cart.total", "op": "is not set"}, Facts()) is True


@pytest.mark.parametrize(
    ("op", "count", "found", "expected"),
    [
        ("=", 0, 0, True),
        ("=", 0, 1, False),
        (">=", 2, 2, True),
        (">=", 2, 1, False),
        ("<", 3, 2, True),
        ("<=", 1, 2, False),
        (">", 1, 2, True),
        ("!=", 1, 1, False),
    ],
)
def test_history_counts_compare_with_every_operator(op, count, found, expected):
    spec = {"event": "checkout_started", "within": "P7D", "op": op, "count": count}
    condition = {"history": spec}

    assert holds(condition, Facts(history={"checkout_started": found})) is expected


def test_all_and_any_nest():
    big = {"field": "cart.total", "op": ">=", "value": 50}
    euro = {"field": "cart.currency", "op": "=", "value": "EUR"}
    europe = {"field": "customer.timezone", "op": "starts with", "value": "Europe/"}
    pro = {"field": "event.properties.plan", "op": "=", "value": "pro"}
    condition = {"all": [euro, {"any": [big, {"all": [europe, pro]}]}]}

    small_in_rome = {"cart.currency": "EUR", "cart.total": "20", "customer.timezone": "Europe/Rome"}

    assert holds(condition, Facts({"cart.currency": "EUR", "cart.total": "60"}))
    assert holds(condition, Facts({**small_in_rome, "event.properties.plan": "pro"}))
    assert not holds(condition, Facts(small_in_rome))
    assert not holds(condition, Facts({"cart.currency": "USD", "cart.total": "60"}))
    assert holds({"all": []}, Facts())


def test_the_note_names_the_part_that_failed_and_the_value_seen():
    condition = {
        "all": [
            {"field": "cart.currency", "op": "=", "value": "EUR"},
            {"field": "cart.total", "op": ">=", "value": 50},
        ]
    }
    compiled = condition_compile(condition)

    assert compiled.failure(Facts({"cart.currency": "EUR", "cart.total": "20.00"})) == (
        "condition cart.total >= 50 false (20.00)"
    )
    assert compiled.failure(Facts({"cart.currency": "EUR"})) == (
        "condition cart.total >= 50 false (not set)"
    )
    history = {"history": {"event": "payment_finished", "within": "P30D", "op": "=", "count": 0}}
    assert condition_compile(history).failure(Facts(history={"payment_finished": 2})) == (
        "condition payment_finished within P30D = 0 false (2)"
    )


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (
            {"field": "cart.totl", "op": ">=", "value": 50},
            "conditions.field: unknown field 'cart.totl' (known: cart.checkout_url, cart.currency,",
        ),
        ({"field": "cart.total", "op": "starts with", "value": "5"}, "not apply to cart.total"),
        ({"field": "cart.currency", "op": ">", "value": "EUR"}, "use one of: =, !=, in, not in"),
        ({"field": "cart.total", "op": ">=", "value": "fifty"}, "'fifty' is not a number"),
        ({"field": "cart.total", "op": ">=", "value": True}, "True is not a number"),
        ({"field": "cart.total", "op": ">="}, "conditions.value: required with '>='"),
        ({"field": "cart.currency", "op": "=", "value": "eur"}, "not an ISO 4217 currency code"),
        ({"field": "customer.email", "op": "=", "value": 5}, "5 is not text"),
        ({"field": "cart.item_count", "op": "=", "value": 2.5}, "2.5 is not a whole number"),
        ({"field": "cart.currency", "op": "in", "value": "EUR"}, "takes a non-empty list"),
        ({"field": "cart.currency", "op": "in", "value": ["EUR", 3]}, "value[1]: 3 is not text"),
        ({"field": "customer.email", "op": "is set", "value": "x"}, "'is set' takes no value"),
        ({"field": "event.properties.", "op": "=", "value": "x"}, "unknown field"),
        ({"field": "cart.total", "op": "~", "value": 1}, "'~' does not apply to cart.total"),
        ({"field": "cart.total", "op": ">", "value": 1, "x": 1}, "unknown key(s) x"),
        ({"all": {"field": "cart.total"}}, "conditions.all: must be a list of conditions"),
        ({"any": []}, "conditions.any: at least one condition"),
        ({"all": [], "any": []}, "'all' stands alone"),
        ([{"field": "cart.total"}], "conditions: must be an object"),
        ({"total": 50}, "unknown condition with keys total"),
        (
            {"history": {"event": "payment_finised", "within": "P30D", "op": "=", "count": 0}},
            "conditions.history.event: unknown event type 'payment_finised' (known: ",
        ),
        (
            {"history": {"event": "payment_finished", "within": "30 days", "count": 0}},
            "conditions.history.within: '30 days' is not an ISO 8601 duration",
        ),
        (
            {"history": {"event": "payment_finished", "within": "PT0S", "count": 0}},
            "within: must be longer than zero",
        ),
        (
            {"history": {"event": "payment_finished", "within": "P1D", "count": -1}},
            "count: a whole number, 0 or more, not -1",
        ),
        (
            {"history": {"event": "payment_finished", "within": "P1D", "op": "in", "count": 1}},
            "history.op: 'in' is not one of",
        ),
        ({"step": 0, "was": "opened"}, "conditions on steps are for step conditions only"),
        (
            {"all": [{"field": "cart.total", "op": ">=", "value": 1}, {"any": [{"x": 1}]}]},
            "conditions.all[1].any[0]: unknown condition",
        ),
    ],
)
def test_validation_refuses_with_a_clear_message(condition, message):
    problems = condition_problems(condition, scope=entry_scope(), known_types=KNOWN)

    assert any(message in problem for problem in problems), problems


def test_the_unknown_field_message_lists_every_known_field():
    (problem,) = condition_problems(
        {"field": "cart.totl", "op": "=", "value": 1}, scope=entry_scope(), known_types=KNOWN
    )

    for name in ENTRY_FIELDS:
        assert name in problem
    assert "event.properties.<name>" in problem


def test_step_conditions_name_earlier_steps_and_the_send_s_customer_and_cart_only():
    scope = step_scope({0, 1})

    assert condition_problems({"step": 1, "was": "not opened"}, scope=scope) == []
    assert condition_problems({"field": "cart.total", "op": ">", "value": 5}, scope=scope) == []
    (later,) = condition_problems({"step": 2, "was": "opened"}, scope=scope)
    assert later == "conditions.step: 2 is not an earlier step of this journey (earlier: 0, 1)"
    (state,) = condition_problems({"step": 0, "was": "read"}, scope=scope)
    assert "'read' is not one of sent, opened, clicked, not sent, not opened" in state
    (event,) = condition_problems({"field": "event.type", "op": "=", "value": "x"}, scope=scope)
    assert "unknown field 'event.type' in a step condition" in event
    (history,) = condition_problems(
        {"history": {"event": "payment_finished", "within": "P1D", "count": 0}}, scope=scope
    )
    assert "history conditions are for entry conditions only" in history


def test_conditions_in_words():
    condition = {
        "all": [
            {"field": "cart.total", "op": ">=", "value": 50},
            {"history": {"event": "payment_finished", "within": "P30D", "op": "=", "count": 0}},
        ]
    }

    assert condition_words(condition) == (
        "cart total ≥ 50 and no payment_finished in the last 30 days"
    )
    assert condition_words({}) == "always"
    assert condition_words(
        {
            "any": [
                {"field": "cart.currency", "op": "in", "value": ["EUR", "CHF"]},
                {
                    "all": [
                        {"field": "customer.timezone", "op": "starts with", "value": "Europe/"},
                        {
                            "history": {
                                "event": "checkout_started",
                                "within": "P7D",
                                "op": ">=",
                                "count": 2,
                            }
                        },
                    ]
                },
            ]
        }
    ) == (
        "cart currency is one of EUR, CHF or (customer time zone starts with Europe/ and "
        "at least 2 checkout_started in the last 7 days)"
    )
    assert condition_words({"field": "event.properties.plan", "op": "is not set"}) == (
        "event property plan is not set"
    )
    assert condition_words({"step": 0, "was": "not opened"}, step_channels={0: "Email"}) == (
        "step 0 (Email) not opened"
    )


# --- the apply path -------------------------------------------------------------------------


def conditional_journey(conditions: dict[str, Any], **overrides: Any) -> Journey:
    return make_journey(conditions=conditions, **overrides)


def checkout(
    event_id: str, *, user: str, at: Any, total: str = "120.00", **extra: Any
) -> dict[str, Any]:
    payload = make_event(event_id, "checkout_started", user=user, at=at, cart=f"c_{event_id}")
    payload["cart"]["total"] = total
    payload.update(extra)
    return payload


def store(payload: dict[str, Any]) -> Event:
    """Store an event as the webhook does, without applying it."""
    data, errors = event_validate(payload)
    assert data is not None, errors
    event_ingest(source=Event.Source.WEBHOOK, data=data, payload=payload)
    return Event.objects.get(event_id=payload["id"])


def enrol_notes(journey: Journey, events: list[Event]) -> list[str]:
    """What the enrolment plan says for each event (its debug note), without saving."""
    with transaction.atomic():
        journeys = selectors.journeys_all()
        loaded = next(j for j in journeys if j.pk == journey.pk)
        plan = EnrolmentPlan.load(events, journeys)
        notes = [plan.enrol(loaded, event) for event in events]
        transaction.set_rollback(True)
    return notes


def test_a_refused_enrolment_says_which_condition_was_false():
    journey = conditional_journey({"field": "cart.total", "op": ">=", "value": 50})
    small = store(checkout("e1", user="u_1", at=minutes_ago(5), total="20.00"))
    big = store(checkout("e2", user="u_2", at=minutes_ago(5), total="60.00"))

    assert enrol_notes(journey, [small, big]) == [
        "condition cart.total >= 50 false (20.00)",
        "enrolled",
    ]


def test_customer_attributes_and_event_properties_decide_who_enters():
    conditional_journey(
        {
            "all": [
                {"field": "customer.timezone", "op": "starts with", "value": "Europe/"},
                {"field": "event.properties.plan", "op": "in", "value": ["pro", "team"]},
            ]
        }
    )
    ingest(checkout("e1", user="u_berlin", at=minutes_ago(5), properties={"plan": "pro"}))
    ingest(
        checkout("e2", user="u_ny", at=minutes_ago(5), properties={"plan": "pro"})
        | {"user": {"id": "u_ny", "email": "ny@example.com", "timezone": "America/New_York"}}
    )
    ingest(checkout("e3", user="u_basic", at=minutes_ago(5), properties={"plan": "basic"}))
    ingest(checkout("e4", user="u_none", at=minutes_ago(5)))

    assert [s.customer.external_id for s in sends()] == ["u_berlin"]


def test_a_refused_trigger_neither_supersedes_a_pending_send_nor_uses_the_re_entry():
    conditional_journey(
        {"field": "cart.total", "op": ">=", "value": 50}, dedupe="latest", reentry="once"
    )
    ingest(checkout("e1", user="u_1", at=minutes_ago(6), total="80.00"))
    ingest(checkout("e2", user="u_1", at=minutes_ago(5), total="10.00"))

    (pending,) = sends()
    assert pending.status == Status.PENDING
    assert pending.cart.external_id == "c_e1"


def test_history_counts_only_events_before_the_trigger_s_occurred_at():
    """The trigger arrives late (it occurred three days ago): a payment that occurred after
    it (stored first) is not in its history, one that occurred before it is."""
    journey = conditional_journey(
        {"history": {"event": "payment_finished", "within": "P30D", "op": "=", "count": 0}},
        exit_on=[],
    )
    day = timedelta(days=1)
    now = timezone.now()
    store(make_event("p_after", "payment_finished", user="u_1", at=now - day, payment="p1"))
    store(make_event("p_before", "payment_finished", user="u_2", at=now - 5 * day, payment="p2"))
    store(make_event("p_old", "payment_finished", user="u_3", at=now - 40 * day, payment="p3"))
    triggers = [
        store(checkout(f"late_{user}", user=user, at=now - 3 * day))
        for user in ("u_1", "u_2", "u_3")
    ]

    assert enrol_notes(journey, triggers) == [
        "enrolled",
        "condition payment_finished within P30D = 0 false (1)",
        "enrolled",  # 40 days before: outside the window
    ]


def test_at_least_two_checkouts_in_seven_days_counts_the_trigger_itself():
    journey = conditional_journey(
        {"history": {"event": "checkout_started", "within": "P7D", "op": ">=", "count": 2}},
        dedupe="every",
    )
    now = timezone.now()
    first = store(checkout("c1", user="u_1", at=now - timedelta(days=10)))
    second = store(checkout("c2", user="u_1", at=now - timedelta(days=2)))
    third = store(checkout("c3", user="u_1", at=now - timedelta(days=1)))

    assert enrol_notes(journey, [first, second, third]) == [
        "condition checkout_started within P7D >= 2 false (1)",
        "condition checkout_started within P7D >= 2 false (1)",  # c1 is 8 days before c2
        "enrolled",  # c2 and c3
    ]


def _chunk_queries(count: int, tag: str) -> int:
    """The queries of applying `count` stored events of as many customers in one chunk."""
    ids = []
    for n in range(count):
        user = f"{tag}_{n}"
        store(make_event(f"{tag}_p{n}", "payment_finished", user=user, at=minutes_ago(90),
                         payment=f"{tag}_pay{n}"))  # fmt: skip
        ids.append(store(checkout(f"{tag}_c{n}", user=user, at=minutes_ago(5))).pk)
    Event.objects.filter(pk__in=ids).update(applied_at=None)
    with CaptureQueriesContext(connection) as queries:
        assert services.events_apply(event_ids=ids) == count
    return len(queries)


def test_the_chunk_s_queries_do_not_grow_with_its_events():
    history = {"event": "payment_finished", "within": "P30D", "op": "<=", "count": 1}
    for n in range(3):
        conditional_journey(
            {
                "all": [
                    {"field": "cart.total", "op": ">=", "value": 50},
                    {"field": "customer.timezone", "op": "starts with", "value": "Europe/"},
                    {"history": history},
                ]
            },
            slug=f"j{n}",
            exit_on=[],
        )
    services.events_apply_pending()
    selectors.journeys_all()  # the journeys' cache, as a worker has it

    few = _chunk_queries(3, "few")
    many = _chunk_queries(40, "many")

    assert few == many
    assert Enrollment.objects.count() == 3 * (3 + 40)


def test_conditions_add_one_query_per_chunk_for_history_and_none_otherwise():
    make_journey(slug="plain", exit_on=[])
    services.events_apply_pending()
    selectors.journeys_all()
    plain = _chunk_queries(10, "plain")
    journey = Journey.objects.get(slug="plain")
    journey.conditions = {"field": "customer.timezone", "op": "starts with", "value": "Europe/"}
    journey.save()
    selectors.journeys_all()
    with_fields = _chunk_queries(10, "fields")
    journey.conditions = {"history": {"event": "payment_finished", "within": "P1D", "count": 1}}
    journey.save()
    selectors.journeys_all()
    with_history = _chunk_queries(10, "hist")

    assert with_fields == plain  # the customers came locked with the events
    assert with_history == plain + 1
    assert Enrollment.objects.count() == 30


# --- the webhook, end to end ---------------------------------------------------------------


def test_a_20_eur_cart_is_not_enrolled_while_a_60_eur_cart_is(settings):
    settings.NUDGE_WEBHOOK_SECRETS = [SECRET]
    conditional_journey(
        {
            "all": [
                {"field": "cart.total", "op": ">=", "value": 50},
                {"field": "cart.currency", "op": "=", "value": "EUR"},
            ]
        }
    )
    client = Client()
    for user, total in (("u_small", "20.00"), ("u_big", "60.00")):
        payload = checkout(f"co_{user}", user=user, at=minutes_ago(2), total=total)
        assert post_signed(client, "/api/events/", payload).status_code == 202

    assert services.events_apply_pending() == 2

    assert [s.customer.external_id for s in sends()] == ["u_big"]
    assert [e.customer.external_id for e in Enrollment.objects.select_related("customer")] == [
        "u_big"
    ]
    assert Event.objects.filter(applied_at__isnull=True).count() == 0


# --- journeys as code -------------------------------------------------------------------------

SPEC: dict[str, Any] = {
    "slug": "big-carts",
    "name": "Big carts",
    "trigger": "checkout_started",
    "exit_on": ["payment_finished"],
    "dedupe": "latest",
    "reentry": "every",
    "conditions": {
        "all": [
            {"field": "cart.total", "op": ">=", "value": 50},
            {"history": {"event": "payment_finished", "within": "P30D", "op": "=", "count": 0}},
        ]
    },
    "steps": [
        {
            "delay": "PT20M",
            "channel": "email",
            "template": {"subject": "Your cart", "body": "{{ cart.checkout_url }}"},
        },
        {
            "delay": "PT2H",
            "channel": "sms",
            "template": {"body": "Still thinking? {{ cart.checkout_url }}"},
            "condition": {"step": 0, "was": "not opened"},
        },
    ],
}


def _export(capsys: Any) -> dict[str, Any]:
    capsys.readouterr()
    call_command("journeys_export")
    return json.loads(capsys.readouterr().out)


def test_journeys_as_code_carries_conditions_both_ways(tmp_path, capsys):
    path = tmp_path / "journeys.json"
    path.write_text(json.dumps({"journeys": [SPEC]}))
    call_command("journeys_import", str(path))

    journey = Journey.objects.get(slug="big-carts")
    assert journey.conditions == SPEC["conditions"]
    assert journey.steps.get(position=1).condition == {"step": 0, "was": "not opened"}
    exported = _export(capsys)["journeys"]
    (spec,) = exported
    assert spec["conditions"] == SPEC["conditions"]
    assert [step["condition"] for step in spec["steps"]] == [None, {"step": 0, "was": "not opened"}]
    path.write_text(json.dumps({"journeys": exported}))
    call_command("journeys_import", str(path))
    assert _export(capsys)["journeys"] == exported


def test_export_numbers_step_conditions_like_its_steps(capsys):
    """The admin's positions may have gaps; journeys-as-code numbers steps 0, 1, 2."""
    make_journey(slug="gaps")
    journey = Journey.objects.get(slug="gaps")
    JourneyStep.objects.filter(journey=journey).update(position=10)
    JourneyStep.objects.create(
        journey=journey,
        position=20,
        delay=timedelta(hours=1),
        channel="sms",
        body="again",
        condition={"any": [{"step": 10, "was": "not clicked"}]},
    )

    (spec,) = _export(capsys)["journeys"]

    assert spec["steps"][1]["condition"] == {"any": [{"step": 0, "was": "not clicked"}]}
    services.journeys_import(data={"journeys": [spec]})  # and it imports as it is


def test_an_import_with_a_bad_condition_writes_nothing_and_names_journey_and_field():
    bad = json.loads(json.dumps(SPEC))
    bad["conditions"]["all"][0]["field"] = "cart.amount"
    bad["steps"][1]["condition"] = {"step": 1, "was": "opened"}

    with pytest.raises(services.JourneyImportError) as raised:
        services.journeys_import(data={"journeys": [bad]})

    errors = raised.value.errors
    prefix = "journeys[0] (big-carts): conditions.all[0].field: unknown field 'cart.amount'"
    assert any(e.startswith(prefix) for e in errors), errors
    assert (
        "journeys[0] (big-carts): steps[1].condition.step: 1 is not an earlier step of this "
        "journey (earlier: 0)"
    ) in errors
    assert not Journey.objects.exists()


# --- the admin ------------------------------------------------------------------------------


@pytest.fixture
def admin_client() -> Client:
    User.objects.create_superuser("root", password="x" * 12)
    client = Client()
    client.login(username="root", password="x" * 12)
    return client


def test_the_admin_saves_conditions_and_shows_them_in_words(admin_client):
    conditions = SPEC["conditions"]
    response = admin_client.post(
        "/admin/journeys/journey/add/",
        journey_form(
            conditions=json.dumps(conditions),
            **{
                "steps-TOTAL_FORMS": "2",
                "steps-1-position": "1",
                "steps-1-delay": "02:00:00",
                "steps-1-channel": "sms",
                "steps-1-body": "Still there?",
                "steps-1-condition": '{"step": 0, "was": "not opened"}',
            },
        ),
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    journey = Journey.objects.get(slug="winback")
    assert journey.conditions == conditions
    assert journey.steps.get(position=0).condition is None
    assert journey.steps.get(position=1).condition == {"step": 0, "was": "not opened"}
    words = "cart total ≥ 50 and no payment_finished in the last 30 days"
    assert words in admin_client.get("/admin/journeys/journey/").content.decode()
    page = admin_client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert words in page
    assert "step 0 (Email) not opened" in page


def test_a_journey_without_conditions_is_for_everyone(admin_client):
    response = admin_client.post("/admin/journeys/journey/add/", journey_form())

    assert response.status_code == 302
    assert Journey.objects.get().conditions == {}
    assert "always" in admin_client.get("/admin/journeys/journey/").content.decode()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"conditions": '{"field": "cart.totl", "op": ">=", "value": 50}'},
            "unknown field &#x27;cart.totl&#x27; (known: cart.checkout_url",
        ),
        (
            {"conditions": '{"field": "cart.total", "op": "contains", "value": "5"}'},
            "&#x27;contains&#x27; does not apply to cart.total (an amount)",
        ),
        (
            {"conditions": '{"field": "cart.total", "op": ">=", "value": "lots"}'},
            "&#x27;lots&#x27; is not a number",
        ),
        (
            {
                "conditions": '{"history": {"event": "payment_finished", "within": "1 month", '
                '"count": 0}}'
            },
            "&#x27;1 month&#x27; is not an ISO 8601 duration",
        ),
        ({"conditions": "{not json"}, "Enter a valid JSON."),
        (
            {"steps-0-condition": '{"step": 0, "was": "opened"}'},
            "0 is not an earlier step of this journey (earlier: none)",
        ),
        (
            {"steps-0-condition": '{"field": "event.type", "op": "=", "value": "x"}'},
            "unknown field &#x27;event.type&#x27; in a step condition",
        ),
    ],
)
def test_the_admin_refuses_a_bad_condition(admin_client, overrides, message):
    response = admin_client.post("/admin/journeys/journey/add/", journey_form(**overrides))

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Journey.objects.exists()


def test_amounts_compare_as_decimals_not_floats():
    compiled = condition_compile({"field": "cart.total", "op": "=", "value": 0.3})

    assert compiled.failure(Facts({"cart.total": str(Decimal("0.1") + Decimal("0.2"))})) is None


def test_a_condition_saved_past_validation_enrols_no_one_and_others_still_enrol():
    """A raw UPDATE (or an older version's data) may store what validation refuses: that
    journey enrols no one, saying why, and the event still enrols in the other journeys."""
    broken = make_journey(slug="broken")
    make_journey(slug="fine")
    Journey.objects.filter(pk=broken.pk).update(
        conditions={"field": "cart.totl", "op": ">=", "value": 50}, updated_at=timezone.now()
    )
    event = store(checkout("e1", user="u_1", at=minutes_ago(5)))

    (note,) = enrol_notes(Journey.objects.get(pk=broken.pk), [event])
    assert note.startswith("condition invalid: conditions.field: unknown field 'cart.totl'")
    assert services.events_apply_pending() == 1
    assert [s.journey.slug for s in sends()] == ["fine"]
    assert Event.objects.get(pk=event.pk).apply_error == ""


PREVIEW = "/admin/journeys/journey/conditions/preview/"


def test_the_admin_says_a_condition_in_words_as_it_is_typed(admin_client):
    entry = admin_client.post(
        PREVIEW, {"kind": "entry", "condition": json.dumps(SPEC["conditions"])}
    )
    assert entry.json() == {
        "words": "cart total ≥ 50 and no payment_finished in the last 30 days",
        "problems": [],
    }
    wrong = admin_client.post(
        PREVIEW, {"kind": "entry", "condition": '{"field": "cart.total", "op": "starts with"}'}
    ).json()
    assert wrong["words"] == ""
    assert wrong["problems"][0].startswith("conditions.op: 'starts with' does not apply")
    step = admin_client.post(
        PREVIEW,
        {
            "kind": "step",
            "condition": '{"step": 0, "was": "not opened"}',
            "position": "1",
            "steps": ["0:Email", "1:SMS"],
        },
    ).json()
    assert step == {"words": "step 0 (Email) not opened", "problems": []}
    later = admin_client.post(
        PREVIEW,
        {"kind": "step", "condition": '{"step": 1, "was": "sent"}', "position": "0",
         "steps": ["0:Email", "1:SMS"]},
    ).json()  # fmt: skip
    assert later["problems"] == [
        "condition.step: 1 is not an earlier step of this journey (earlier: none)"
    ]
    assert admin_client.post(PREVIEW, {"condition": ""}).json() == {
        "words": "always",
        "problems": [],
    }
    assert (
        admin_client.post(PREVIEW, {"condition": "{nope"})
        .json()["problems"][0]
        .startswith("not valid JSON")
    )
    page = admin_client.get("/admin/journeys/journey/add/").content.decode()
    assert f'data-preview-url="{PREVIEW}"' in page


def test_the_preview_is_for_admin_users_only():
    response = Client().post(PREVIEW, {"condition": "{}"})

    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_history_of_several_types_and_windows_is_one_query_per_chunk():
    recent = conditional_journey(
        {"history": {"event": "payment_finished", "within": "P1D", "op": "=", "count": 0}},
        slug="no-payment-today",
        exit_on=[],
        dedupe="every",
    )
    regular = conditional_journey(
        {"history": {"event": "checkout_started", "within": "P30D", "op": ">=", "count": 2}},
        slug="regulars",
        exit_on=[],
        dedupe="every",
    )
    now = timezone.now()
    store(make_event("p_old", "payment_finished", user="u_1", at=now - timedelta(days=3),
                     payment="p_old"))  # fmt: skip
    store(checkout("c_old", user="u_1", at=now - timedelta(days=20)))
    store(make_event("p_new", "payment_finished", user="u_2", at=now - timedelta(hours=2),
                     payment="p_new"))  # fmt: skip
    triggers = [store(checkout(f"c_{u}", user=u, at=minutes_ago(5))) for u in ("u_1", "u_2")]

    with transaction.atomic():
        journeys = selectors.journeys_all()
        by_slug = {j.slug: j for j in journeys}
        with CaptureQueriesContext(connection) as queries:
            plan = EnrolmentPlan.load(triggers, journeys)
        history = [q for q in queries if "payment_finished" in q["sql"]]
        notes = {
            (slug, e.customer.external_id): plan.enrol(by_slug[slug], e)
            for slug in (recent.slug, regular.slug)
            for e in triggers
        }
        transaction.set_rollback(True)

    assert len(history) == 1, history
    assert notes == {
        ("no-payment-today", "u_1"): "enrolled",  # its payment was 3 days ago
        ("no-payment-today", "u_2"): "condition payment_finished within P1D = 0 false (1)",
        ("regulars", "u_1"): "enrolled",  # 20 days ago and now
        ("regulars", "u_2"): "condition checkout_started within P30D >= 2 false (1)",
    }
