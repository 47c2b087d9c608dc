"""Comparing placers on a set of tasks, measured on one cost backend (METHOD.md section 7).

Every placer places every task; then all placements of one task are measured together,
so a hardware backend interleaves their repetitions (A B C A B C ...) and timing drifts
hit all competitors alike. Costs are always the backend's measurements, never a model's
estimate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dreamshard.data.constraints import ConstraintSpec, constraints_for
from dreamshard.errors import InfeasiblePlacementError, InvalidPlacementError
from dreamshard.evaluation.stats import PairedComparison, paired_comparison
from dreamshard.placers.registry import is_baseline
from dreamshard.types import (
    CostBackend,
    MeasurementConditions,
    Placement,
    PlacementCost,
    Placer,
    ReportsConditions,
    TableSplit,
    Task,
)


@dataclass(frozen=True)
class TaskResult:
    """One placer on one task.

    Attributes:
        placer: Placer name.
        task: Task name.
        placement: The placement, or None if the placer found none.
        cost: Its measured cost, or None if there was no placement.
        place_time_ms: Wall time the placer took.
        error: Why there is no placement, if there is none.
    """

    placer: str
    task: str
    placement: Placement | None
    cost: PlacementCost | None
    place_time_ms: float
    error: str | None = None


@dataclass(frozen=True)
class PlacerSummary:
    """Aggregate of one placer over the tasks every placer could place."""

    placer: str
    mean_cost_ms: float
    mean_rel_spread: float | None
    mean_place_time_ms: float
    failures: int
    speedup_vs_best_baseline: float | None


@dataclass(frozen=True)
class Evaluation:
    """All results of one comparison."""

    backend: str
    placers: tuple[str, ...]
    tasks: tuple[str, ...]
    results: tuple[TaskResult, ...]
    #: How quiet the machine was while measuring (measuring backends only).
    conditions: MeasurementConditions | None = None

    def result(self, placer: str, task: str) -> TaskResult:
        return next(r for r in self.results if r.placer == placer and r.task == task)

    def common_tasks(self) -> list[str]:
        """Tasks that every placer placed (the means compare on these only)."""
        return [
            t for t in self.tasks if all(self.result(p, t).cost is not None for p in self.placers)
        ]

    def best_baseline(self) -> str | None:
        """The baseline placer with the lowest mean cost, or None without baselines."""
        means = self._means()
        baselines = [p for p in self.placers if is_baseline(p)]
        if not baselines or not means:
            return None
        return min(baselines, key=lambda p: means[p])

    def paired(self, baseline: str | None = None) -> list[PairedComparison]:
        """Every other placer against ``baseline`` (default: the best baseline), task by
        task over the tasks every placer placed (:mod:`dreamshard.evaluation.stats`)."""
        against = baseline if baseline is not None else self.best_baseline()
        common = self.common_tasks()
        if against is None or not common:
            return []
        theirs = [self._cost(against, t) for t in common]
        return [
            paired_comparison(p, [self._cost(p, t) for t in common], against, theirs)
            for p in self.placers
            if p != against
        ]

    def _means(self) -> dict[str, float]:
        common = self.common_tasks()
        if not common:
            return {}
        return {p: float(np.mean([self._cost(p, t) for t in common])) for p in self.placers}

    def _cost(self, placer: str, task: str) -> float:
        cost = self.result(placer, task).cost
        assert cost is not None
        return cost.cost_ms

    def summary(self) -> list[PlacerSummary]:
        """One line per placer; speedup = best baseline's mean cost / this placer's."""
        means = self._means()
        best = self.best_baseline()
        common = self.common_tasks()
        out = []
        for p in self.placers:
            mine = [r for r in self.results if r.placer == p]
            spreads = [
                r.cost.rel_spread
                for r in mine
                if r.cost is not None and r.cost.rel_spread is not None and r.task in common
            ]
            mean = means.get(p, float("nan"))
            out.append(
                PlacerSummary(
                    placer=p,
                    mean_cost_ms=mean,
                    mean_rel_spread=float(np.mean(spreads)) if spreads else None,
                    mean_place_time_ms=float(np.mean([r.place_time_ms for r in mine])),
                    failures=sum(r.cost is None for r in mine),
                    speedup_vs_best_baseline=(means[best] / mean) if best and means else None,
                )
            )
        return out

    def to_json(self) -> dict[str, Any]:
        """Every number of the comparison, machine-readable."""
        return {
            "backend": self.backend,
            "placers": list(self.placers),
            "tasks": list(self.tasks),
            "common_tasks": self.common_tasks(),
            "best_baseline": self.best_baseline(),
            "summary": [vars(s) for s in self.summary()],
            "paired_vs_best_baseline": [
                {**asdict(c), "significant": c.significant} for c in self.paired()
            ],
            "results": [_result_json(r) for r in self.results],
            **(
                {
                    "measurement_conditions": {
                        **asdict(self.conditions),
                        "loaded": self.conditions.loaded,
                    }
                }
                if self.conditions is not None
                else {}
            ),
        }


def split_to_json(split: TableSplit) -> dict[str, Any]:
    """A split as results files record it: table index, kind, sizes, and the host of a
    table-row-wise split."""
    out: dict[str, Any] = {"table": split.table, "kind": split.kind, "sizes": list(split.sizes)}
    if split.kind == "table_row":
        out["host"] = split.host
    return out


def split_from_json(record: dict[str, Any]) -> TableSplit:
    """The split a results file records (:func:`split_to_json`)."""
    return TableSplit(
        record["table"], record["kind"], tuple(record["sizes"]), record.get("host", 0)
    )


def _result_json(r: TaskResult) -> dict[str, Any]:
    return {
        "placer": r.placer,
        "task": r.task,
        "device_of": list(r.placement.device_of) if r.placement else None,
        # Split tables by index (empty: table-wise); device_of then covers their shards.
        "splits": ([split_to_json(s) for s in r.placement.splits] if r.placement else []),
        "cost_ms": r.cost.cost_ms if r.cost else None,
        "rel_spread": r.cost.rel_spread if r.cost else None,
        "window_costs_ms": list(r.cost.window_costs_ms) if r.cost else None,
        "per_device": [vars(c) for c in r.cost.per_device] if r.cost else None,
        "place_time_ms": r.place_time_ms,
        "error": r.error,
    }


def evaluate(
    tasks: Sequence[Task],
    placers: Sequence[Placer],
    backend: CostBackend,
    on_task_done: Callable[[int, int], None] | None = None,
    constraints: ConstraintSpec | None = None,
) -> Evaluation:
    """Place every task with every placer and measure the placements on ``backend``.

    Args:
        tasks: Tasks to place.
        placers: Placers to compare (names must be distinct).
        backend: Where costs come from; all placements of a task are measured in one call.
        on_task_done: Called with (tasks done, total) after each task.
        constraints: User constraints the placers were given: every placement is checked
            against them, and one that breaks them counts as a failure of its placer.
    """
    results: list[TaskResult] = []
    for k, task in enumerate(tasks):
        rules = constraints_for(constraints, task)
        placed: list[tuple[str, Placement, float]] = []
        for placer in placers:
            start = time.perf_counter()
            try:
                placement = placer.place(task)
            except InfeasiblePlacementError as err:
                elapsed = (time.perf_counter() - start) * 1e3
                results.append(TaskResult(placer.name, task.name, None, None, elapsed, str(err)))
                continue
            elapsed = (time.perf_counter() - start) * 1e3
            try:
                rules.check(placement, task)
            except InvalidPlacementError as err:
                error = f"broke a constraint: {err}"
                results.append(TaskResult(placer.name, task.name, None, None, elapsed, error))
                continue
            placed.append((placer.name, placement, elapsed))
        costs = backend.measure(task, [p for _, p, _ in placed]) if placed else []
        for (name, placement, elapsed), cost in zip(placed, costs, strict=True):
            results.append(TaskResult(name, task.name, placement, cost, elapsed))
        if on_task_done is not None:
            on_task_done(k + 1, len(tasks))
    return Evaluation(
        backend=backend.name,
        placers=tuple(p.name for p in placers),
        tasks=tuple(t.name for t in tasks),
        results=tuple(results),
        conditions=backend.conditions() if isinstance(backend, ReportsConditions) else None,
    )
