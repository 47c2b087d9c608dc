"""ORACLE: a long search on the backend's own cost model, the yardstick of the benchmark.

Not a competitor: it evaluates the simulator's cost of tens of thousands of placements
per task (no real system can), to tell how far every placer is from the best placement
there is. It needs a backend that exposes its cost in the additive stage form
(``stage_model``: the simulator). Per task: the greedy on the true cost (each table onto
the device minimising the cost of the partial placement), local search (moves and
swaps) to a local optimum, then ``restarts`` runs of simulated annealing of
``evaluations`` proposals each, each polished by local search; the best of everything.
(In a check on three 40-table tasks of binding memory, three annealing runs from a memory
packing ended within 0.5% of each other.)

With ``sharding`` other than ``table`` the ORACLE may split tables too: the split search
of ``method/split.py`` scored by the greedy on the true cost, then the long search above
on both plans (required splits only, and the best found); the cheaper wins.
"""

from __future__ import annotations

from dreamshard.constants import DEFAULT_SEED
from dreamshard.data.constraints import ConstraintSpec, constraints_for
from dreamshard.data.tasks import first_fit_decreasing
from dreamshard.errors import InputError
from dreamshard.method.search import anneal, greedy_placement, local_search
from dreamshard.method.split import (
    SplitSettings,
    choose_splits,
    split_placement,
    unit_constraints,
    units_of,
)
from dreamshard.types import CostBackend, Placement, StageModelBackend, Task


class OraclePlacer:
    """Long search on the backend's own costs (see the module docstring).

    Args:
        backend: A backend with ``stage_model`` (the simulator).
        evaluations: Annealing proposals per restart.
        restarts: Annealing runs.
        seed: Seed of the annealing.
        constraints: User constraints, resolved against each task.
        sharding: ``table`` (whole tables), ``column``, ``row`` or ``auto``.
    """

    name = "oracle"

    def __init__(
        self,
        backend: CostBackend,
        evaluations: int = 20_000,
        restarts: int = 3,
        seed: int = DEFAULT_SEED,
        constraints: ConstraintSpec | None = None,
        sharding: str = "table",
    ) -> None:
        self.split = SplitSettings(sharding=sharding)
        if not isinstance(backend, StageModelBackend):
            raise InputError(
                f"placer 'oracle' searches the backend's own cost model: backend "
                f"{backend.name!r} has none (use the sim backend)"
            )
        if evaluations < 0 or restarts < 0:
            raise InputError("oracle: evaluations and restarts must be >= 0")
        self.backend = backend
        self.evaluations = evaluations
        self.restarts = restarts
        self.seed = seed
        self.constraints = constraints

    def place(self, task: Task) -> Placement:
        assert isinstance(self.backend, StageModelBackend)
        if self.split.sharding == "table":
            return self._place_units(task, self.constraints)[1]
        choice = choose_splits(task, self.backend.stage_model, self.split, self.constraints)
        best, base = choice.best, choice.base
        placed = []
        for plan in [base] if best == base else [base, best]:
            units = units_of(task, plan)
            cost, placement = self._place_units(
                units, unit_constraints(task, plan, self.constraints)
            )
            placed.append((cost, split_placement(plan, placement)))
        # The ORACLE knows the true cost: the cheaper plan wins outright.
        return min(placed, key=lambda cp: cp[0])[1]

    def _place_units(self, task: Task, spec: ConstraintSpec | None) -> tuple[float, Placement]:
        """The long search on ``task`` (whole tables or a split plan's units): (its true
        cost, the placement)."""
        assert isinstance(self.backend, StageModelBackend)
        model = self.backend.stage_model(task)
        constraints = constraints_for(spec, task)
        start = greedy_placement(task, model, constraints=constraints)
        if start is None and constraints.is_empty:
            start = first_fit_decreasing(task)
        if start is None:  # raises naming the table that found no room
            start = greedy_placement(task, model, constraints=constraints, strict=True)
            assert start is not None
        best, report = local_search(task, model, start, constraints, max_passes=100)
        best_cost = report.cost
        for r in range(self.restarts):
            annealed, _ = anneal(task, model, best, self.evaluations, self.seed + r, constraints)
            polished, report = local_search(task, model, annealed, constraints, max_passes=100)
            if report.cost < best_cost:
                best, best_cost = polished, report.cost
        return best_cost, best
