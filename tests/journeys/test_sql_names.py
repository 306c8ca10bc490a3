"""Journeys' SQL (and the shared database helpers') takes its table names and status values
from the models (journeys.sqlnames): no SQL string spells one itself."""

from __future__ import annotations

import ast
import re
import threading
from pathlib import Path

from django.apps import apps

from journeys.models import ScheduledSend
from journeys.services import claiming, dispatch, enrolment, exits

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [
    path
    for folder in ("journeys", "nudge/db")
    for path in sorted((ROOT / folder).rglob("*.py"))
    if "migrations" not in path.parts
]
_STATUSES = "|".join(re.escape(status) for status in ScheduledSend.Status.values)
STATUS_LITERAL = re.compile(rf"""['"](?:{_STATUSES})['"]""")
SQL = re.compile(r"\b(?:SELECT|UPDATE|INSERT|DELETE|FROM|JOIN)\b")


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes (prose, which may name a table or a status)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _parse(path: Path) -> ast.Module:
    """ast.parse in a thread of its own: CPython 3.11's AST constructor checks its recursion
    depth against the calling thread's, and deep in a pytest-xdist worker's stack it can fail
    with "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905, fixed in
    3.12); a new thread starts from an empty stack."""
    trees: list[ast.Module] = []
    thread = threading.Thread(
        target=lambda: trees.append(ast.parse(path.read_text(), filename=str(path)))
    )
    thread.start()
    thread.join()
    assert trees, f"{path} did not parse"
    return trees[0]


def sql_strings() -> list[tuple[str, int, str]]:
    """Every string constant of the scanned modules that reads as SQL (f-strings' parts
    included), with where it is."""
    found = []
    for path in SCANNED:
        tree = _parse(path)
        prose = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in prose
                and SQL.search(node.value)
            ):
                found.append((str(path.relative_to(ROOT)), node.lineno, node.value))
    return found


def test_the_scan_finds_the_engines_statements():
    where = {path for path, _, _ in sql_strings()}
    assert {
        "journeys/services/exits.py",
        "journeys/services/enrolment.py",
        "journeys/services/claiming.py",
        "journeys/services/dispatch.py",
        "journeys/selectors.py",
    } <= where


def test_no_sql_string_spells_a_status_or_a_table_name():
    tables = {model._meta.db_table for model in apps.get_models()}
    names = "|".join(sorted(map(re.escape, tables)))
    table_name = re.compile(rf"\b(?:{names})\b")
    spelled = [
        (path, line, match.group())
        for path, line, text in sql_strings()
        for match in (*STATUS_LITERAL.finditer(text), *table_name.finditer(text))
    ]
    assert spelled == []


def test_the_statements_carry_the_models_names_once_formatted():
    send_table = ScheduledSend._meta.db_table
    for text in (
        exits._CANCEL_ONE_SQL,
        exits._CANCEL_SQL,
        enrolment._CANCEL_IDS_SQL,
        claiming._CLAIM_SQL,
        dispatch._OUTCOMES_SQL,
    ):
        assert send_table in text, text
        assert "{" not in text, text
    assert f"status = '{ScheduledSend.Status.CANCELLED}'" in exits._CANCEL_ONE_SQL
    assert f"status = '{ScheduledSend.Status.PENDING}'" in claiming._CLAIM_SQL
    # kept for the query's own str.format, with the values of each chunk
    assert "{columns}" in dispatch._LOCK_SQL and "{customers}" in dispatch._EXIT_EVENTS_SQL
