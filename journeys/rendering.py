"""Message templates: Django templates with `customer`, `cart`, `discount`, `journey`.

Messages are plain text (SMS, text email): nothing is HTML-escaped, so a name like
"Tom & Jerry" or a checkout URL with `&` in its query reaches the customer as written.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.template import Context, Engine, Template, TemplateSyntaxError
from django.template.base import VariableNode

CONTEXT_NAMES = frozenset({"customer", "cart", "discount", "journey"})

_engine = Engine(autoescape=False, libraries={}, builtins=["django.template.defaultfilters"])


@lru_cache(maxsize=512)
def compile_template(source: str) -> Template:
    return _engine.from_string(source)


def template_problems(source: str, *, has_discount: bool) -> list[str]:
    """What is wrong with a template, in words for the marketer; empty when it is fine."""
    try:
        template = compile_template(source)
    except TemplateSyntaxError as exc:
        return [f"template syntax error: {exc}"]
    problems = []
    for node in template.nodelist.get_nodes_by_type(VariableNode):
        var = getattr(getattr(node, "filter_expression", None), "var", None)
        lookups = getattr(var, "lookups", None)
        if not lookups:
            continue  # a literal
        root = lookups[0]
        if root not in CONTEXT_NAMES:
            names = ", ".join(sorted(CONTEXT_NAMES))
            problems.append(f"unknown variable {{{{ {'.'.join(lookups)} }}}}: use {names}")
        elif root == "discount" and not has_discount:
            problems.append("uses {{ discount }} but the step has no discount rule")
    return problems


def render(source: str, context: dict[str, Any]) -> str:
    if "{" not in source:  # plain text: nothing to render (a common subject line)
        return source.strip()
    return compile_template(source).render(Context(context, autoescape=False)).strip()
