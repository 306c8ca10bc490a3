from __future__ import annotations

import re

from bench.conditions import (
    CONDITIONS,
    JOURNEYS,
    ApplyConditionsFigures,
    bench_line,
    conditions_for,
)
from bench.run import parse_args
from journeys.conditions import condition_problems, entry_scope

LINE = re.compile(
    r"^BENCH apply_conditions journeys=10 conditions=3 events=\d+ per_s=\S+ "
    r"baseline_per_s=\S+ ratio=\S+$"
)


def test_the_scenario_is_on_by_default_and_can_run_alone_or_be_skipped():
    default = parse_args([])
    assert (default.skip_apply_conditions, default.apply_conditions_only) == (False, False)
    assert default.apply_conditions_events == 600
    assert parse_args(["--skip-apply-conditions"]).skip_apply_conditions
    alone = parse_args(["--apply-conditions-only", "--apply-conditions-events", "3000"])
    assert (alone.apply_conditions_only, alone.apply_conditions_events) == (True, 3000)


def test_the_journeys_carry_three_valid_conditions_each():
    for index in range(JOURNEYS):
        conditions = conditions_for(index)
        assert len(conditions["all"]) == CONDITIONS
        assert (
            condition_problems(conditions, scope=entry_scope(), known_types={"payment_finished"})
            == []
        )


def test_the_line_reports_both_rates_of_the_same_run_and_their_ratio():
    line = bench_line(ApplyConditionsFigures(events=600, per_s=450.0, baseline_per_s=500.0), 600)

    assert LINE.match(line)
    assert line.endswith("per_s=450 baseline_per_s=500 ratio=0.900")


def test_a_skipped_scenario_still_prints_its_line():
    assert LINE.match(bench_line(None, 600))
    assert bench_line(None, 600).endswith("per_s=nan baseline_per_s=nan ratio=nan")
