"""Four "hosts" on one machine (issue 14): four network namespaces, each running a messaging
`qcluster` and a `nudge_ticker`, sharing the suite's PostgreSQL and Redis through a forwarder
on the namespaces' bridge, and sending SMS to the fake HTTP provider (100 ms per call), which
records each delivery with its sender's address. Every send goes out exactly once, and more
than one host does the work. The set-up is bench/scaleout.py's, shared with `make bench`."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.db import connection

from bench.provider import sms_journey
from bench.scaleout import NetnsUnavailable, Scaleout
from tests.servers import database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.redis]

HOSTS = 4
SENDS = 800


def test_four_hosts_dispatch_every_send_exactly_once(tmp_path: Path) -> None:
    if connection.vendor != "postgresql" or not os.environ.get("NUDGE_TEST_REDIS_URL"):
        pytest.skip("the hosts share PostgreSQL and Redis: run through make test")
    journey, step = sms_journey()
    redis_url = os.environ["NUDGE_TEST_REDIS_URL"]
    try:
        scale = Scaleout(
            database_url=database_url(connection),
            redis_url=redis_url,
            hosts=HOSTS,
            logs=tmp_path,
            latency_ms=100,
            env={"NUDGE_DISPATCH_TASK_SIZE": "50"},  # small tasks: every cluster gets some of 800
            # this run's (or this xdist worker's) own database, which Scaleout flushes
            redis_db=int(urlsplit(redis_url).path.strip("/") or 0),
        )
        with scale:
            outcome = scale.round(HOSTS, SENDS, journey, step, "scale")
    except NetnsUnavailable as exc:
        pytest.fail(f"cannot run the four hosts: {exc}", pytrace=False)
    assert scale.network.exists() == [], "namespaces, veths or the bridge were left behind"

    assert outcome.statuses == {"sent": SENDS}
    assert (outcome.duplicated, outcome.lost, outcome.stray) == (0, 0, 0)
    assert outcome.replays == 0, "a send reached the provider twice (deduped by its key)"
    assert sum(outcome.by_host.values()) == SENDS
    assert 0 not in outcome.by_host, "a delivery came from no known host"
    busy = [host for host, count in outcome.by_host.items() if count]
    assert len(busy) > 1, f"one host sent everything: {outcome.by_host}"
