"""Placing tables with a trained model (METHOD.md section 4, inference), plus search.

The candidates come from ``method/propose.py``: the policy's greedy placement (the
paper's placer), sampled ones, the cost-guided greedy and local search from the best
(``search="none" | "greedy" | "local"``). The candidate with the lowest predicted cost
wins; with ``refine=K`` and a backend, the K best distinct candidates are measured and
the lowest MEASURED one wins (K measurements per task, for users who can spend them).

Memory: the MDP only offers devices with room for the current table, but a greedy
episode can still paint itself into a corner (every device too full for a later large
table). Then sampled episodes are drawn (``propose.FALLBACK_SAMPLES``, fewer on tasks of
thousands of tables over many devices: ``propose.fallback_rounds``). If none fits and
the task has no user constraints, the task's first-fit-decreasing memory packing
(``data.tasks.first_fit_decreasing``, logged as a warning) becomes a candidate and the
search starts from it, rather than fail a task a memory packing can place; only if that
fails too is the task reported infeasible.

Splits (``sharding``, ``method/split.py``): with ``table`` every table stays whole, as in
the paper. Otherwise tables that fit no device are split as required, and a beam search
scored by the cost network's cost-guided greedy proposes further splits of dominating
tables. The plan with more splits is chosen only if its score is at least
``SplitSettings.min_gain`` (2%) below that of the plan with the required splits alone,
so a split is kept only where it lowers the predicted cost or is needed to fit; only
the chosen plan gets the full search above, started from its greedy placement (one
search, not two: 1.3 instead of 3.9 s on 1,000 tables x 128 devices). Where the greedy
finds no placement of the required-only plan, both are searched and compared.
"""

from __future__ import annotations

import logging
import operator
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from dreamshard.backends.sim.model import SimBackend
from dreamshard.backends.sim.profile import DEFAULT_PROFILE_NAME, load_profile
from dreamshard.constants import DEFAULT_SEED
from dreamshard.data.constraints import ConstraintSpec, ConstraintTracker, constraints_for
from dreamshard.data.tasks import first_fit_decreasing
from dreamshard.errors import InfeasiblePlacementError, InputError
from dreamshard.method.checkpoint import DreamShardModel
from dreamshard.method.costnet import CostNetStageModel
from dreamshard.method.propose import Proposals, SearchSettings, propose
from dreamshard.method.split import (
    SplitChoice,
    SplitSettings,
    choose_splits,
    required_splits,
    split_placement,
    unit_constraints,
    units_of,
)
from dreamshard.runtime import one_thread
from dreamshard.types import CostBackend, Placement, StageCostModel, TableSplit, Task

log = logging.getLogger(__name__)

#: What tells a task's tables and shards apart in the encoding cache.
_TABLE_KEY = operator.attrgetter("name", "rows", "dim")

#: What may decide a placement's splits (``DreamShardPlacer(split_scorer=...)``).
SPLIT_SCORERS: tuple[str, ...] = ("costnet", "sim")


@dataclass(frozen=True)
class PlacementReport:
    """How the last placement was chosen.

    Attributes:
        candidates: Distinct candidate placements considered.
        chosen: Where the winner came from (``Proposals.origin``).
        predicted_cost_ms: The cost network's estimate of the winner.
        measured_cost_ms: Its measured cost with ``refine`` (else None).
        search_converged: Whether every local search reached a local optimum (None: no
            local search ran).
        timed_out: Whether the time budget cut a search short.
        wall_ms: Time the placement took.
        split_tables: Tables the winner splits (0: table-wise).
        split_score_ms: Where splits beyond those needed to fit won: the split search's
            score of the winning plan (the cost of its cost-guided greedy placement on
            the split scorer: the cost network, or the simulator), else None.
        base_score_ms: The same score of the plan with only the splits needed to fit
            (whole tables when none is), which lost by at least ``min_gain``.
    """

    candidates: int
    chosen: str
    predicted_cost_ms: float
    measured_cost_ms: float | None
    search_converged: bool | None
    timed_out: bool
    wall_ms: float
    split_tables: int = 0
    split_score_ms: float | None = None
    base_score_ms: float | None = None


class DreamShardPlacer:
    """A trained DreamShard model as a placer, with search on top.

    Args:
        model: The trained model.
        samples: Extra sampled placements to consider (0: greedy policy only).
        seed: Seed of the sampling and the search.
        constraints: User constraints, resolved against each task placed.
        search: ``"none"`` (the paper's placer), ``"greedy"`` or ``"local"``.
        time_budget_ms: Cap on one placement's search time (None: effort bounded by
            passes and evaluations only, so results do not depend on machine speed).
        refine: Candidates to measure on ``backend`` (0: the cost network decides).
        backend: Where ``refine`` measures.
        sharding: ``table``, ``column``, ``row`` or ``auto`` (:class:`SplitSettings`).
        split_scorer: What decides the splits (and which plan is kept): ``costnet`` (the
            cost network, default) or ``sim`` (the calibrated simulator of ``profile``;
            the cost network still places the shards).
        profile: Hardware profile of the ``sim`` split scorer (None: the default one).
    """

    name = "dreamshard"

    def __init__(
        self,
        model: DreamShardModel,
        samples: int = 0,
        seed: int = DEFAULT_SEED,
        constraints: ConstraintSpec | None = None,
        search: str = "local",
        time_budget_ms: float | None = None,
        refine: int = 0,
        backend: CostBackend | None = None,
        sharding: str = "auto",
        split_scorer: str = "costnet",
        profile: str | None = None,
    ) -> None:
        self.split = SplitSettings(sharding=sharding)
        if split_scorer not in SPLIT_SCORERS:
            raise InputError(
                f"unknown split scorer {split_scorer!r} (use {', '.join(SPLIT_SCORERS)})"
            )
        self.split_scorer = split_scorer
        self._sim = (
            SimBackend(load_profile(profile or DEFAULT_PROFILE_NAME))
            if split_scorer == "sim"
            else None
        )
        self.settings = SearchSettings(
            search=search, samples=samples, seed=seed, time_budget_ms=time_budget_ms
        )
        if refine < 0:
            raise InputError(f"refine must be >= 0, got {refine}")
        if refine and backend is None:
            raise InputError("refine measures candidates: it needs a cost backend")
        self.model = model
        self.constraints = constraints
        self.refine = refine
        self.backend = backend
        self.last_report: PlacementReport | None = None
        #: Cost-network encodings and stage-model vectors of the tables and shards seen
        #: by the current :meth:`place`.
        self._encodings = _EncodingCache()

    def place(self, task: Task) -> Placement:
        start = time.perf_counter()
        self._encodings = _EncodingCache()
        if self.split.sharding == "table":
            required_splits(task, self.split)  # a table too large for any device: one line
            return self._place_units(task, self.constraints, {}, start)[1]
        with one_thread():
            choice = choose_splits(task, self._split_model, self.split, self.constraints)
        # The split search's greedy placements are the cost network's cost-guided
        # greedy of their plans (the simulator's, with split_scorer="sim": not reused).
        reuse = self._sim is None
        if choice.base_cost is None and choice.best != choice.base:
            return self._place_both(task, choice, start)
        if choice.splits_pay(self.split.min_gain):
            try:
                greedy = choice.best_placement if reuse else None
                placed = self._place_plan(task, choice.best, start, greedy)
            except InfeasiblePlacementError as err:  # the plan with fewer splits stands
                log.info(
                    "task %r: the plan with more splits found no placement: %s", task.name, err
                )
            else:
                assert self.last_report is not None
                self.last_report = replace(
                    self.last_report,
                    split_score_ms=choice.best_cost,
                    base_score_ms=choice.base_cost,
                )
                return placed
        greedy = choice.base_placement if reuse else None
        return self._place_plan(task, choice.base, start, greedy)

    def _place_both(self, task: Task, choice: SplitChoice, start: float) -> Placement:
        """Where the greedy found no placement of the plan with only the required splits
        (the full search may: sampled episodes, a memory packing), both plans are
        searched; the one with more splits is kept if the other fails or if it is
        predicted (or simulated, with split_scorer="sim") ``min_gain`` cheaper."""
        placed: list[tuple[float, Placement, PlacementReport]] = []
        for splits in (choice.base, choice.best):
            try:
                placement = self._place_plan(task, splits, start)
            except InfeasiblePlacementError as err:
                if splits is choice.best and not placed:
                    raise
                log.info("task %r: a split plan found no placement: %s", task.name, err)
                continue
            assert self.last_report is not None
            cost = self.last_report.predicted_cost_ms
            if self._sim is not None:
                cost = self._sim.cost_ms(task, placement)
            placed.append((cost, placement, self.last_report))
        if len(placed) == 2 and not placed[1][0] < placed[0][0] * (1 - self.split.min_gain):
            placed = placed[:1]
        self.last_report = placed[-1][2]
        return placed[-1][1]

    def _place_plan(
        self,
        task: Task,
        splits: dict[int, TableSplit],
        start: float,
        cost_greedy: Placement | None = None,
    ) -> Placement:
        """The searched placement of ``task`` with ``splits`` (``cost_greedy``: the
        cost-guided greedy placement of its units, where known)."""
        units = units_of(task, splits)
        spec = unit_constraints(task, splits, self.constraints)
        return self._place_units(units, spec, splits, start, cost_greedy)[1]

    def _split_model(self, task: Task) -> StageCostModel:
        """What scores split plans: the cost network, or the simulator."""
        if self._sim is not None:
            return self._sim.stage_model(task)
        return self._stage_model(task)

    def _stage_model(self, task: Task) -> CostNetStageModel:
        """The cost network's stage model of ``task``'s tables (memory not checked).

        A table's encoding depends on it alone; within one :meth:`place` encodings are
        kept by (name, rows, dim), which tell the task's tables and shards apart, as
        the split search scores many plans that share most of their units."""
        cache = self._encodings
        key = list(map(_TABLE_KEY, task.tables))
        index = cache.index
        if not all(map(index.__contains__, key)):
            missing = [t for t, k in zip(task.tables, key, strict=True) if k not in index]
            features = torch.from_numpy(self.model.normalizer.transform(missing))
            with torch.no_grad():
                encodings = self.model.costnet.encoder(features).numpy()
            vectors = CostNetStageModel.project(self.model.costnet, encodings.astype(np.float64))
            cache.add([_TABLE_KEY(t) for t in missing], encodings, vectors)
        rows = np.fromiter(map(index.__getitem__, key), dtype=np.int64, count=len(key))
        total = torch.from_numpy(cache.encodings[rows]).sum(dim=0)
        return CostNetStageModel.from_vectors(
            self.model.costnet, cache.vectors[rows], total, task.num_devices
        )

    def _place_units(
        self,
        task: Task,
        spec: ConstraintSpec | None,
        splits: dict[int, TableSplit],
        start: float,
        cost_greedy: Placement | None = None,
    ) -> tuple[float, Placement, PlacementReport]:
        """Place ``task`` (the units of a split plan) table-wise: (predicted cost, the
        placement of the whole task with ``splits``, the report)."""
        constraints = constraints_for(spec, task)
        proposals = propose(self.model, task, self.settings, constraints, cost_greedy=cost_greedy)
        if not proposals.scored and constraints.is_empty:
            packed = first_fit_decreasing(task)
            if packed is not None:
                log.warning(
                    "task %r: no episode of the policy fits memory; searching from its "
                    "first-fit-decreasing packing instead",
                    task.name,
                )
                settings = replace(self.settings, time_budget_ms=self._time_left(start))
                proposals = propose(
                    self.model, task, settings, constraints, {packed: "memory-packing"}
                )
        if not proposals.scored:
            raise _infeasible(task, proposals)
        best_cost, best = proposals.scored[0]
        measured = None
        if self.refine:
            assert self.backend is not None
            shortlist = [p for _, p in proposals.scored[: self.refine]]
            costs = [c.cost_ms for c in self.backend.measure(task, shortlist)]
            k = int(np.argmin(costs))
            best, measured = shortlist[k], float(costs[k])
            best_cost = proposals.scored[k][0]
        report = self.last_report = PlacementReport(
            candidates=len(proposals.origin),
            chosen=proposals.origin[best],
            predicted_cost_ms=float(best_cost),
            measured_cost_ms=measured,
            search_converged=proposals.converged,
            timed_out=proposals.timed_out,
            wall_ms=(time.perf_counter() - start) * 1e3,
            split_tables=len(splits),
        )
        return float(best_cost), split_placement(splits, best), report

    def _time_left(self, start: float) -> float | None:
        budget = self.settings.time_budget_ms
        if budget is None:
            return None
        return max(1.0, budget - (time.perf_counter() - start) * 1e3)


class _EncodingCache:
    """Rows of encodings (float32, as the cost network gives them) and stage-model
    vectors (:meth:`CostNetStageModel.project`) by (name, rows, dim), which tell a
    task's tables and shards apart."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, int, int], int] = {}
        self.encodings = np.zeros((0, 0), dtype=np.float32)
        self.vectors = np.zeros((0, 0))

    def add(
        self, keys: list[tuple[str, int, int]], encodings: np.ndarray, vectors: np.ndarray
    ) -> None:
        first = len(self.index)
        self.index.update((k, first + j) for j, k in enumerate(keys))
        if len(self.encodings) == 0:
            self.encodings, self.vectors = encodings, vectors
        else:
            self.encodings = np.concatenate([self.encodings, encodings])
            self.vectors = np.concatenate([self.vectors, vectors])


def _infeasible(task: Task, proposals: Proposals) -> Exception:
    """The error for a task no candidate fits: the greedy episode replayed up to the
    table that found no legal device."""
    tt, greedy = proposals.tensors, proposals.greedy_episode
    stuck = int(greedy.stuck_table[0])
    tracker = ConstraintTracker(task, tt.constraints)
    for i in tt.order[: tt.order.index(stuck)]:
        tracker.place(i, [int(greedy.device_of[0, i])])
    return tracker.infeasible(stuck)
