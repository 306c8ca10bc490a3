"""Message templates: Django templates with `customer`, `cart`, `discount`, `journey`.

Messages are plain text (SMS, text email): nothing is HTML-escaped, so a name like
"Tom & Jerry" or a checkout URL with `&` in its query reaches the customer as written.

Dispatch renders two templates for every send, and Django's template engine costs more per
render than the rest of a send's Python. Most message templates are text and variables with
constant-argument filters (`{{ customer.first_name|default:'there' }}`): those are rendered
by a plan made once per template, which does what Django's VariableNode does, step for step,
on the plain dicts of the message context. Anything else (tags, a lookup that is not a key
of a dict, a callable) is rendered by Django itself. tests/journeys/test_rendering.py holds
the two to the same output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.template import Context, Engine, Template, TemplateSyntaxError
from django.template.base import TextNode, Variable, VariableNode
from django.utils.formats import localize
from django.utils.safestring import SafeData, mark_safe
from django.utils.timezone import template_localtime  # type: ignore[attr-defined]  # not in the stubs

# unsubscribe_url: emails only (an SMS renders it empty)
CONTEXT_NAMES = frozenset({"customer", "cart", "discount", "journey", "unsubscribe_url"})

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
    plan = _plan(source)
    if plan is not None:
        text = _render_planned(plan, context)
        if text is not None:
            return text.strip()
    return compile_template(source).render(Context(context, autoescape=False)).strip()


# C0 controls (CR and LF among them), DEL and the C1 controls, plus Unicode's line and
# paragraph separators and NEL, which some mail software also reads as line breaks.
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_WHITESPACE_RUN = re.compile(r"\s+")


def header_safe(text: str) -> str:
    """One line for an email header: each control character (CR, LF, tab, NUL...) becomes a
    space, and runs of whitespace one space. A customer's name with "\r\nBcc: ..." in it
    cannot break the subject into headers of its own."""
    return _WHITESPACE_RUN.sub(" ", _HEADER_UNSAFE.sub(" ", text)).strip()


def render_subject(source: str, context: dict[str, Any]) -> str:
    """An email subject: the template rendered as any message is, then made header-safe
    (the values in it, such as the customer's first name, come from the shop's events)."""
    return header_safe(render(source, context))


class _CannotPlan(Exception):
    pass


@dataclass(frozen=True)
class _Variable:
    """`{{ a.b.c|f:'x'|g }}`: the keys to look up, then each filter with its constant args."""

    lookups: tuple[str, ...]
    filters: tuple[tuple[Any, tuple[Any, ...]], ...]


@lru_cache(maxsize=512)
def _plan(source: str) -> tuple[str | _Variable, ...] | None:
    """The template as text and variables, or None when it holds anything else."""
    try:
        return tuple(_plan_node(node) for node in compile_template(source).nodelist)
    except (_CannotPlan, TemplateSyntaxError):
        return None


def _plan_node(node: Any) -> str | _Variable:
    if type(node) is TextNode:
        return str(node.s)
    if type(node) is not VariableNode:
        raise _CannotPlan
    expression = node.filter_expression
    var = expression.var
    if type(var) is not Variable or not var.lookups or var.translate:
        raise _CannotPlan  # a literal, or {{ _("...") }}
    filters = []
    for func, args in expression.filters:
        filters.append((func, tuple(_constant(is_variable, arg) for is_variable, arg in args)))
    return _Variable(lookups=tuple(var.lookups), filters=tuple(filters))


def _constant(is_variable: bool, arg: Any) -> Any:
    """A filter's argument as FilterExpression.resolve passes it: a quoted string marked
    safe; a number (a Variable that is a literal) as its value."""
    if not is_variable:
        return mark_safe(arg)  # noqa: S308 (as Django does; messages are never HTML)
    if type(arg) is Variable and arg.lookups is None and not arg.translate:
        return arg.literal
    raise _CannotPlan  # an argument that is itself a variable


_MISSING = object()


def _render_planned(plan: tuple[str | _Variable, ...], context: dict[str, Any]) -> str | None:
    """The rendered text, or None if a variable needs Django's own resolution."""
    parts = []
    for part in plan:
        if type(part) is str:
            parts.append(part)
            continue
        assert isinstance(part, _Variable)
        value = _resolve(part, context)
        if value is _MISSING:
            return None
        parts.append(value)
    return "".join(parts)


def _resolve(variable: _Variable, context: dict[str, Any]) -> Any:
    """What VariableNode.render gives for this variable (autoescape off), or _MISSING when
    a lookup is not simply a key of a dict (Django then decides: attribute, index, invalid)."""
    value: Any = context
    for key in variable.lookups:
        if type(value) is not dict or key not in value:
            return _MISSING
        value = value[key]
    if callable(value):
        return _MISSING
    try:
        # FilterExpression.resolve, with the Context's defaults (use_tz None, autoescape off)
        for func, args in variable.filters:
            if getattr(func, "expects_localtime", False):
                value = template_localtime(value, None)
            if getattr(func, "needs_autoescape", False):
                new_value = func(value, *args, autoescape=False)
            else:
                new_value = func(value, *args)
            if getattr(func, "is_safe", False) and isinstance(value, SafeData):
                value = mark_safe(new_value)  # noqa: S308 (as FilterExpression.resolve)
            else:
                value = new_value
    except UnicodeDecodeError:
        return ""
    # render_value_in_context, autoescape off
    return str(localize(template_localtime(value, None), use_l10n=None))
