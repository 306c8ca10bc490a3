"""The project's own templates (top-level templates/) are the ones Django renders."""

from __future__ import annotations

import pytest

from tests.servers import PROJECT

pytestmark = pytest.mark.django_db


def test_the_admin_login_page_says_nudge(client):
    page = client.get("/admin/login/").content.decode()

    assert '<div id="site-name"><a href="/admin/">Nudge</a></div>' in page
    assert "<title>Log in | Nudge</title>" in page
    assert "Django administration" not in page
    assert "Django site admin" not in page


def test_templates_holds_only_templates():
    """templates/ ships inside the package: nothing in it but HTML and text templates."""
    files = [path for path in (PROJECT / "templates").rglob("*") if path.is_file()]

    assert files
    assert {path.suffix for path in files} <= {".html", ".txt"}
