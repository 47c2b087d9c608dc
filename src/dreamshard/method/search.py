"""Placement search on a stage cost model: greedy, local search, simulated annealing.

Beyond the paper (the DreamShard policy proposes, a search improves; NeuroShard showed
search pays off once the cost model ranks placements right). Every search here works on
any :class:`~dreamshard.types.StageCostModel`: a placement costs
``sum over stages of max over devices`` of the devices' stage costs, and a device's
stage costs depend on the SUM of its tables' vectors. So a candidate move is scored by
recomputing the two devices it touches, and the maximum over the other devices comes
from the top three devices of each stage. DreamShard's cost network (predicted costs)
and the simulator (its own costs: the benchmark's ORACLE) both have this form.

Ties and plateaus: the cost is a maximum, so most moves leave it unchanged. Between
candidates of equal cost, and to accept a move that keeps the cost, every search prefers
the one with the smaller sum of squared device stage costs: the more balanced placement,
whose slowest devices have the most room to improve later.

Memory and user constraints hold throughout: a move or swap never overfills a device,
tables of a together group move as one unit, pinned units never move, and no unit moves
onto a device holding one of its apart-mates.

Everything is deterministic for a given seed, except where a time budget cuts a search
short (then how far it got depends on the machine's speed; :class:`SearchReport` says so).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dreamshard.data.constraints import NO_CONSTRAINTS, BoolArray, Constraints, ConstraintTracker
from dreamshard.runtime import add_into
from dreamshard.types import FloatArray, IntArray, Placement, StageCostModel, Task

#: A move must lower the cost by more than this share of it to count as better (float
#: noise must not make a search cycle).
REL_TOLERANCE = 1e-9


def placement_cost(model: StageCostModel, task: Task, device_of: Sequence[int]) -> float:
    """``sum_s max_d`` of the devices' stage costs of one placement."""
    sums, counts = _device_sums(model, task, np.asarray(device_of, dtype=np.int64))
    return float(model.stage_costs(sums, counts).max(axis=0).sum())


def device_sums(
    vectors: FloatArray, dev: IntArray, num_devices: int
) -> tuple[FloatArray, FloatArray]:
    """``[D, R]`` the sum of the vectors of each device's tables (``dev[i]`` the device
    of row ``i``) and ``[D]`` their counts. Sorted and reduced per device: ``np.add.at``
    takes 20x longer on a thousand rows."""
    counts = np.bincount(dev, minlength=num_devices)
    sums = np.zeros((num_devices, vectors.shape[1]))
    if len(dev):
        order = np.argsort(dev, kind="stable")
        held = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts[held])[:-1]])
        sums[held] = np.add.reduceat(vectors[order], starts, axis=0)
    return sums, counts.astype(np.float64)


def _device_sums(model: StageCostModel, task: Task, dev: IntArray) -> tuple[FloatArray, FloatArray]:
    return device_sums(model.table_vectors, dev, task.num_devices)


def _top3(costs: FloatArray) -> tuple[FloatArray, IntArray]:
    """Per stage, the three largest device costs and their devices: ``[3, S]`` each
    (padded with -inf and device -1 when there are fewer devices)."""
    num_devices, num_stages = costs.shape
    k = min(3, num_devices)
    idx = np.argsort(-costs, axis=0, kind="stable")[:k]
    vals = np.take_along_axis(costs, idx, axis=0)
    if k < 3:
        vals = np.vstack([vals, np.full((3 - k, num_stages), -np.inf)])
        idx = np.vstack([idx, np.full((3 - k, num_stages), -1, dtype=np.int64)])
    return vals, idx.astype(np.int64)


def _top2(costs: FloatArray) -> tuple[IntArray, FloatArray, FloatArray]:
    """Per stage ``[S]``: the device with the largest cost (the first such), that cost,
    and the largest cost of the other devices (-inf where there is none)."""
    num_devices, num_stages = costs.shape
    stages = np.arange(num_stages)
    first = costs.argmax(axis=0)  # argmax: a tenth of the time of max on [D, 3]
    top = costs[first, stages]
    if num_devices == 1:
        return first, top, np.full(num_stages, -np.inf)
    rest = costs.copy()
    rest[first, stages] = -np.inf
    return first, top, rest[rest.argmax(axis=0), stages]


def row_sums(values: FloatArray) -> FloatArray:
    """``values.sum(axis=-1)`` of a ``[K, S]`` array, the same floats: numpy adds fewer
    than 8 terms left to right, as this does one column at a time, without the
    per-row overhead of numpy's reduction over a short axis (a quarter of the time on
    [1024, 3])."""
    num = values.shape[-1]
    if num == 0 or num >= 8:
        summed: FloatArray = values.sum(axis=-1)
        return summed
    out = values[..., 0].copy()
    for s in range(1, num):
        out += values[..., s]
    return out


def joined_partial(costs: FloatArray, options: IntArray, new: FloatArray) -> FloatArray:
    """``[K]`` the cost of a partial placement (``costs`` ``[D, S]`` of its devices) when
    a table joins device ``options[k]`` (ascending), whose stage costs become ``new[k]``:
    per stage the larger of ``new[k]`` and the slowest other device, summed over stages,
    without building the ``[K, S]`` maxima of the others (only the stages' slowest device sees a
    different slowest other)."""
    first, top, second = _top2(costs)
    joined = np.maximum(new, top)
    where = np.searchsorted(options, first)
    for s, (k, d) in enumerate(zip(where.tolist(), first.tolist(), strict=True)):
        if k < len(options) and options[k] == d:
            joined[k, s] = max(new[k, s], second[s])
    return row_sums(joined)


def _others_max(top: tuple[FloatArray, IntArray], a: IntArray, b: IntArray) -> FloatArray:
    """``[K, S]`` per stage the largest cost among devices other than ``a[k]`` and ``b[k]``."""
    vals, idx = top
    keep = (idx[None] != a[:, None, None]) & (idx[None] != b[:, None, None])  # [K, 3, S]
    out: FloatArray = np.where(keep, vals[None], -np.inf).max(axis=1)
    return out


@dataclass
class _Units:
    """The movable pieces of a task: together groups (single tables otherwise)."""

    members: list[tuple[int, ...]]
    unit_of: IntArray  # [T]
    pinned: list[bool]
    memory: IntArray  # [U] bytes
    apart: list[tuple[int, ...]]  # unit -> units it may not share a device with

    @functools.cached_property
    def any_apart(self) -> bool:
        """Whether any unit has apart-mates."""
        return any(self.apart)

    @classmethod
    def of(cls, task: Task, constraints: Constraints) -> _Units:
        groups: list[tuple[int, ...]] = []
        unit_of = np.full(task.num_tables, -1, dtype=np.int64)
        for i in range(task.num_tables):
            if unit_of[i] < 0:
                group = constraints.group_of(i)
                unit_of[list(group)] = len(groups)
                groups.append(group)
        apart: list[set[int]] = [set() for _ in groups]
        for group in constraints.apart:
            units = {int(unit_of[i]) for i in group}
            for u in units:
                apart[u].update(units - {u})
        memory = np.array(
            [sum(task.table_memory_bytes(task.tables[i]) for i in g) for g in groups],
            dtype=np.int64,
        )
        return cls(
            members=groups,
            unit_of=unit_of,
            pinned=[constraints.pinned_device(g[0]) is not None for g in groups],
            memory=memory,
            apart=[tuple(sorted(s)) for s in apart],
        )


class _SearchState:
    """One placement being improved, with its per-device sums, costs and memory."""

    def __init__(
        self,
        model: StageCostModel,
        task: Task,
        units: _Units,
        device_of: Sequence[int],
    ) -> None:
        self.model = model
        self.units = units
        dev = np.asarray(device_of, dtype=np.int64)
        self.unit_device = np.array([int(dev[g[0]]) for g in units.members], dtype=np.int64)
        vectors = model.table_vectors
        self.unit_vectors = np.stack([vectors[list(g)].sum(axis=0) for g in units.members])
        self.unit_counts = np.array([len(g) for g in units.members], dtype=np.float64)
        self.sums, self.counts = _device_sums(model, task, dev)
        self.capacity = np.array([d.memory_bytes for d in task.devices], dtype=np.float64)
        self.used = np.bincount(
            self.unit_device, weights=units.memory.astype(np.float64), minlength=task.num_devices
        )
        self.costs = model.stage_costs(self.sums, self.counts)
        self.top = _top3(self.costs)
        self.cost = float(self.costs.max(axis=0).sum())
        self.balance = float((self.costs**2).sum())
        self._movable: tuple[Sequence[int], IntArray] | None = None

    def movable(self, movable: Sequence[int]) -> IntArray:
        """``movable`` as an array (made once per search: the same list every call)."""
        if self._movable is None or self._movable[0] is not movable:
            self._movable = (movable, np.array(movable, dtype=np.int64))
        return self._movable[1]

    def device_of(self) -> Placement:
        out = np.empty(len(self.units.unit_of), dtype=np.int64)
        for u, group in enumerate(self.units.members):
            out[list(group)] = self.unit_device[u]
        return Placement(tuple(int(d) for d in out))

    def _apart_ok(self, u: int, targets: IntArray, ignore: IntArray | None = None) -> BoolArray:
        """[K] True where moving unit u onto ``targets[k]`` keeps it apart from its mates
        (a mate ``ignore[k]`` leaves that device in the same swap)."""
        ok = np.ones(len(targets), dtype=np.bool_)
        for mate in self.units.apart[u]:
            on = self.unit_device[mate] == targets
            if ignore is not None:
                on &= ignore != mate
            ok &= ~on
        return ok

    def score(
        self, a: IntArray, new_a: FloatArray, b: IntArray, new_b: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """([K] cost, [K] balance) after devices a[k], b[k] take costs new_a[k], new_b[k]."""
        others = _others_max(self.top, a, b)
        cost = np.maximum(others, np.maximum(new_a, new_b)).sum(axis=-1)
        old = (self.costs[a] ** 2).sum(-1) + (self.costs[b] ** 2).sum(-1)
        balance = self.balance - old + (new_a**2).sum(-1) + (new_b**2).sum(-1)
        return cost, balance

    def better(self, cost: float, balance: float) -> bool:
        tol = REL_TOLERANCE * max(abs(self.cost), 1e-12)
        if cost < self.cost - tol:
            return True
        return cost <= self.cost + tol and balance < self.balance - tol * abs(self.balance)

    def apply(self, u: int, b: int, w: int | None = None) -> None:
        """Move unit u to device b (and, for a swap, unit w to u's device)."""
        a = int(self.unit_device[u])
        self._shift(u, a, b)
        if w is not None:
            self._shift(w, b, a)
        changed = np.array([a, b])
        self.costs[changed] = self.model.stage_costs(self.sums[changed], self.counts[changed])
        self.top = _top3(self.costs)
        self.cost = float(self.costs.max(axis=0).sum())
        self.balance = float((self.costs**2).sum())

    def _shift(self, u: int, src: int, dst: int) -> None:
        self.sums[src] -= self.unit_vectors[u]
        self.sums[dst] += self.unit_vectors[u]
        self.counts[src] -= self.unit_counts[u]
        self.counts[dst] += self.unit_counts[u]
        self.used[src] -= self.units.memory[u]
        self.used[dst] += self.units.memory[u]
        self.unit_device[u] = dst


def greedy_placement(
    task: Task,
    model: StageCostModel,
    order: Sequence[int] | None = None,
    constraints: Constraints = NO_CONSTRAINTS,
    strict: bool = False,
) -> Placement | None:
    """Each table, in ``order``, onto the legal device that minimises the cost of the
    partial placement (ties: the most balanced); None if a table finds no legal device
    (with ``strict``, the error naming that table and what the devices had instead).

    Args:
        task: The task.
        model: What scores the partial placements.
        order: Table indices to place in turn; default by each table's cost alone on an
            empty device (sum of its stage costs), largest first.
        constraints: User constraints; memory always holds.
    """
    vectors = model.table_vectors
    num_devices = task.num_devices
    if order is None:
        alone = model.stage_costs(vectors, np.ones(task.num_tables)).sum(axis=-1)
        order = sorted(range(task.num_tables), key=lambda i: -float(alone[i]))
    tracker = ConstraintTracker(task, constraints)
    sums = np.zeros((num_devices, vectors.shape[1]))
    counts = np.zeros(num_devices)
    costs = model.stage_costs(sums, counts)
    squares = (costs**2).sum(-1)  # [D] sum of each device's squared stage costs
    joined = np.empty_like(sums)  # the legal devices' sums if the table joined
    everywhere = np.arange(num_devices)
    for i in order:
        allowed = tracker.legal(i)[0]
        if allowed.all():  # no gather: every device is a candidate
            legal = everywhere
            add_into(joined, sums, vectors[i])
            new = model.stage_costs(joined, counts + 1)
            growth = row_sums(new**2) - squares
        else:
            legal = np.flatnonzero(allowed)
            if len(legal) == 0:
                if strict:
                    raise tracker.infeasible(i)
                return None
            rows = joined[: len(legal)]
            np.add(np.take(sums, legal, axis=0), vectors[i], out=rows)
            new = model.stage_costs(rows, counts[legal] + 1)
            growth = row_sums(new**2) - squares[legal]
        partial = joined_partial(costs, legal, new)
        lowest = float(partial.min())
        tol = REL_TOLERANCE * max(lowest, 1e-12)
        near = np.flatnonzero(partial <= lowest + tol)
        k = int(near[np.argmin(growth[near])])
        d = int(legal[k])
        sums[d] += vectors[i]
        counts[d] += 1
        costs[d] = new[k]
        squares[d] = (costs[d] ** 2).sum()
        tracker.place(i, [d])
    return Placement(tuple(int(d) for d in tracker.device_of[0]))


@dataclass(frozen=True)
class SearchReport:
    """What a local search did.

    Attributes:
        start_cost: Cost of the starting placement (model units: ms).
        cost: Cost of the result.
        passes: Full passes over the units made.
        moves: Moves and swaps applied.
        evaluations: Candidate placements scored.
        converged: True if the last pass found nothing to improve (a local optimum of
            moves and the swaps tried); False if the pass or time budget ran out first.
        timed_out: True if the time budget stopped it (the result then depends on the
            machine's speed).
    """

    start_cost: float
    cost: float
    passes: int
    moves: int
    evaluations: int
    converged: bool
    timed_out: bool


def local_search(
    task: Task,
    model: StageCostModel,
    start: Placement,
    constraints: Constraints = NO_CONSTRAINTS,
    max_passes: int = 20,
    max_evaluations: int | None = None,
    deadline: float | None = None,
    swap_partners: int = 64,
    seed: int = 0,
) -> tuple[Placement, SearchReport]:
    """Hill-climb from ``start`` with single-unit moves and pairwise swaps.

    Each pass visits every movable unit once and applies its best move or swap (to any
    legal device; swaps with up to ``swap_partners`` units on other devices, drawn with
    ``seed``) if it lowers the cost (or keeps it and balances the devices better).

    Args:
        task: The task.
        model: What scores placements.
        start: A valid placement (memory and constraints).
        constraints: User constraints to keep.
        max_passes: Most passes.
        max_evaluations: Most candidate placements scored (moves plus swaps), a budget
            that stops the search at the same point on any machine (None: no limit).
        deadline: ``time.perf_counter()`` value after which to stop (None: no limit).
        swap_partners: Swap candidates per unit and pass.
        seed: Seed of the swap-partner draws.
    """
    units = _Units.of(task, constraints)
    state = _SearchState(model, task, units, start.device_of)
    rng = np.random.default_rng(seed)
    start_cost = state.cost
    movable = [u for u in range(len(units.members)) if not units.pinned[u]]
    num_devices = task.num_devices
    moves = passes = evaluations = 0
    converged = timed_out = out_of_budget = False
    while passes < max_passes and not (timed_out or out_of_budget):
        passes += 1
        improved = False
        for u in movable:
            if deadline is not None and time.perf_counter() > deadline:
                timed_out = True
                break
            if max_evaluations is not None and evaluations >= max_evaluations:
                out_of_budget = True
                break
            applied, scored = _improve_unit(state, u, movable, num_devices, swap_partners, rng)
            evaluations += scored
            if applied:
                moves += 1
                improved = True
        if not improved and not (timed_out or out_of_budget):
            converged = True
            break
    report = SearchReport(start_cost, state.cost, passes, moves, evaluations, converged, timed_out)
    return state.device_of(), report


def _improve_unit(
    state: _SearchState,
    u: int,
    movable: Sequence[int],
    num_devices: int,
    swap_partners: int,
    rng: np.random.Generator,
) -> tuple[bool, int]:
    """Apply unit u's best move or swap if it is better; (whether one was applied,
    candidates scored). The moves' and the swaps' device costs go through one stage-cost
    call and one scoring (a search makes thousands of these calls on a few rows each)."""
    a = int(state.unit_device[u])
    vec, cnt, mem = state.unit_vectors[u], state.unit_counts[u], state.units.memory[u]
    # Moves: u from a to every other device with room.
    targets = np.flatnonzero(state.used + mem <= state.capacity)
    targets = targets[targets != a]
    if len(targets) and state.units.apart[u]:
        targets = targets[state._apart_ok(u, targets)]
    # Swaps: u with a unit w on another device, both fitting after the exchange.
    movable_units = state.movable(movable)
    partners = movable_units[state.unit_device[movable_units] != a]
    if len(partners) > swap_partners:
        partners = np.sort(rng.choice(partners, swap_partners, replace=False))
    b = state.unit_device[partners]
    mem_w = state.units.memory[partners]
    fits = (state.used[a] - mem + mem_w <= state.capacity[a]) & (
        state.used[b] - mem_w + mem <= state.capacity[b]
    )
    if state.units.any_apart:
        fits &= state._apart_ok(u, b, ignore=partners)
        for k, w in enumerate(partners):
            if fits[k] and state.units.apart[int(w)]:
                fits[k] = bool(state._apart_ok(int(w), np.array([a]), np.array([u]))[0])
    partners, b = partners[fits], b[fits]
    moves, swaps = len(targets), len(partners)
    if not moves and not swaps:
        return False, 0
    # Rows: [a after the move, each move's target, a after each swap, each swap's b].
    vec_w, cnt_w = state.unit_vectors[partners], state.unit_counts[partners]
    sums = np.concatenate(
        [
            (state.sums[a] - vec)[None],
            state.sums[targets] + vec,
            state.sums[a] - vec + vec_w,
            state.sums[b] - vec_w + vec,
        ]
    )
    counts = np.concatenate(
        [
            [state.counts[a] - cnt],
            state.counts[targets] + cnt,
            state.counts[a] - cnt + cnt_w,
            state.counts[b] - cnt_w + cnt,
        ]
    )
    costs = state.model.stage_costs(sums, counts)
    new_a = np.concatenate(
        [np.broadcast_to(costs[0], (moves, costs.shape[1])), costs[1 + moves : 1 + moves + swaps]]
    )
    new_b = np.concatenate([costs[1 : 1 + moves], costs[1 + moves + swaps :]])
    dst = np.concatenate([targets, b])
    cost, balance = state.score(np.full(moves + swaps, a), new_a, dst, new_b)
    best: tuple[float, float, int, int | None] | None = None
    if moves:
        k = _pick(cost[:moves], balance[:moves])
        best = (float(cost[k]), float(balance[k]), int(targets[k]), None)
    if swaps:
        k = moves + _pick(cost[moves:], balance[moves:])
        if best is None or (cost[k], balance[k]) < (best[0], best[1]):
            best = (float(cost[k]), float(balance[k]), int(dst[k]), int(partners[k - moves]))
    if best is None or not state.better(best[0], best[1]):
        return False, moves + swaps
    state.apply(u, best[2], best[3])
    return True, moves + swaps


def _pick(cost: FloatArray, balance: FloatArray) -> int:
    """Index of the lowest cost, the most balanced among those within float noise of it."""
    tol = REL_TOLERANCE * max(float(cost.min()), 1e-12)
    near = np.flatnonzero(cost <= cost.min() + tol)
    return int(near[np.argmin(balance[near])])


def anneal(
    task: Task,
    model: StageCostModel,
    start: Placement,
    evaluations: int,
    seed: int,
    constraints: Constraints = NO_CONSTRAINTS,
    start_temperature: float = 0.02,
    end_temperature: float = 1e-4,
) -> tuple[Placement, float]:
    """Simulated annealing from ``start``: random single-unit moves and pairwise swaps,
    Metropolis acceptance at a temperature falling geometrically from
    ``start_temperature`` to ``end_temperature`` (shares of the starting cost) over
    ``evaluations`` proposals. Returns the best placement seen and its cost.
    """
    units = _Units.of(task, constraints)
    state = _SearchState(model, task, units, start.device_of)
    rng = np.random.default_rng(seed)
    movable = np.array([u for u in range(len(units.members)) if not units.pinned[u]])
    best_placement, best_cost = state.device_of(), state.cost
    if len(movable) == 0 or task.num_devices < 2 or evaluations < 1:
        return best_placement, best_cost
    scale = state.cost
    ratio = (end_temperature / start_temperature) ** (1.0 / max(1, evaluations - 1))
    temperature = start_temperature * scale
    for _ in range(evaluations):
        u = int(rng.choice(movable))
        a = int(state.unit_device[u])
        vec, cnt, mem = state.unit_vectors[u], state.unit_counts[u], units.memory[u]
        if rng.random() < 0.5:
            b = int(rng.integers(task.num_devices - 1))
            b += b >= a
            w = None
            ok = state.used[b] + mem <= state.capacity[b]
            ok = ok and bool(state._apart_ok(u, np.array([b]))[0])
            if ok:
                new_a = model.stage_costs(state.sums[a] - vec, np.array(state.counts[a] - cnt))
                new_b = model.stage_costs(state.sums[b] + vec, np.array(state.counts[b] + cnt))
        else:
            w = int(rng.choice(movable))
            b = int(state.unit_device[w])
            mem_w = units.memory[w]
            ok = b != a
            ok = ok and state.used[a] - mem + mem_w <= state.capacity[a]
            ok = ok and state.used[b] - mem_w + mem <= state.capacity[b]
            ok = ok and bool(state._apart_ok(u, np.array([b]), np.array([w]))[0])
            ok = ok and bool(state._apart_ok(w, np.array([a]), np.array([u]))[0])
            if ok:
                vec_w, cnt_w = state.unit_vectors[w], state.unit_counts[w]
                new_a = model.stage_costs(
                    state.sums[a] - vec + vec_w, np.array(state.counts[a] - cnt + cnt_w)
                )
                new_b = model.stage_costs(
                    state.sums[b] - vec_w + vec, np.array(state.counts[b] - cnt_w + cnt)
                )
        if ok:
            cost, _ = state.score(np.array([a]), new_a[None], np.array([b]), new_b[None])
            delta = float(cost[0]) - state.cost
            if delta <= 0 or rng.random() < math.exp(-delta / temperature):
                state.apply(u, b, w)
                if state.cost < best_cost:
                    best_placement, best_cost = state.device_of(), state.cost
        temperature *= ratio
    return best_placement, best_cost


def perturb(task: Task, placement: Placement, moves: int, rng: np.random.Generator) -> Placement:
    """``placement`` after ``moves`` random single-table moves to devices with room
    (memory kept; user constraints are not looked at)."""
    dev = list(placement.device_of)
    capacity = [d.memory_bytes for d in task.devices]
    memory = [task.table_memory_bytes(t) for t in task.tables]
    used = [0] * task.num_devices
    for i, d in enumerate(dev):
        used[d] += memory[i]
    for _ in range(moves):
        i = int(rng.integers(task.num_tables))
        room = [
            d for d in range(task.num_devices) if d != dev[i] and used[d] + memory[i] <= capacity[d]
        ]
        if not room:
            continue
        d = int(room[int(rng.integers(len(room)))])
        used[dev[i]] -= memory[i]
        used[d] += memory[i]
        dev[i] = d
    return Placement(tuple(dev))
