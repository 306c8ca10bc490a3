from __future__ import annotations

import re

from bench.media import MediaFigures, bench_line
from bench.run import parse_args

LINE = re.compile(
    r"^BENCH media images=\d+ lateness_p99_s=\S+ lateness_p99_base_s=\S+ "
    r"lateness_ratio=\S+ compress_per_s=\S+ vs_pillow=\S+$"
)


def test_media_scenario_is_on_by_default_and_takes_the_issue_scale():
    default = parse_args([])
    assert (default.skip_media, default.media_images) == (False, 40)
    assert parse_args(["--thorough"]).media_images == 100
    issue = parse_args(["--thorough", "--media-images", "500", "--skip-media"])
    assert (issue.skip_media, issue.media_images) == (True, 500)


def test_quick_by_default_and_thorough_on_request():
    quick, thorough = parse_args([]), parse_args(["--thorough", "--sends", "20000"])
    assert (quick.sends, quick.naive_sends, quick.ingest_seconds) == (2_000, 2_000, 3.0)
    assert (thorough.sends, thorough.naive_sends, thorough.ingest_seconds) == (20_000, 20_000, 6.0)
    assert parse_args(["--naive-sends", "500"]).naive_sends == 500


def test_media_line_reports_ratios_of_the_same_run():
    figures = MediaFigures(
        images=500,
        processes=2,
        base_p99=(0.3, 0.5),
        base_p50=(0.2, 0.2),
        loaded_p99=0.44,
        loaded_p50=0.2,
        loaded_max=0.5,
        saturated=True,
        compress_per_s=3.6,
        compress_images=400,
        batch_per_s=3.4,
        raw_seconds=(125.0, 125.0),
    )

    line = bench_line(figures, 500)

    assert LINE.match(line)
    assert "lateness_p99_base_s=0.400 lateness_ratio=1.10" in line
    assert "compress_per_s=3.60 vs_pillow=0.900" in line


def test_skipped_media_scenario_still_prints_its_line():
    assert LINE.match(bench_line(None, 0))
    assert bench_line(None, 0).endswith("compress_per_s=nan vs_pillow=nan")
