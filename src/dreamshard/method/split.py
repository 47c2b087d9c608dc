"""Deciding which tables to split, and how (beyond the paper; NeuroShard-style).

DreamShard places whole tables. Two things make a whole table a bad unit:

- it fits no single device (a 50M-row, dim-128 table on 16 GB devices): it must be
  split, and row-wise sharding (TorchRec's ``ROW_WISE``: one row block per device)
  needs the least memory per device (then, on tasks of several hosts, table-row-wise:
  one block per device of one host; then column shards);
- its cost dominates (a very large pooling factor or dim): every table-wise placement
  has a device at least that slow, and only a split can balance it.

:func:`required_splits` handles the first; :func:`choose_splits` the second: a beam
search over split choices of the heaviest tables (column halvings 2, 4, 8 shards, or a
row split over all devices), each candidate scored by the caller's ``score`` (the
cost-guided greedy placement of the resulting units on a stage cost model: the cost
network for DreamShard, the simulator for the ORACLE). Tables that fit and do not
dominate stay whole; with ``sharding="auto"`` the placer then keeps the split plan only
if it scores ``min_gain`` below the plan with the required splits alone
(:meth:`SplitChoice.splits_pay`).

A child plan differs from its parent in one table's units: it keeps the parent's device
sums, takes that table's old units out and places the new shards
(:func:`_insert_shards`), which needs a unit's vector to depend on the unit alone (as
:class:`~dreamshard.types.StageCostModel` requires).

The split tables' shards are then placed by the usual search under extra constraints
(:func:`unit_constraints`): row block ``j`` pinned to device ``j`` (TorchRec's layout;
table-row-wise: to device ``j`` of its host), and the column shards of one table on
pairwise different devices (apart). Tables the user's constraints name are never split.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from dreamshard.constants import DIM_MULTIPLE
from dreamshard.data.constraints import ConstraintSpec, constraints_for
from dreamshard.errors import InfeasiblePlacementError, InputError, InvalidPlacementError
from dreamshard.method.search import device_sums, greedy_placement, joined_partial, row_sums
from dreamshard.types import (
    ROW_KINDS,
    SHARDING_MODES,
    Placement,
    StageCostModel,
    TableSpec,
    TableSplit,
    Task,
    column_split_sizes,
    row_split_sizes,
)

#: Splits of a task, by table index.
Splits = Mapping[int, TableSplit]


class UnsplittableTableError(InfeasiblePlacementError):
    """A table fits no device, and no split the sharding mode allows makes it fit."""

    def __init__(self, table: str, needed_bytes: int, free_bytes: list[int], message: str) -> None:
        super().__init__(table, needed_bytes, free_bytes)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class SplitSettings:
    """How tables may be split and how hard to look.

    Attributes:
        sharding: ``table`` (never split), ``column``, ``row`` (only that kind) or
            ``auto`` (either; the placer keeps a split only where it lowers the
            predicted cost or is needed to fit).
        max_column_shards: Most column shards of one table (powers of 2 are tried).
        candidates: Heaviest tables considered for a split that is not needed to fit.
        dominance: A table is a candidate when its cost alone on a device is at least
            this share of the cost of the plan with only the required splits (it then
            nearly sets the slowest device by itself).
        beam_width: Split plans kept per round of the beam search.
        max_rounds: Rounds of the beam search (each adds one split or halving).
        min_gain: A plan with more splits than needed to fit is kept only if its
            score is at least this share below that of the required splits alone (a
            split changes what the fused operators run, where the cost model has seen
            less data).
    """

    sharding: str = "auto"
    max_column_shards: int = 8
    candidates: int = 8
    dominance: float = 0.75
    beam_width: int = 2
    max_rounds: int = 6
    min_gain: float = 0.02

    def __post_init__(self) -> None:
        if self.sharding not in SHARDING_MODES:
            raise InputError(
                f"unknown sharding {self.sharding!r} (use {', '.join(SHARDING_MODES)})"
            )
        if self.max_column_shards < 2 or self.candidates < 0 or self.beam_width < 1:
            raise InputError(
                "split settings: max_column_shards must be >= 2, candidates >= 0 and "
                "beam_width >= 1"
            )

    @property
    def allows_column(self) -> bool:
        return self.sharding in ("column", "auto")

    @property
    def allows_row(self) -> bool:
        return self.sharding in ("row", "auto")


def units_of(task: Task, splits: Splits) -> Task:
    """The task whose tables are ``task``'s units under ``splits`` (split tables
    replaced by their shards, as ``Placement.units`` orders them)."""
    tables: list[TableSpec] = list(task.tables)
    # Last split table first, so the indices of those before it still hold.
    for i in sorted((i for i in splits if 0 <= i < len(tables)), reverse=True):
        tables[i : i + 1] = _shards(splits[i], task.tables[i])
    return task.with_tables(tables)


@functools.lru_cache(maxsize=4096)
def _shards(split: TableSplit, table: TableSpec) -> tuple[TableSpec, ...]:
    # The beam search builds the same shards for many plans.
    return split.shards(table)


def unit_constraints(task: Task, splits: Splits, user: ConstraintSpec | None) -> ConstraintSpec:
    """The constraints the units of ``task`` must keep: the user's (on whole tables,
    names unchanged), each row block pinned to its device (``ShardOf.device``), and
    the column shards of each column-split table on pairwise different devices."""
    base = user if user is not None else ConstraintSpec()
    pins = list(base.pins)
    apart = list(base.apart)
    for i in sorted(splits):
        shards = splits[i].shards(task.tables[i])
        if splits[i].kind in ROW_KINDS:
            pins.extend((s.name, _pinned(s, task)) for s in shards)
        else:
            apart.append(tuple(s.name for s in shards))
    pool = None if base.pool is None else base.pool | {s for s in _shard_names(task, splits)}
    return ConstraintSpec(
        pins=tuple(pins), together=base.together, apart=tuple(apart), where=base.where, pool=pool
    )


def _pinned(unit: TableSpec, task: Task) -> int:
    """The device of a row block (row-wise or table-row-wise) of ``task``."""
    assert unit.shard is not None
    device = unit.shard.device(task.host_size)
    assert device is not None
    return device


def _shard_names(task: Task, splits: Splits) -> Iterable[str]:
    for i, split in splits.items():
        yield from (s.name for s in split.shards(task.tables[i]))


def protected_tables(task: Task, user: ConstraintSpec | None) -> set[int]:
    """Tables the user's constraints name (pins, together, apart): never split."""
    if user is None:
        return set()
    named = {n for n, _ in user.pins}
    named |= {n for g in (*user.together, *user.apart) for n in g}
    return {i for i, t in enumerate(task.tables) if t.name in named}


def row_split(task: Task, table: int) -> TableSplit | None:
    """The row-wise split of a table over all devices, or None where there are fewer
    than 2 devices or too few rows for a block each."""
    try:
        sizes = row_split_sizes(task.tables[table].rows, task.num_devices)
    except InvalidPlacementError:
        return None
    return TableSplit(table, "row", sizes)


def table_row_split(task: Task, table: int, host: int) -> TableSplit | None:
    """The table-row-wise split of a table over the devices of ``host``, or None where
    the task has one host or a host's devices are too many for its rows."""
    if task.num_hosts < 2 or not 0 <= host < task.num_hosts:
        return None
    try:
        sizes = row_split_sizes(task.tables[table].rows, task.host_size)
    except InvalidPlacementError:
        return None
    return TableSplit(table, "table_row", sizes, host)


def column_split(task: Task, table: int, parts: int) -> TableSplit | None:
    """The table cut into ``parts`` column shards (dims multiples of 4, as even as they
    go), or None where its dim or the device count does not allow that many."""
    if parts < 2 or parts > task.num_devices:
        return None
    try:
        sizes = column_split_sizes(task.tables[table].dim, parts)
    except ValueError:
        return None
    return TableSplit(table, "column", sizes)


def _fits(task: Task, split: TableSplit, free: list[int] | None = None) -> bool:
    """Whether every shard of ``split`` fits alone: a row block in its own device's
    ``free`` bytes, a column shard in the most free device (default: whole devices)."""
    room = free if free is not None else [d.memory_bytes for d in task.devices]
    shards = _shards(split, task.tables[split.table])
    if split.kind in ROW_KINDS:
        return all(task.table_memory_bytes(s) <= room[_pinned(s, task)] for s in shards)
    return all(task.table_memory_bytes(s) <= max(room) for s in shards)


def required_splits(
    task: Task, settings: SplitSettings, protected: Iterable[int] = ()
) -> dict[int, TableSplit]:
    """The splits without which a table fits no device: largest table first, each that
    fits no device's memory left after the row blocks split so far is split row-wise
    over all devices where allowed (least memory per device), else table-row-wise over
    one host's devices (tasks of several hosts; the first host where it fits), else into
    the fewest column shards that fit.

    Raises:
        UnsplittableTableError: A table fits no device whole and no allowed split fits
            (named, with what it needs and what the devices have).
    """
    protected = set(protected)
    free = [d.memory_bytes for d in task.devices]
    total = sum(free)
    out: dict[int, TableSplit] = {}
    order = sorted(range(task.num_tables), key=lambda i: -task.table_memory_bytes(task.tables[i]))
    for i in order:
        table = task.tables[i]
        need = task.table_memory_bytes(table)
        if need <= max(free):
            continue
        what = (
            f"table {table.name!r} needs {need:,} bytes; the most any device has "
            f"{'left ' if max(free) < max(d.memory_bytes for d in task.devices) else ''}"
            f"is {max(free):,}"
        )
        if settings.sharding == "table":
            raise UnsplittableTableError(
                table.name, need, free, f"{what} (allow splits with --sharding auto)"
            )
        if i in protected:
            raise UnsplittableTableError(
                table.name, need, free, f"{what}, and tables named in constraints are never split"
            )
        options: list[TableSplit | None] = []
        if settings.allows_row:
            options.append(row_split(task, i))
            options.extend(table_row_split(task, i, h) for h in range(task.num_hosts))
        if settings.allows_column:
            options.extend(column_split(task, i, k) for k in range(2, task.num_devices + 1))
        split = next((s for s in options if s is not None and _fits(task, s, free)), None)
        if split is None:
            kinds = {"row": "row blocks", "column": "column shards", "auto": "row or column shards"}
            raise UnsplittableTableError(
                table.name,
                need,
                free,
                f"{what} and the {task.num_devices} devices {total:,} in all; no split into "
                f"{kinds[settings.sharding]} fits (dim {table.dim}: column shards need "
                f"multiples of {DIM_MULTIPLE} columns, at most one per device)",
            )
        out[i] = split
        if split.kind in ROW_KINDS:
            for shard in split.shards(table):
                free[_pinned(shard, task)] -= task.table_memory_bytes(shard)
    return out


#: A stage cost model of any task (the cost network's or the simulator's): what scores
#: split plans.
ModelFor = Callable[[Task], StageCostModel]


@dataclass(frozen=True)
class _Plan:
    """A split plan with the units' task, their memory (bytes, ``[U]``), their greedy
    placement and its cost (None where the greedy found no placement)."""

    splits: dict[int, TableSplit]
    units: Task
    memory: np.ndarray
    placement: Placement | None
    cost: float | None
    #: ``[D, R]`` and ``[D]``: the sums of the placed units' vectors per device and
    #: their counts (None without a placement), which a child plan updates.
    sums: np.ndarray | None = None
    counts: np.ndarray | None = None


def _block(splits: Splits, table: int) -> tuple[int, int]:
    """Where ``table``'s units lie among the units of a plan (``units_of`` order)."""
    start = table + sum(len(s.sizes) - 1 for j, s in splits.items() if j < table)
    split = splits.get(table)
    return start, start + (len(split.sizes) if split is not None else 1)


def _evaluate(
    task: Task,
    splits: dict[int, TableSplit],
    model_for: ModelFor,
    user: ConstraintSpec | None,
    parent: _Plan | None = None,
    changed: int | None = None,
) -> _Plan:
    """Score a split plan by the cost-guided greedy placement of its units. From a
    parent plan only the shards of the ``changed`` table are placed (the other units keep
    the parent's devices; :func:`_insert_shards`), so a child costs O(shards x devices),
    not a whole greedy; without a parent, or if that finds no room, the whole greedy
    runs."""
    units = units_of(task, splits)
    model = model_for(units)
    if parent is not None and changed is not None:
        a, b = _block(parent.splits, changed)
        start, stop = _block(splits, changed)
        new = [units.table_memory_bytes(u) for u in units.tables[start:stop]]
        memory = np.concatenate([parent.memory[:a], new, parent.memory[b:]])
        if parent.placement is not None and parent.sums is not None:
            assert parent.counts is not None
            device_of = np.array(parent.placement.device_of, dtype=np.int64)
            # The parent's device sums without the changed table's old units (a unit's
            # vector depends on it alone: StageCostModel).
            old = task.with_tables(parent.units.tables[a:b])
            sums, counts = parent.sums.copy(), parent.counts.copy()
            np.subtract.at(sums, device_of[a:b], model_for(old).table_vectors)
            np.subtract.at(counts, device_of[a:b], 1.0)
            device_of = np.concatenate([device_of[:a], np.full(len(new), -1), device_of[b:]])
            inserted = _insert_shards(units, model, device_of, memory, sums, counts)
            if inserted is not None:
                return _Plan(splits, units, memory, *inserted)
    else:
        memory = np.array([units.table_memory_bytes(u) for u in units.tables], dtype=np.float64)
    constraints = constraints_for(unit_constraints(task, splits, user), units)
    placement = greedy_placement(units, model, None, constraints)
    if placement is None:
        return _Plan(splits, units, memory, None, None)
    sums, counts = device_sums(
        model.table_vectors, np.array(placement.device_of, dtype=np.int64), units.num_devices
    )
    cost = float(model.stage_costs(sums, counts).max(axis=0).sum())
    return _Plan(splits, units, memory, placement, cost, sums, counts)


def _insert_shards(
    units: Task,
    model: StageCostModel,
    device_of: np.ndarray,
    memory: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
) -> tuple[Placement, float, np.ndarray, np.ndarray] | None:
    """A placement of ``units`` from one with some units unplaced (``device_of`` -1:
    the new shards of one table; ``memory`` ``[U]`` bytes of each unit; ``sums`` and
    ``counts`` those of the placed units, updated in place): row block j on device j,
    row blocks on their devices (``ShardOf.device``),
    each column shard (largest cost alone first) onto the device with room and none of
    its siblings that minimises the cost of the placement so far (ties: the more
    balanced); with its cost, sums and counts. None where a shard finds no such
    device."""
    device_of = device_of.copy()
    num_devices = units.num_devices
    vectors = model.table_vectors
    capacity = np.array([d.memory_bytes for d in units.devices], dtype=np.float64)
    placed = device_of >= 0
    used = np.bincount(device_of[placed], memory[placed], minlength=num_devices)
    new = np.flatnonzero(~placed)
    alone = model.stage_costs(vectors[new], np.ones(len(new))).sum(axis=-1)
    for i in new[np.argsort(-alone, kind="stable")]:
        shard = units.tables[i].shard
        legal = used + memory[i] <= capacity
        if shard is not None and shard.is_row_block:  # its device is fixed
            d = _pinned(units.tables[i], units)
            if not legal[d]:
                return None
        else:
            legal[device_of[new[device_of[new] >= 0]]] = False  # siblings apart
            options = np.flatnonzero(legal)
            if len(options) == 0:
                return None
            costs = model.stage_costs(sums, counts)  # [D, S]
            new_costs = model.stage_costs(sums[options] + vectors[i], counts[options] + 1)
            partial = joined_partial(costs, options, new_costs)
            growth = row_sums(new_costs**2) - row_sums(costs[options] ** 2)
            near = np.flatnonzero(partial <= partial.min() + 1e-9 * abs(float(partial.min())))
            d = int(options[near[np.argmin(growth[near])]])
        device_of[i] = d
        used[d] += memory[i]
        sums[d] += vectors[i]
        counts[d] += 1
    cost = float(model.stage_costs(sums, counts).max(axis=0).sum())
    return Placement(tuple(device_of.tolist())), cost, sums, counts


def alone_costs(model: StageCostModel) -> np.ndarray:
    """``[T]`` each table's cost alone on an empty device (sum of its stage costs)."""
    vectors = model.table_vectors
    out: np.ndarray = model.stage_costs(vectors, np.ones(len(vectors))).sum(axis=-1)
    return out


def split_candidates(
    task: Task,
    model: StageCostModel,
    settings: SplitSettings,
    load_ms: float,
    protected: Iterable[int] = (),
) -> list[int]:
    """The heaviest tables whose cost alone is at least ``settings.dominance`` of
    ``load_ms`` (the cost of the plan so far: such a table nearly sets the slowest
    device by itself), heaviest first, at most ``settings.candidates``."""
    if settings.sharding == "table" or task.num_devices < 2:
        return []
    alone = alone_costs(model)
    protected = set(protected)
    order = np.argsort(-alone, kind="stable")
    out = [
        int(i)
        for i in order
        if int(i) not in protected and alone[i] >= settings.dominance * load_ms
    ]
    return out[: settings.candidates]


def _next_splits(
    task: Task, current: TableSplit | None, table: int, s: SplitSettings
) -> list[TableSplit]:
    """The splits one step beyond ``current`` for one table: halve its column shards
    (or cut it in 2) and, from whole, the row split.

    Table-row-wise splits are not proposed here, only where a table needs one to fit
    (:func:`required_splits`): their gain on a real cluster is less inter-host traffic,
    which no cost model here can see (one link model; comm.py), and proposing them for
    cost alone made the sim-scored plans on hosts 4% worse on heavy-40x8
    (docs/results.md)."""
    out: list[TableSplit | None] = []
    if current is None:
        if s.allows_column:
            out.append(column_split(task, table, 2))
        if s.allows_row:
            out.append(row_split(task, table))
    elif current.kind == "column" and 2 * len(current.sizes) <= s.max_column_shards:
        out.append(column_split(task, table, 2 * len(current.sizes)))
    return [x for x in out if x is not None and _fits(task, x)]


@dataclass(frozen=True)
class SplitChoice:
    """What the split search found.

    Attributes:
        best: The splits of the best plan, by table index.
        base: The required splits alone (the plan closest to table-wise; equal to
            ``best`` when no further split scored better).
        best_cost: The score of ``best`` (ms on the scoring model; None: no greedy
            placement of it was found).
        base_cost: The score of ``base``.
        best_placement: The placement of ``best``'s units that scored it (None: none).
        base_placement: That of ``base``.
    """

    best: dict[int, TableSplit]
    base: dict[int, TableSplit]
    best_cost: float | None
    base_cost: float | None
    best_placement: Placement | None = None
    base_placement: Placement | None = None

    def splits_pay(self, min_gain: float) -> bool:
        """Whether ``best`` differs from ``base`` and scores at least ``min_gain`` (a
        share) cheaper: the plan to keep, by the split search's own scores."""
        if self.best == self.base or self.best_cost is None:
            return False
        return self.base_cost is None or self.best_cost < self.base_cost * (1 - min_gain)


def choose_splits(
    task: Task,
    model_for: ModelFor,
    settings: SplitSettings,
    user: ConstraintSpec | None = None,
) -> SplitChoice:
    """The split plan with the lowest score: a beam search from the required splits over
    one more split or halving of a candidate table per round, for ``max_rounds`` rounds
    (plateaus included) or until no plan grows. A plan's score is the cost, on
    ``model_for(units)``, of the cost-guided greedy placement of its units (a child
    re-places only the table it splits; :func:`_evaluate`).

    Args:
        task: The task (whole tables).
        model_for: The stage cost model of a task (the cost network's or the simulator's).
        settings: Split mode and effort.
        user: The user's constraints (their tables stay whole).

    Returns:
        The best plan and the required splits alone, with their scores.

    Raises:
        UnsplittableTableError: From :func:`required_splits`.
    """
    protected = protected_tables(task, user)
    base = _evaluate(task, required_splits(task, settings, protected), model_for, user)
    model = model_for(task)  # the whole tables' costs alone pick the candidates
    load = base.cost if base.cost is not None else float(alone_costs(model).max())
    candidates = [
        i for i in split_candidates(task, model, settings, load, protected) if i not in base.splits
    ]
    best = base
    beam = [base]
    seen = {_key(base.splits)}
    for _ in range(settings.max_rounds if candidates else 0):
        grown: list[_Plan] = []
        for plan in beam:
            for i in candidates:
                for nxt in _next_splits(task, plan.splits.get(i), i, settings):
                    child = {**plan.splits, i: nxt}
                    if _key(child) in seen:
                        continue
                    seen.add(_key(child))
                    scored = _evaluate(task, child, model_for, user, plan, i)
                    if scored.cost is not None:
                        grown.append(scored)
        if not grown:
            break
        grown.sort(key=lambda p: p.cost if p.cost is not None else math.inf)
        top = grown[0]
        assert top.cost is not None
        if best.cost is None or top.cost < best.cost * (1 - 1e-6):
            best = top
        # Plateaus continue: with several heavy tables, splitting one leaves the others
        # setting the maximum, and only splitting them all lowers it.
        beam = grown[: settings.beam_width]
    return SplitChoice(
        best.splits, base.splits, best.cost, base.cost, best.placement, base.placement
    )


def _key(splits: Splits) -> tuple[tuple[int, str, tuple[int, ...], int], ...]:
    return tuple((i, s.kind, s.sizes, s.host) for i, s in sorted(splits.items()))


def ordered(splits: Splits) -> tuple[TableSplit, ...]:
    """The splits in table order, as :class:`Placement` holds them."""
    return tuple(splits[i] for i in sorted(splits))


def split_placement(splits: Splits, units_placement: Placement) -> Placement:
    """A placement of the whole task from a table-wise placement of its units."""
    return Placement(units_placement.device_of, ordered(splits))
