import json
from datetime import UTC, datetime
from decimal import Decimal
from itertools import product
from typing import Any

import pytest
from django.template import Context
from django.utils.safestring import mark_safe

from journeys.rendering import _plan, _render_planned, compile_template, render
from journeys.services import DEMO_JOURNEYS


def django_render(source: str, context: dict[str, Any]) -> str:
    return compile_template(source).render(Context(context, autoescape=False)).strip()


def test_messages_are_plain_text_nothing_is_html_escaped():
    context = {
        "customer": {"first_name": "Tom & <Jerry>"},
        "cart": {"checkout_url": "https://shop.example/c?id=7&step=pay"},
    }
    planned = "Hi {{ customer.first_name }}: {{ cart.checkout_url }}"
    tagged = "{% if cart %}Hi {{ customer.first_name }}: {{ cart.checkout_url }}{% endif %}"
    expected = "Hi Tom & <Jerry>: https://shop.example/c?id=7&step=pay"
    assert _plan(planned) is not None and _plan(tagged) is None
    assert render(planned, context) == expected
    assert render(tagged, context) == expected


def test_the_demo_journeys_templates_take_the_fast_path():
    journeys = json.loads(DEMO_JOURNEYS.read_text())["journeys"]
    templates = [step["template"] for journey in journeys for step in journey["steps"]]
    sources = [template[name] for template in templates for name in ("subject", "body")]
    templated = [source for source in sources if source and "{" in source]
    assert len(templated) >= 3
    assert all(_plan(source) is not None for source in templated)


TEMPLATES = [
    "Hi {{ customer.first_name }},",
    "Hi {{ customer.first_name|default:'there' }}!",
    "{{ customer.first_name|upper }} {{ customer.first_name|title|truncatechars:4 }}",
    "{{ cart.total }} {{ cart.currency }} {{ cart.total|floatformat:1 }}",
    "{{ discount.code }}: {{ discount.percent_off }}% until {{ discount.expires_at }}",
    "{{ discount.expires_at|date:'Y-m-d H:i' }} / {{ discount.percent_off|add:5 }}",
    "{{ cart.items|length }} items: {{ cart.items|join:', ' }}",
    "{{ customer.nickname }}|{{ customer.nickname|default:'x' }}|{{ nothing.at.all }}",
    "{{ cart.checkout_url|urlencode }} {{ customer.first_name|escape }} {{ customer.email }}",
    "{{ customer.first_name|title|escape }} {{ customer.first_name|upper|escape }}",
    "{{ customer.first_name|default_if_none:'?' }} {{ customer.first_name|yesno:'a,b,c' }}",
    "{{ customer.first_name.0 }} {{ cart.items.1 }} {{ journey.name|cut:' ' }}",
    "{{ journey.name|cut:' '|slice:':4' }} {{ customer.first_name|default:journey.slug }}",
    "{% if discount %}{{ discount.code }}{% else %}none{% endif %} {{ customer.first_name }}",
]

CUSTOMERS = [
    {"first_name": "Ana", "email": "ana@example.com"},
    {"first_name": "Tom & <Jerry>", "email": "t@example.com"},
    {"first_name": "", "email": ""},
    {"first_name": None, "email": "n@example.com"},
    {"first_name": mark_safe("<b>safe</b>"), "email": "s@example.com"},
    {"first_name": "Zoë 🎉", "email": "z@example.com", "nickname": "Z"},
]
CARTS = [
    None,
    {
        "total": Decimal("1234.50"),
        "currency": "EUR",
        "checkout_url": "https://shop.example/c?id=7&step=pay",
        "items": ["shoes", "hat"],
    },
    {"total": Decimal("0.10"), "currency": "USD", "checkout_url": "", "items": []},
]
DISCOUNTS = [
    None,
    {"code": "WELCOME", "percent_off": 10, "expires_at": datetime(2026, 12, 5, 18, 30, tzinfo=UTC)},
    {"code": "X", "percent_off": None, "expires_at": None},
]


@pytest.mark.parametrize("source", TEMPLATES)
def test_the_fast_path_renders_exactly_what_django_renders(source):
    plan = _plan(source)
    assert (plan is None) == ("{%" in source or "default:journey" in source)
    fast = 0
    for customer, cart, discount in product(CUSTOMERS, CARTS, DISCOUNTS):
        context = {
            "customer": customer,
            "cart": cart,
            "discount": discount,
            "journey": {"slug": "welcome", "name": "Welcome mail"},
        }
        assert render(source, context) == django_render(source, context), (source, context)
        fast += plan is not None and _render_planned(plan, context) is not None
    # the plan itself rendered (not only Django's fallback), except where a lookup never hits
    # a dict key (an index, a missing name): Django resolves those
    assert fast or plan is None or "nothing" in source or ".0" in source
