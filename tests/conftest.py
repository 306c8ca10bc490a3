"""Suite-wide test set-up lives in config/settings_test.py (no HTTPS redirect, plain static
storage, fast password hashing), so live servers built once per session get it too.

`make test` runs the suite on several pytest-xdist workers (`-n ... --dist loadgroup`). Each
worker has its own test database (pytest-django names it test_nudge_gw0, test_nudge_gw1, ...)
and, set here, its own Redis database; every port a test listens on is a free one. Tests that
share a module-scoped fixture (a server, the wheel's virtualenv) are marked `xdist_group` and
run one after another on one worker."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import pytest

pytest_plugins = ["tests.browser"]

# scripts/services.sh starts Redis with its default 16 databases: 0 for a serial run, and one
# for each worker from 1 up.
REDIS_DATABASES = 16


def pytest_configure(config: pytest.Config) -> None:
    dist = config.getoption("dist", default="no")
    if dist not in ("no", "loadgroup"):
        raise pytest.UsageError(
            f"--dist {dist}: the suite's xdist_group marks need --dist loadgroup "
            "(make test passes it; see tests/conftest.py)"
        )
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    url = os.environ.get("NUDGE_TEST_REDIS_URL")
    if worker and url:
        os.environ["NUDGE_TEST_REDIS_URL"] = worker_redis_url(url, worker)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker under --dist loadgroup, pytest-xdist has named each grouped test
    `nodeid@group` by now, which is how its controller keeps a group on one worker. Some
    pytest versions make that renaming a silent no-op (pytest-xdist issue 1386): the grouped
    tests then fail at once, saying so, rather than run spread over the workers."""
    if not config.getoption("loadgroup", default=False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid.rpartition("]")[2]:
            item.stash[_UNGROUPED] = (
                f"pytest-xdist's loadgroup does not work with pytest {pytest.__version__}: "
                "install the pytest that pyproject.toml names (make install), or run with -n 0"
            )


_UNGROUPED = pytest.StashKey[str]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _UNGROUPED in item.stash:
        pytest.fail(item.stash[_UNGROUPED], pytrace=False)


def worker_redis_url(url: str, worker: str) -> str:
    """`url` on the Redis database of xdist worker `worker` ("gw0" has database 1): the
    workers' clusters share no queue."""
    database = int(worker.removeprefix("gw")) + 1
    if database >= REDIS_DATABASES:
        raise pytest.UsageError(
            f"worker {worker}: Redis has {REDIS_DATABASES} databases, one per worker from 1 up; "
            f"run fewer than {REDIS_DATABASES} workers"
        )
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))
