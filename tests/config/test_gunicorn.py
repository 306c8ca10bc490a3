"""The web process's gunicorn settings (config/gunicorn.py)."""

from __future__ import annotations

import gc
import runpy
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[2] / "config" / "gunicorn.py"


def test_one_worker_per_core_unless_told(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert runpy.run_path(str(CONFIG))["workers"] == 3


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()


def test_a_worker_freezes_what_django_loaded_so_full_collections_skip_it(unfrozen):
    post_worker_init = runpy.run_path(str(CONFIG))["post_worker_init"]
    assert gc.get_freeze_count() == 0

    post_worker_init(worker=None)

    # the views were imported, and every object alive then is out of the collector's walk
    assert gc.get_freeze_count() > 10_000
