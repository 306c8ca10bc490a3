"""`manage.py sends_retry --failed --since 2h [--until …] [--journey SLUG] [--dry-run]`: an
operator's re-drive of failed sends (journeys.services.redrive)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from journeys.durations import parse_iso_duration
from journeys.services.redrive import RedriveResult, scheduled_sends_redrive
from marketing.services.canonical import iso_utc

_SHORT_DURATION = re.compile(r"(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>s|m|min|h|d|w)", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
MOMENT_HELP = (
    "an ISO 8601 time (2026-12-01T00:00:00Z; without an offset, in TIME_ZONE), a date "
    "(2026-12-01, its midnight), or a duration before now (30m, 2h, 1d, 1w, or PT2H, P1D)"
)


def parse_moment(value: str, *, option: str, now: datetime) -> datetime:
    """A --since/--until value as an aware datetime; CommandError naming the option."""
    text = value.strip()
    if match := _SHORT_DURATION.fullmatch(text):
        unit = match["unit"].lower()
        return now - timedelta(seconds=float(match["amount"]) * _UNIT_SECONDS[unit])
    if text.upper().startswith("P"):
        try:
            return now - parse_iso_duration(text)
        except ValueError:
            pass
    try:
        moment = parse_datetime(text)
        if moment is None and (day := parse_date(text)) is not None:
            moment = datetime(day.year, day.month, day.day)
    except ValueError:  # well formed but not a real time (2026-02-30)
        moment = None
    if moment is None:
        raise CommandError(f"{option} {value!r} is not {MOMENT_HELP}")
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


class Command(BaseCommand):
    help = (
        "Re-drive failed sends: put them back to pending, due now, with their attempts "
        "spent again; dispatch re-checks each one (exit, consent, journey on) as usual. "
        "A send whose customer has a newer send of the same step (pending, in flight or "
        "sent) is left failed and counted. --failed is required: failed sends are the only "
        "ones it re-drives for now."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--failed",
            action="store_true",
            help="select the failed sends (required: the only selection for now)",
        )
        parser.add_argument(
            "--since", required=True, help=f"sends that failed at or after this: {MOMENT_HELP}"
        )
        parser.add_argument("--until", help="and before this (same forms as --since)")
        parser.add_argument("--journey", metavar="SLUG", help="only this journey's sends")
        parser.add_argument(
            "--dry-run", action="store_true", help="say what would be re-queued; change nothing"
        )

    def handle(
        self,
        *args: Any,
        failed: bool,
        since: str,
        until: str | None,
        journey: str | None,
        dry_run: bool,
        **options: Any,
    ) -> None:
        if not failed:
            raise CommandError(
                "--failed is required: failed sends are the only ones sends_retry re-drives "
                "for now (sends_retry --failed --since 2h)"
            )
        now = timezone.now()
        since_at = parse_moment(since, option="--since", now=now)
        until_at = parse_moment(until, option="--until", now=now) if until else None
        if since_at > now:
            raise CommandError(f"--since {since!r} is in the future ({iso_utc(since_at)})")
        if until_at is not None and until_at <= since_at:
            raise CommandError(
                f"--until ({iso_utc(until_at)}) must come after --since ({iso_utc(since_at)})"
            )
        try:
            result = scheduled_sends_redrive(
                since=since_at,
                until=until_at,
                journey_slug=journey,
                by="sends_retry",
                dry_run=dry_run,
            )
        except ValueError as exc:  # an unknown journey
            raise CommandError(str(exc)) from exc
        scope = f"since {iso_utc(since_at)}"
        if until_at is not None:
            scope += f" until {iso_utc(until_at)}"
        if journey:
            scope += f" in {journey}"
        if options["verbosity"] >= 2:
            for line in send_lines(result):
                self.stdout.write(line)
        self.stdout.write(summary(result, scope))


def _sends(count: int) -> str:
    return f"{count} failed send{'' if count == 1 else 's'}"


def summary(result: RedriveResult, scope: str) -> str:
    """`sends_retry: 12 failed sends since … re-queued, 1 left failed (a newer send exists)`"""
    requeued = len(result.requeued)
    if result.dry_run:
        text = f"sends_retry: would re-queue {_sends(requeued)} {scope}"
    else:
        text = f"sends_retry: {_sends(requeued)} {scope} re-queued"
    refusals = result.refusals()
    if refusals:
        left = sum(refusals.values())
        why = "; ".join(
            why if len(refusals) == 1 else f"{count}: {why}" for why, count in refusals.items()
        )
        text += f", {left} {'would be ' if result.dry_run else ''}left failed ({why})"
    return text


def send_lines(result: RedriveResult) -> list[str]:
    lines = []
    for item in result.items:
        what = f"send {item.send_id} ({item.journey_slug} step {item.step_position}, customer "
        what += f"{item.customer_id}, failed {iso_utc(item.failed_at)}: {item.reason})"
        if item.refusal:
            outcome = f"left failed: {item.refusal} ({item.detail})"
        else:
            outcome = "would re-queue" if result.dry_run else "re-queued"
        lines.append(f"  {what}: {outcome}")
    return lines
