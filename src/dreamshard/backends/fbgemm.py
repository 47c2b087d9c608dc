"""The real cost backend: each device's tables run as one FBGEMM TBE operator.

Devices are emulated one at a time on the local device (METHOD.md section 5): the CPU
build of FBGEMM here, the CUDA build where a GPU and fbgemm_gpu's CUDA operators exist,
and on a GPU without them PyTorch's own fused kernels (kernel ``torch-fused``, see
backends/kernels.py; the backend is then named ``fbgemm[torch-fused]`` in every result).
Forward and backward (with the fused EXACT_SGD update) are timed separately. Timing
noise on the development CPUs comes as level shifts lasting 0.1 s to seconds
(MEASUREMENT.md), so repetitions are spread over several *windows*: each window times
every shard of every placement being compared once in turn (A B C A B C ...), and the
per-shard cost is the median over all windows. The spread of the placement cost across
windows is reported with every result.

Drift: this machine's speed wanders by 10-25% over seconds to minutes, and all kernels
slow down together. So, by default, a small fixed *reference shard* is timed right
before every shard in every window, and each time is scaled by (nominal reference time /
reference time measured next to it): costs come out as *reference-normalised
milliseconds*, the time the kernel would take at the reference's nominal speed. On the
development machine this cut the spread of 5 repeated measurements of one placement
from 24% to 3.7% (benchmarks/bench_foundation.py). ``reference=False`` reports raw times.

Communication stages come from an all-to-all model (backends/comm.py) and are combined
with the computation as METHOD.md section 1 says (types.synchronized_costs per device,
base.stage_synchronous_cost_ms for the cost of each window).
"""

from __future__ import annotations

import logging
import os
import statistics
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dreamshard.backends.base import (
    ShardTiming,
    assess_conditions,
    load_average,
    stage_synchronous_cost_ms,
)
from dreamshard.backends.comm import NVLINK_GPU, AllToAllModel, output_widths
from dreamshard.backends.kernels import (
    FBGEMM_KERNEL,
    FusedShard,
    build_fused,
    cap_rows,
    quiet_timing,
    select_kernel,
    time_fused_call,
)
from dreamshard.backends.sim.profile import DEFAULT_PROFILE_NAME, load_profile
from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED
from dreamshard.data.ids import table_ids
from dreamshard.data.synthetic import expected_access_histograms
from dreamshard.errors import BackendError
from dreamshard.types import (
    MeasurementConditions,
    Placement,
    PlacementCost,
    TableSpec,
    Task,
    synchronized_costs,
)
from dreamshard.units import format_bytes

log = logging.getLogger(__name__)


def _default_cpu_comm() -> AllToAllModel:
    return default_comm("cpu")


@dataclass(frozen=True)
class FbgemmConfig:
    """Settings of the FBGEMM backend.

    Attributes:
        batch_size: Global batch (samples) each device's operator looks up.
        windows: Separate time windows the repetitions are spread over.
        calls_per_window: Timed forward+backward calls per shard in each window.
        warmup_calls: Untimed calls per shard after it is built.
        row_cap: If set, tables with more rows run with this many rows instead (ids
            are generated for the smaller table with the same pooling factor and access
            histogram). This keeps huge tables within RAM but changes cache behaviour;
            every scaled table is logged. None runs every table at full size.
        memory_budget_bytes: Most bytes of weights held in built operators at once.
        seed: Seed of the generated ids.
        device: ``"cpu"`` or ``"cuda"``.
        kernel: ``"fbgemm"`` or ``"torch-fused"``; None picks FBGEMM where it runs on the
            device, else torch-fused (backends/kernels.py ``select_kernel``).
        comm: All-to-all model for the communication stages (default: the packaged CPU
            profile's, see default_comm).
        reference: Normalise every time by the interleaved reference shard (see above).
        reference_calls: Reference calls timed before each shard in each window.
        reference_nominal_ms: Nominal (forward, backward) time of the reference shard;
            None uses CPU_REFERENCE_NOMINAL_MS for the CPU at the default batch size and
            otherwise the reference's median over this backend's first warm-up (logged).
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    windows: int = 8
    calls_per_window: int = 8
    warmup_calls: int = 3
    row_cap: int | None = None
    memory_budget_bytes: int = 8 * 2**30
    seed: int = DEFAULT_SEED
    device: str = "cpu"
    kernel: str | None = None
    comm: AllToAllModel = field(default_factory=_default_cpu_comm)
    reference: bool = True
    reference_calls: int = 2
    reference_nominal_ms: tuple[float, float] | None = None


#: Median (forward, backward) ms of the reference shard on the development machine
#: (AMD EPYC Zen 4 VM, fbgemm-gpu-cpu 1.8.0, batch 4096, one thread) as it is timed in
#: practice, interleaved before other shards (240 timings while measuring 60 random
#: shards). It defines the unit of reference-normalised costs: milliseconds at this
#: machine's median speed. (Timed back to back, in a hot loop, it runs at 0.5/1.1-0.6/1.3.)
CPU_REFERENCE_NOMINAL_MS = (0.87, 1.61)


def reference_tables() -> tuple[TableSpec, ...]:
    """The reference shard: two small DLRM-like tables (20,000 rows, dim 16, pooling 8,
    Zipf-0.8 access), cheap enough to time before every shard."""
    hist = expected_access_histograms(
        np.array([20_000, 20_000]), np.array([8.0, 8.0]), np.array([0.8, 0.8])
    )
    return tuple(
        TableSpec(f"__reference_{i}", 20_000, 16, 8.0, tuple(float(v) for v in hist[i]))
        for i in range(2)
    )


@dataclass
class _ShardTimes:
    """Per-window lists of forward and backward times of one shard, in ms."""

    fwd_ms: list[list[float]]
    bwd_ms: list[list[float]]

    def timing(self) -> ShardTiming:
        return ShardTiming(
            fwd_comp_ms=statistics.median(x for w in self.fwd_ms for x in w),
            bwd_comp_ms=statistics.median(x for w in self.bwd_ms for x in w),
        )

    def window_timing(self, window: int) -> ShardTiming:
        return ShardTiming(
            fwd_comp_ms=statistics.median(self.fwd_ms[window]),
            bwd_comp_ms=statistics.median(self.bwd_ms[window]),
        )


class FbgemmBackend:
    """Measures placements by running FBGEMM's fused operators (METHOD.md section 5)."""

    name = "fbgemm"

    def __init__(
        self,
        config: FbgemmConfig | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Args:
        config: Settings; defaults to FbgemmConfig() (CPU).
        progress: Called with (done, total) timed shard-windows during a measurement.
        """
        self.config = config or FbgemmConfig()
        #: The kernel every operator runs on (recorded in the name of the results).
        self.kernel = select_kernel(self.config.device, self.config.kernel)
        if self.kernel != FBGEMM_KERNEL:
            self.name = f"fbgemm[{self.kernel}]"
            log.info("fused operators run on kernel %r on %s", self.kernel, self.config.device)
        self.progress = progress
        self._ops: OrderedDict[tuple[TableSpec, ...], FusedShard] = OrderedDict()
        self._ids: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._scaled_logged: set[str] = set()
        self._anchor: tuple[float, float] | None = None
        #: (fwd, bwd) ms of every interleaved reference timing, raw.
        self.reference_ms: list[tuple[float, float]] = []
        #: The reference's nominal (fwd, bwd) ms the timings were scaled to, once known.
        self._nominal: tuple[float, float] | None = None

    # -- public API --------------------------------------------------------------------

    def measure(self, task: Task, placements: Sequence[Placement]) -> list[PlacementCost]:
        """Measure placements of one task, interleaving their repetitions."""
        for placement in placements:
            placement.validate(task)
        # Each device runs its tables and shards (a placement's units) as one operator.
        shard_lists = []
        for placement in placements:
            units = placement.units(task)
            shard_lists.append(
                [tuple(units[i] for i in idx) for idx in placement.shards(task.num_devices)]
            )
        unique: dict[tuple[TableSpec, ...], tuple[TableSpec, ...]] = {}
        for shards in shard_lists:
            for tables in shards:
                if tables:
                    unique.setdefault(_key(tables), tables)
        times = self._time_shards(list(unique.values()))
        results = []
        for placement, shards in zip(placements, shard_lists, strict=True):
            widths = output_widths(placement.units(task), placement.device_of, task)
            fwd_a2a, bwd_a2a = self.config.comm.exchange_ms(widths, self.config.batch_size)
            whole = [times[_key(t)].timing() if t else ShardTiming(0.0, 0.0) for t in shards]
            window_costs = []
            for w in range(self.config.windows):
                per_window = [
                    times[_key(t)].window_timing(w) if t else ShardTiming(0.0, 0.0) for t in shards
                ]
                fwd = [s.fwd_comp_ms for s in per_window]
                bwd = [s.bwd_comp_ms for s in per_window]
                window_costs.append(float(stage_synchronous_cost_ms(fwd, bwd, fwd_a2a, bwd_a2a)))
            mean = float(np.mean(window_costs))
            results.append(
                PlacementCost(
                    per_device=synchronized_costs(
                        [s.fwd_comp_ms for s in whole],
                        [s.bwd_comp_ms for s in whole],
                        fwd_a2a,
                        bwd_a2a,
                    ),
                    backend=self.name,
                    rel_spread=float(np.std(window_costs)) / mean if mean > 0 else 0.0,
                    window_costs_ms=tuple(window_costs),
                )
            )
        return results

    def conditions(self) -> MeasurementConditions:
        """Signs of a loaded machine over every measurement so far: the interleaved
        reference shard's slowdown against its nominal time and its spread (forward plus
        backward), and the load average now."""
        nominal = sum(self._nominal) if self._nominal is not None else None
        return assess_conditions(
            [f + b for f, b in self.reference_ms], nominal, load_average(), os.cpu_count() or 1
        )

    def measure_shards(self, shards: Sequence[Sequence[TableSpec]]) -> list[ShardTiming]:
        """Computation cost of each shard (tables fused into one operator), interleaved."""
        tables = [tuple(s) for s in shards]
        if any(not s for s in tables):
            raise BackendError("cannot measure an empty shard")
        times = self._time_shards(tables)
        return [times[_key(s)].timing() for s in tables]

    # -- timing ------------------------------------------------------------------------

    def _time_shards(
        self, shards: list[tuple[TableSpec, ...]]
    ) -> dict[tuple[TableSpec, ...], _ShardTimes]:
        """Time every shard in every window; groups run separately if RAM forces it."""
        cfg = self.config
        groups = self._memory_groups(shards)
        if len(groups) > 1:
            log.warning(
                "the shards to compare need more than the memory budget (%s); they are timed "
                "in %d groups, interleaved within each group only",
                format_bytes(cfg.memory_budget_bytes),
                len(groups),
            )
        out: dict[tuple[TableSpec, ...], _ShardTimes] = {}
        total = len(shards) * cfg.windows
        done = 0
        for group in groups:
            built = [self._shard(tables) for tables in group]
            with quiet_timing():
                warm = [*built, self._shard(reference_tables())] if cfg.reference else built
                for shard in warm:
                    for _ in range(cfg.warmup_calls):
                        self._call(shard)
                nominal = self._reference_nominal()
                self._nominal = nominal
                times = [_ShardTimes([], []) for _ in group]
                for window in range(cfg.windows):
                    # Rotate the order each window so no shard always follows the same one.
                    for j in range(len(group)):
                        k = (j + window) % len(group)
                        scale_fwd, scale_bwd = self._reference_scale(nominal)
                        fwd, bwd = [], []
                        for _ in range(cfg.calls_per_window):
                            f, b = self._call(built[k])
                            fwd.append(f * scale_fwd)
                            bwd.append(b * scale_bwd)
                        times[k].fwd_ms.append(fwd)
                        times[k].bwd_ms.append(bwd)
                        done += 1
                        if self.progress is not None:
                            self.progress(done, total)
            for tables, t in zip(group, times, strict=True):
                out[_key(tables)] = t
        return out

    def _reference_nominal(self) -> tuple[float, float] | None:
        """The reference's nominal (fwd, bwd) ms, measuring it once if no constant applies."""
        cfg = self.config
        if not cfg.reference:
            return None
        if cfg.reference_nominal_ms is not None:
            return cfg.reference_nominal_ms
        fbgemm_cpu = cfg.device == "cpu" and self.kernel == FBGEMM_KERNEL
        if fbgemm_cpu and cfg.batch_size == DEFAULT_BATCH_SIZE:
            return CPU_REFERENCE_NOMINAL_MS
        if self._anchor is None:
            reference = self._shard(reference_tables())
            for _ in range(cfg.warmup_calls):
                self._call(reference)
            calls = [self._call(reference) for _ in range(40)]
            self._anchor = (
                statistics.median(c[0] for c in calls),
                statistics.median(c[1] for c in calls),
            )
            log.info("reference shard anchor %.3f / %.3f ms (fwd / bwd)", *self._anchor)
        return self._anchor

    def _reference_scale(self, nominal: tuple[float, float] | None) -> tuple[float, float]:
        """Factors that bring times taken now to the reference's nominal speed."""
        if nominal is None:
            return 1.0, 1.0
        reference = self._shard(reference_tables())
        calls = [self._call(reference) for _ in range(self.config.reference_calls)]
        fwd = statistics.median(c[0] for c in calls)
        bwd = statistics.median(c[1] for c in calls)
        self.reference_ms.append((fwd, bwd))
        return nominal[0] / fwd, nominal[1] / bwd

    def _call(self, shard: FusedShard) -> tuple[float, float]:
        """One forward and one backward; returns their durations in ms."""
        return time_fused_call(shard, self.config.device)

    # -- building operators ------------------------------------------------------------

    def _run_table(self, table: TableSpec) -> TableSpec:
        """The table as it runs: rows capped by ``row_cap`` (logged once per table)."""
        run = cap_rows(table, self.config.row_cap)
        if run is not table and table.name not in self._scaled_logged:
            self._scaled_logged.add(table.name)
            log.warning(
                "table %r runs with %d of its %d rows (row cap; scale factor %.3g)",
                table.name,
                run.rows,
                table.rows,
                run.rows / table.rows,
            )
        return run

    def _table_ids(self, table: TableSpec) -> tuple[np.ndarray, np.ndarray]:
        if table.name not in self._ids:
            self._ids[table.name] = table_ids(table, self.config.batch_size, self.config.seed)
        return self._ids[table.name]

    def _weight_bytes(self, tables: Sequence[TableSpec]) -> int:
        return sum(self._run_table(t).size_bytes for t in tables)

    def _memory_groups(
        self, shards: list[tuple[TableSpec, ...]]
    ) -> list[list[tuple[TableSpec, ...]]]:
        budget = self.config.memory_budget_bytes
        groups: list[list[tuple[TableSpec, ...]]] = [[]]
        used = 0
        for tables in shards:
            need = self._weight_bytes(tables)
            if need > budget:
                raise BackendError(
                    f"one device's tables ({', '.join(t.name for t in tables[:5])}"
                    f"{', ...' if len(tables) > 5 else ''}) need {format_bytes(need)} of weights, "
                    f"more than the memory budget {format_bytes(budget)}; raise the budget or "
                    f"set a row cap"
                )
            if used + need > budget and groups[-1]:
                groups.append([])
                used = 0
            groups[-1].append(tables)
            used += need
        return groups

    def _shard(self, tables: tuple[TableSpec, ...]) -> FusedShard:
        key = _key(tables)
        if key in self._ops:
            self._ops.move_to_end(key)
            return self._ops[key]
        need = self._weight_bytes(tables)
        # Evict least recently used operators until the new one fits in the budget.
        while self._ops and sum(s.weight_bytes for s in self._ops.values()) + need > (
            self.config.memory_budget_bytes
        ):
            self._ops.popitem(last=False)
        shard = self._build(tables)
        self._ops[key] = shard
        return shard

    def _build(self, tables: tuple[TableSpec, ...]) -> FusedShard:
        run_tables = [self._run_table(t) for t in tables]
        ids = [self._table_ids(t) for t in run_tables]
        return build_fused(run_tables, ids, self.config.batch_size, self.config.device, self.kernel)


def _key(tables: Sequence[TableSpec]) -> tuple[TableSpec, ...]:
    """A device's operator is known by its tables themselves: a name alone would mix up
    the shards of two different splits of one table (``t#c0`` of 64 and of 32 columns)."""
    return tuple(tables)


def default_comm(device: str, profile: str | None = None) -> AllToAllModel:
    """The all-to-all model for the communication stages: the ``comm`` section of a
    hardware profile (fitted to measured all-to-alls by ``dreamshard calibrate-comm``).

    Args:
        device: ``cpu`` or ``cuda``.
        profile: Profile name or JSON path. None: the packaged CPU profile on ``cpu``;
            on ``cuda`` the NVLink figures (comm.NVLINK_GPU), since the packaged CPU
            profile describes processes on a CPU host.
    """
    if profile is None and device == "cuda":
        return NVLINK_GPU
    return load_profile(profile or DEFAULT_PROFILE_NAME).comm
