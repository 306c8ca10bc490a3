"""The provider scenario of `make bench` (issue 13): dispatch through the real generic-HTTP
SMS backend (journeys.channels.sms.HttpBackend: signed JSON, pooled keep-alive connections)
to a fake provider in a process of its own on loopback (bench/fake_provider.py), which answers
after a set latency, 100 ms by default.

One run, in this order, at the large level's pending background:

1. a burst of N SMS due at once, while payments for customers of that burst arrive through
   Django's full request handling in this process (one every 20 ms): the dispatch rate, and
   how long each payment took;
2. a steady stream (--steady-rate sends/s, 1,000 by default) through the same provider: the
   lateness a customer sees;
3. an outage: a steady stream of --outage-rate sends/s, with the provider answering 503 to
   everything for --outage-seconds in the middle, then back: nothing may be lost or sent
   twice, and the backlog must drain at full rate.

Every delivery the fake provider accepts (an idempotent replay is not a delivery) is one line
of its calls file; the run proves that each sent send was delivered exactly once, and that no
cancelled or unsent send was delivered. vs_null is the burst rate over the null-provider
burst rate of the same run (same N, same background).
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from bench.run import (
    PY,
    BenchFailure,
    Processes,
    RssSampler,
    _event,
    cpu_seconds,
    db_now,
    dispatch_steady,
    fmt,
    free_port,
    log,
    max_send_id,
    postmaster_pid,
    signed_headers,
    sql,
    start_engine,
    wait_until_decided,
)


@dataclass
class Fake:
    """The fake provider's process, and how to steer and read it."""

    url: str
    calls: Path
    session: requests.Session

    def control(self, **changes: Any) -> None:
        self.session.post(f"{self.url}/_control", json=changes, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self.session.get(f"{self.url}/_stats", timeout=5)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def reset(self) -> None:
        self.session.post(f"{self.url}/_stats/reset", timeout=5).raise_for_status()

    def deliveries(self) -> Counter[int]:
        return Counter(int(line) for line in self.deliveries_raw() if line.isdigit())

    def deliveries_raw(self) -> list[str]:
        """Every delivery's key, as the fake wrote it (a send id, or a Twilio To number)."""
        self.stats()  # flushes the calls file
        return self.calls.read_text().split()


def fake_start(
    procs: Processes,
    work: Path,
    latency_ms: float,
    *,
    host: str = "127.0.0.1",
    name: str = "fake_provider",
    record_peer: bool = False,
    smtp_port: int | None = None,
) -> Fake:
    port = free_port()
    calls = work / ("provider.calls" if name == "fake_provider" else f"{name}.calls")
    command = [PY, "-m", "bench.fake_provider", "--host", host, "--port", str(port)]
    command += ["--calls-file", str(calls), "--latency-ms", str(latency_ms)]
    if record_peer:
        command += ["--record-peer"]
    if smtp_port is not None:
        command += ["--smtp-port", str(smtp_port)]
    process = procs.start(name, command)
    fake = Fake(url=f"http://{host}:{port}", calls=calls, session=requests.Session())
    deadline = time.monotonic() + 30
    while True:
        try:
            fake.stats()
            return fake
        except requests.RequestException:
            if process.poll() is not None or time.monotonic() > deadline:
                procs.check_alive()
                raise BenchFailure("the fake provider did not start in 30 s") from None
            time.sleep(0.1)


def sms_journey(channel: str = "sms") -> tuple[Any, Any]:
    from journeys import services
    from journeys.selectors import known_event_types
    from journeys.specs import journey_spec_parse

    template: dict[str, Any] = {"body": "Hi {{ customer.first_name }}, your cart is waiting."}
    if channel == "email":
        template["subject"] = "Your cart, {{ customer.first_name }}"
    spec = {
        "slug": f"bench-{channel}",
        "name": f"Bench {channel}",
        "trigger": "checkout_started",
        "exit_on": ["payment_finished"],
        "dedupe": "first",
        "reentry": "every",
        "max_lateness": "PT2H",
        "steps": [
            {
                "delay": "PT10M",
                "channel": channel,
                "template": template,
            }
        ],
    }
    parsed, errors = journey_spec_parse(spec, known_types=known_event_types())
    if errors or parsed is None:
        raise BenchFailure(f"bench {channel} journey refused: {errors}")
    journey, _ = services.journey_save_spec(spec=parsed)
    return journey, journey.steps.get(position=0)


class Payments(threading.Thread):
    """payment_finished for random customers of a burst, one every `every` seconds, through
    Django's full request handling (middleware, signature, view, commit) in this process:
    the server time of each, in ms."""

    def __init__(self, prefix: str, count: int, tag: str, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.prefix, self.count, self.tag, self.every = prefix, count, tag, every
        self.times: list[float] = []
        self.samples: list[tuple[str, datetime, float]] = []  # (customer, when, ms)
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from django.db import connection
        from django.test import Client

        client = Client()
        rng = secrets.SystemRandom()
        try:
            for i in range(10**9):
                if self.stopped.is_set():
                    return
                user = f"{self.prefix}{rng.randint(1, self.count)}"
                body = json.dumps(
                    _event(f"{self.tag}-pay{i}", user, 2, datetime.now().astimezone())
                ).encode()
                headers = signed_headers(body)
                when = datetime.now(tz=UTC)
                started = time.perf_counter()
                response = client.post(
                    "/api/events/",
                    data=body,
                    content_type="application/json",
                    secure=True,
                    HTTP_HOST="127.0.0.1",
                    headers=headers,
                )
                took = (time.perf_counter() - started) * 1000
                if response.status_code != 202:
                    raise BenchFailure(f"payment refused: {response.status_code}")
                if i >= 3:  # the first requests load the URLs and views
                    self.times.append(took)
                    self.samples.append((user, when, took))
                self.stopped.wait(self.every)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            connection.close()

    def stop(self) -> list[float]:
        self.stopped.set()
        self.join()
        if self.error is not None:
            raise BenchFailure(f"payments thread failed: {self.error!r}")
        return self.times


def outcomes(first: int, last: int) -> dict[str, Any]:
    rows = sql(
        "SELECT status, count(*) FROM journeys_scheduledsend WHERE id BETWEEN %s AND %s "
        "GROUP BY status",
        [first, last],
    )
    return dict(rows)


def sent_timing(first: int, last: int) -> dict[str, float]:
    """Over the sent sends of ids first..last: from the first due moment to the last send,
    and the lateness percentiles."""
    row = sql(
        """
        SELECT count(*), min(due_at), max(sent_at),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - due_at)),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - due_at)),
               max(extract(epoch FROM sent_at - due_at))
          FROM journeys_scheduledsend WHERE id BETWEEN %s AND %s AND status = 'sent'
        """,
        [first, last],
    )[0]
    sent, first_due, last_sent, p50, p99, worst = row
    return {
        "sent": sent,
        "elapsed": (last_sent - first_due).total_seconds(),
        "p50": float(p50),
        "p99": float(p99),
        "max": float(worst),
    }


def burst_with_payments(
    n: int, journey: Any, step: Any, tag: str, procs: Processes, app_roots: list[int]
) -> dict[str, Any]:
    from bench import data

    lead = 3.0 + 2 * n / 5_000
    first = max_send_id() + 1
    prefix = f"{tag}-b"
    due = db_now() + timedelta(seconds=lead)
    data.sends_create(
        prefix=prefix, count=n, journey_id=journey.pk, step_id=step.pk, due=due, channel="sms"
    )
    last = max_send_id()
    payments = Payments(prefix, n, tag)
    # the payments start as the sends fall due (a little before: the first ones warm up)
    time.sleep(max(0.0, (due - db_now()).total_seconds() - 0.3))
    app_cpu, db_cpu = cpu_seconds(app_roots), cpu_seconds([postmaster_pid()])
    payments.start()
    try:
        wait_until_decided(first, last, timeout=lead + 600, procs=procs)
    finally:
        times = payments.stop()
    result: dict[str, Any] = sent_timing(first, last)
    # CPU per send of the cluster and ticker, and of PostgreSQL (the payments' share too)
    result["app_cpu_ms"] = (cpu_seconds(app_roots) - app_cpu) / n * 1000
    result["db_cpu_ms"] = (cpu_seconds([postmaster_pid()]) - db_cpu) / n * 1000
    result["rate"] = result["sent"] / result["elapsed"]
    result["statuses"] = outcomes(first, last)
    result["payments"] = times
    result["payments_in_flight"], result["payments_free"] = payments_split(payments.samples)
    return result


def payments_split(samples: list[tuple[str, datetime, float]]) -> tuple[list[float], list[float]]:
    """The payments' times, split: those that came while a provider call to their customer
    was under way (they wait for it, by design: services.inflight), and the others. A call's
    span is its attempt_log entry: start and duration."""
    rows = sql(
        "SELECT c.external_id, s.attempt_log FROM journeys_scheduledsend s "
        "JOIN marketing_customer c ON c.id = s.customer_id WHERE c.external_id = ANY(%s)",
        [sorted({user for user, _, _ in samples})],
    )
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for user, log_entries in rows:
        entries = json.loads(log_entries) if isinstance(log_entries, str) else log_entries
        for entry in entries or []:
            start = datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))
            spans.setdefault(user, []).append((start, start + timedelta(milliseconds=entry["ms"])))
    in_flight: list[float] = []
    free: list[float] = []
    for user, when, took in samples:
        busy = any(a <= when <= b for a, b in spans.get(user, ()))
        (in_flight if busy else free).append(took)
    return in_flight, free


def outage_run(
    rate: float,
    outage_seconds: float,
    journey: Any,
    step: Any,
    tag: str,
    procs: Processes,
    fake: Fake,
) -> dict[str, Any]:
    """A steady stream with the provider down for `outage_seconds` in its middle."""
    from bench import data

    before = after = max(10.0, outage_seconds / 2)
    n = int(rate * (before + outage_seconds + after))
    first = max_send_id() + 1
    start = db_now() + timedelta(seconds=2)
    data.sends_create(
        prefix=f"{tag}-o",
        count=n,
        journey_id=journey.pk,
        step_id=step.pk,
        due=start,
        spacing_s=1 / rate,
        channel="sms",
    )
    last = max_send_id()
    time.sleep(max(0.0, (start - db_now()).total_seconds() + before))
    down_at = db_now()
    fake.control(down=True)
    log(f"  provider down for {outage_seconds:.0f} s")
    time.sleep(outage_seconds)
    fake.control(down=False)
    up_at = db_now()
    log("  provider back")
    wait_until_decided(first, last, timeout=outage_seconds + 900, procs=procs)
    # the backlog: sends due before the provider came back; caught up when the last is sent
    (backlog, drained, caught) = sql(
        """
        SELECT count(*), max(sent_at), count(*) FILTER (WHERE status = 'sent')
          FROM journeys_scheduledsend WHERE id BETWEEN %s AND %s AND due_at < %s
        """,
        [first, last, up_at],
    )[0]
    # the best second after the outage: the rate it catches up at
    (peak,) = sql(
        """
        SELECT coalesce(max(c), 0) FROM (
            SELECT count(*) AS c FROM journeys_scheduledsend
             WHERE id BETWEEN %s AND %s AND status = 'sent' AND sent_at >= %s
             GROUP BY date_trunc('second', sent_at)) s
        """,
        [first, last, up_at],
    )[0]
    attempts = sql(
        "SELECT max(attempts), avg(attempts) FROM journeys_scheduledsend "
        "WHERE id BETWEEN %s AND %s",
        [first, last],
    )[0]
    return {
        "n": n,
        "first": first,
        "last": last,
        "statuses": outcomes(first, last),
        "backlog": backlog,
        "caught_up_s": (drained - up_at).total_seconds() if drained else float("nan"),
        "catch_up_peak_per_s": float(peak),
        "down_s": (up_at - down_at).total_seconds(),
        "max_attempts": attempts[0],
        "mean_attempts": float(attempts[1]),
        "backlog_sent": caught,
    }


def exactly_once(fake: Fake, first: int) -> dict[str, int]:
    """Each sent SMS of this scenario (ids from `first`) delivered exactly once; nothing
    else delivered. Returns the counts; raises on loss, never on duplicates (counted)."""
    delivered = fake.deliveries()
    rows = sql(
        "SELECT id, status FROM journeys_scheduledsend WHERE id >= %s AND channel = 'sms'",
        [first],
    )
    status = dict(rows)
    sent = {pk for pk, st in status.items() if st == "sent"}
    duplicated = sum(1 for count in delivered.values() if count > 1)
    not_delivered = sent - set(delivered)
    delivered_unsent = {pk for pk in delivered if status.get(pk) != "sent"}
    if not_delivered or delivered_unsent:
        raise BenchFailure(
            f"{len(not_delivered)} sends marked sent the provider never accepted, "
            f"{len(delivered_unsent)} deliveries of sends not marked sent: "
            f"{sorted(delivered_unsent)[:10]}"
        )
    return {"sent": len(sent), "deliveries": sum(delivered.values()), "duplicated": duplicated}


def run(args: argparse.Namespace, null_rate: float, tag: str, work: Path, logs: Path) -> dict:
    journey, step = sms_journey()
    procs = Processes(logs)
    figures: dict[str, Any] = {"latency_ms": args.provider_latency_ms}
    try:
        fake = fake_start(procs, work, args.provider_latency_ms)
        env = {
            "NUDGE_SMS_CHANNEL": "journeys.channels.sms.SmsChannel",
            "NUDGE_SMS_URL": f"{fake.url}/messages",
            "NUDGE_SMS_HTTP_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        }
        roots = start_engine(procs, **env)
        sampler = RssSampler(roots)
        sampler.start()
        first = max_send_id() + 1
        try:
            log(f"provider: burst of {args.provider_sends} SMS, {args.provider_latency_ms:.0f} ms")
            fake.reset()
            cpu_before, requests_before = fake.stats()["cpu_s"], fake.stats()["requests"]
            burst = burst_with_payments(
                args.provider_sends, journey, step, f"{tag}-pb", procs, roots
            )
            stats = fake.stats()
            figures["inflight_max"] = stats["inflight_max"]
            handled = stats["requests"] - requests_before
            figures["fake_cpu_ms"] = (stats["cpu_s"] - cpu_before) / max(1, handled) * 1000
            figures["burst"] = burst
            log(
                f"  {burst['rate']:.0f} sends/s ({burst['statuses']}), "
                f"{stats['inflight_max']} in flight at most, payments p99 "
                f"{_p99(burst['payments']):.1f} ms over {len(burst['payments'])}"
            )
            log(f"provider: steady stream {args.steady_rate:.0f}/s for {args.steady_seconds} s")
            figures["steady"] = dispatch_steady(
                args.steady_rate,
                args.steady_seconds,
                journey,
                step,
                f"{tag}-ps",
                procs,
                channel="sms",
            )
            log(f"  lateness p99 {figures['steady']['p99']:.3f} s")
            log(
                f"provider: outage of {args.provider_outage_seconds:.0f} s in a stream of "
                f"{args.outage_rate:.0f}/s"
            )
            figures["outage"] = outage_run(
                args.outage_rate,
                args.provider_outage_seconds,
                journey,
                step,
                f"{tag}-po",
                procs,
                fake,
            )
            log(f"  {figures['outage']}")
        finally:
            sampler.stop()
        figures["rss_mb"] = max(sampler.peak.values()) / 1024
        figures["checked"] = exactly_once(fake, first)
        figures["replays"] = fake.stats()["replays"]
    finally:
        procs.stop()
    figures["vs_null"] = figures["burst"]["rate"] / null_rate
    outage = figures["outage"]
    figures["lost"] = outage["n"] - outage["statuses"].get("sent", 0)
    return figures


PATHS = ("twilio", "smtp")


def paths_run(n: int, latency_ms: float, tag: str, work: Path, logs: Path) -> dict[str, Any]:
    """A burst of `n` messages due at once through each of the other real code paths to the
    same fake provider: Twilio's Messages API (the `twilio` package, one pooled session per
    worker process) and SMTP (Django's backend, NUDGE_EMAIL_MAX_CONNECTIONS per process).
    Each path gets a fresh cluster and ticker configured for it; each message must reach the
    provider exactly once. Returns per path: rate, outcome, deliveries and duplicates."""
    from bench import data

    procs = Processes(logs)
    smtp_port = free_port()
    results: dict[str, Any] = {}
    try:
        fake = fake_start(procs, work, latency_ms, name="fake_paths", smtp_port=smtp_port)
        sid = "AC" + secrets.token_hex(16)
        envs = {
            "twilio": {
                "NUDGE_SMS_CHANNEL": "journeys.channels.sms.SmsChannel",
                "NUDGE_SMS_URL": f"twilio://{sid}:bench-token@{fake.url.split('//')[1]}"
                "?scheme=http&from=%2B15005550006",
            },
            "smtp": {
                "NUDGE_EMAIL_CHANNEL": "journeys.channels.email.EmailChannel",
                "EMAIL_URL": f"smtp://127.0.0.1:{smtp_port}",
            },
        }
        for path in PATHS:
            channel = "sms" if path == "twilio" else "email"
            journey, step = sms_journey(channel)
            engine = Processes(logs)
            try:
                start_engine(engine, **envs[path])
                first = max_send_id() + 1
                due = db_now() + timedelta(seconds=3.0 + 2 * n / 5_000)
                data.sends_create(
                    prefix=f"{tag}-{path}-", count=n, journey_id=journey.pk,
                    step_id=step.pk, due=due, channel=channel,
                )  # fmt: skip
                last = max_send_id()
                fake.reset()
                log(f"provider paths: burst of {n} through {path}, {latency_ms:.0f} ms")
                wait_until_decided(first, last, timeout=600, procs=engine)
            finally:
                engine.stop()
            timing = sent_timing(first, last)
            stats = fake.stats()
            results[path] = {
                "rate": timing["sent"] / timing["elapsed"] if timing["elapsed"] else 0.0,
                "statuses": outcomes(first, last),
                "inflight_max": stats["inflight_max"],
                **_delivered_once(fake, path, first, last),
            }
            log(f"  {results[path]}")
    finally:
        procs.stop()
    return results


def _delivered_once(fake: Fake, path: str, first: int, last: int) -> dict[str, int]:
    """The fake knows a Twilio message by its To number (each bench customer has its own)
    and an email by the send id in its Message-ID: map both back to send ids."""
    delivered = fake.deliveries_raw()
    if path == "twilio":
        rows = sql(
            "SELECT c.phone, s.id FROM journeys_scheduledsend s JOIN marketing_customer c "
            "ON c.id = s.customer_id WHERE s.id BETWEEN %s AND %s",
            [first, last],
        )
        by_key = {str(phone): pk for phone, pk in rows}
        counts = Counter(by_key[key] for key in delivered if key in by_key)
    else:
        counts = Counter(int(key) for key in delivered if key.isdigit())
        counts = Counter({pk: c for pk, c in counts.items() if first <= pk <= last})
    status = dict(
        sql(
            "SELECT id, status FROM journeys_scheduledsend WHERE id BETWEEN %s AND %s",
            [first, last],
        )
    )
    sent = {pk for pk, st in status.items() if st == "sent"}
    return {
        "sent": len(sent),
        "lost": len(sent - set(counts)),
        "delivered_unsent": len(set(counts) - sent),
        "duplicated": sum(1 for c in counts.values() if c > 1),
    }


def paths_line(f: dict[str, Any] | None) -> str:
    if not f:
        return (
            "BENCH provider_paths latency_ms=nan twilio_sends_per_s=nan smtp_sends_per_s=nan "
            "lost=nan duplicated=nan"
        )
    lost = sum(f[p]["lost"] + f[p]["delivered_unsent"] for p in PATHS)
    lost += sum(f[p]["statuses"].get("failed", 0) for p in PATHS)
    return (
        f"BENCH provider_paths latency_ms={fmt(f['latency_ms'])} "
        f"twilio_sends_per_s={fmt(f['twilio']['rate'])} smtp_sends_per_s={fmt(f['smtp']['rate'])} "
        f"lost={lost} duplicated={sum(f[p]['duplicated'] for p in PATHS)}"
    )


def _spread(values: list[float]) -> str:
    if not values:
        return "0 / nan / nan / nan"
    return (
        f"{len(values)} / {fmt(statistics.median(values))} / {fmt(_p99(values))} / "
        f"{fmt(max(values))}"
    )


def _p99(values: list[float]) -> float:
    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=100)[98]


def table_rows(f: dict[str, Any]) -> list[tuple[str, str]]:
    burst, steady, outage = f["burst"], f["steady"], f["outage"]
    pays = burst["payments"]
    return [
        ("provider latency (ms)", fmt(f["latency_ms"])),
        ("dispatch rate, burst (sends/s)", fmt(burst["rate"])),
        ("  / null-provider burst of the same run", fmt(f["vs_null"])),
        ("  burst outcome", ", ".join(f"{k} {v}" for k, v in sorted(burst["statuses"].items()))),
        ("provider calls in flight at most", str(f["inflight_max"])),
        (
            "CPU per send: cluster + ticker / PostgreSQL (ms)",
            f"{fmt(burst['app_cpu_ms'])} / {fmt(burst['db_cpu_ms'])}",
        ),
        ("fake provider CPU per request (ms, its own process)", fmt(f["fake_cpu_ms"])),
        ("payments during the burst: n / p50 / p99 / max (ms)", _spread(pays)),
        (
            "  of those, while no call to their customer was under way",
            _spread(burst["payments_free"]),
        ),
        (
            "  of those, while a call to their customer was under way",
            _spread(burst["payments_in_flight"]),
        ),
        (
            "steady stream lateness p50 / p99 / max (s)",
            " / ".join(fmt(steady[k]) for k in ("p50", "p99", "max")),
        ),
        ("outage: provider down (s)", fmt(outage["down_s"])),
        (
            "outage: sends / outcome",
            f"{outage['n']} / "
            + ", ".join(f"{k} {v}" for k, v in sorted(outage["statuses"].items())),
        ),
        ("outage: backlog drained after the provider came back (s)", fmt(outage["caught_up_s"])),
        ("outage: best second after it came back (sends/s)", fmt(outage["catch_up_peak_per_s"])),
        (
            "outage: provider calls per send, max / mean",
            f"{outage['max_attempts']} / {fmt(outage['mean_attempts'])}",
        ),
        (
            "deliveries / sends sent / duplicated / idempotent replays",
            f"{f['checked']['deliveries']} / {f['checked']['sent']} / "
            f"{f['checked']['duplicated']} / {f['replays']}",
        ),
        ("peak RSS of any cluster/ticker process (MB)", fmt(f["rss_mb"])),
    ]


def bench_line(f: dict[str, Any] | None) -> str:
    if f is None:
        return (
            "BENCH provider latency_ms=nan sends_per_s=nan vs_null=nan p99_s=nan "
            "payment_p99_ms=nan inflight_max=nan lost=nan duplicated=nan"
        )
    return (
        f"BENCH provider latency_ms={fmt(f['latency_ms'])} "
        f"sends_per_s={fmt(f['burst']['rate'])} vs_null={fmt(f['vs_null'])} "
        f"p99_s={fmt(f['steady']['p99'])} payment_p99_ms={fmt(_p99(f['burst']['payments']))} "
        f"inflight_max={f['inflight_max']} lost={f['lost']} "
        f"duplicated={f['checked']['duplicated']}"
    )
