"""evaluate() aggregation, with a tiny exact cost rule standing in for a backend."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from dreamshard.evaluation.evaluate import evaluate, split_from_json, split_to_json
from dreamshard.placers.rules import GreedyPlacer, RandomPlacer
from dreamshard.types import Placement, PlacementCost, StageCosts, TableSplit, Task

from .conftest import table, task


class TablesPerDevice:
    """Cost = tables on the busiest device (ms); records how it was called."""

    name = "count"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def measure(self, t: Task, placements: Sequence[Placement]) -> list[PlacementCost]:
        self.calls.append(len(placements))
        return [
            PlacementCost(
                per_device=tuple(
                    StageCosts(float(len(p.tables_on(d))), 0.0, 0.0, 0.0)
                    for d in range(t.num_devices)
                ),
                backend=self.name,
            )
            for p in placements
        ]


class AllOnFirst:
    name = "all-on-first"

    def place(self, t: Task) -> Placement:
        return Placement((0,) * t.num_tables)


def test_summary_means_and_speedup() -> None:
    tasks = [
        task([table(f"x{i}") for i in range(4)], [10**9, 10**9], name=f"t{k}") for k in range(2)
    ]
    backend = TablesPerDevice()
    result = evaluate(tasks, [GreedyPlacer("size"), AllOnFirst()], backend)
    # All placements of a task are measured in one call (interleaving on hardware).
    assert backend.calls == [2, 2]
    summary = {s.placer: s for s in result.summary()}
    assert summary["size"].mean_cost_ms == 2.0  # 4 equal tables split 2/2
    assert summary["all-on-first"].mean_cost_ms == 4.0
    assert result.best_baseline() == "size"
    assert summary["all-on-first"].speedup_vs_best_baseline == pytest.approx(0.5)
    assert summary["size"].speedup_vs_best_baseline == pytest.approx(1.0)


def test_infeasible_task_is_reported_not_raised() -> None:
    tight = task([table("a", rows=1000), table("b", rows=1000)], [64_000], name="tight")
    roomy = task([table("a"), table("b")], [10**9, 10**9], name="roomy")
    result = evaluate([tight, roomy], [GreedyPlacer("size"), RandomPlacer(0)], TablesPerDevice())
    assert result.result("size", "tight").cost is None
    assert "needs 64,000 bytes" in (result.result("size", "tight").error or "")
    assert result.common_tasks() == ["roomy"]
    assert {s.placer: s.failures for s in result.summary()} == {"size": 1, "random": 1}
    payload = result.to_json()
    assert payload["common_tasks"] == ["roomy"]
    assert len(payload["results"]) == 4


def test_a_placement_that_breaks_the_constraints_counts_as_a_failure() -> None:
    from dreamshard.data.constraints import parse_constraints

    t = task([table("a"), table("b")], [10**9, 10**9])
    spec = parse_constraints({"pin": {"a": "dev1"}})

    class Ignores:  # puts everything on device 0, whatever it is told
        name = "ignores"

        def place(self, task_: object) -> Placement:
            return Placement((0, 0))

    honours = GreedyPlacer("size", constraints=spec)
    result = evaluate([t], [Ignores(), honours], TablesPerDevice(), constraints=spec)
    broken = result.result("ignores", "t")
    assert broken.cost is None and broken.error is not None
    assert broken.error.startswith("broke a constraint:") and "'a'" in broken.error
    kept = result.result("size", "t")
    assert kept.placement is not None and kept.placement.device_of[0] == 1


def test_paired_statistics_against_the_best_baseline() -> None:
    from dreamshard.evaluation.stats import paired_comparison

    tasks = [task([table(f"{n}{k}") for k in range(4)], [10**9] * 4, name=n) for n in "abc"]
    placers = [GreedyPlacer("size"), RandomPlacer(seed=1)]
    result = evaluate(tasks, placers, TablesPerDevice())
    best = result.best_baseline()
    assert best is not None
    (other,) = result.paired()
    assert other.baseline == best and other.placer != best
    common = result.common_tasks()
    cost = {p: [result.result(p, t).cost.cost_ms for t in common] for p in result.placers}  # type: ignore[union-attr]
    assert other == paired_comparison(other.placer, cost[other.placer], best, cost[best])
    assert result.to_json()["paired_vs_best_baseline"][0]["geomean_ratio"] == other.geomean_ratio


def test_results_files_keep_each_splits_kind_sizes_and_host() -> None:
    host_rows = TableSplit(2, "table_row", (500, 500), host=1)
    assert split_to_json(host_rows) == {
        "table": 2, "kind": "table_row", "sizes": [500, 500], "host": 1
    }  # fmt: skip
    row = TableSplit(0, "row", (250,) * 4)
    assert split_to_json(row) == {"table": 0, "kind": "row", "sizes": [250] * 4}
    for split in (host_rows, row, TableSplit(1, "column", (8, 8))):
        assert split_from_json(split_to_json(split)) == split
