"""Paired statistics (evaluation/stats.py): geometric mean ratio, bootstrap CI, wins."""

from __future__ import annotations

import math

import pytest

from dreamshard.evaluation.stats import paired_comparison


def test_hand_computed_geomean_and_counts() -> None:
    # Ratios 0.5, 2.0, 1.0: geometric mean exactly 1; one win, one loss, one tie.
    c = paired_comparison("p", [1.0, 4.0, 3.0], "b", [2.0, 2.0, 3.0])
    assert c.geomean_ratio == pytest.approx(1.0)
    assert (c.wins, c.losses, c.ties, c.tasks) == (1, 1, 1, 3)
    assert c.ci_low < 1.0 < c.ci_high
    assert not c.significant


def test_consistently_cheaper_is_significant() -> None:
    baseline = [10.0, 20.0, 15.0, 12.0, 30.0, 8.0]
    mine = [0.9 * x * (1 + 0.01 * k) for k, x in enumerate(baseline)]
    c = paired_comparison("p", mine, "b", baseline)
    expected = math.exp(sum(math.log(0.9 * (1 + 0.01 * k)) for k in range(6)) / 6)
    assert c.geomean_ratio == pytest.approx(expected)
    assert c.ci_low <= c.geomean_ratio <= c.ci_high < 1.0
    assert c.significant and c.wins == 6


def test_same_seed_same_interval_and_one_task_has_no_spread() -> None:
    a = paired_comparison("p", [1.0, 2.0, 5.0], "b", [2.0, 2.0, 4.0], seed=3)
    b = paired_comparison("p", [1.0, 2.0, 5.0], "b", [2.0, 2.0, 4.0], seed=3)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    one = paired_comparison("p", [3.0], "b", [4.0])
    assert one.ci_low == one.ci_high == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("mine", "theirs"), [([1.0], [1.0, 2.0]), ([], []), ([0.0], [1.0]), ([1.0], [-1.0])]
)
def test_bad_costs_are_refused(mine: list[float], theirs: list[float]) -> None:
    with pytest.raises(ValueError):
        paired_comparison("p", mine, "b", theirs)
