"""Simulated cost backend: an analytical model of fused TBE computation costs.

METHOD.md section 5 asks for a fast simulator of the per-device costs of FBGEMM's fused
table-batched embedding (TBE) that keeps the qualitative effects of fusion, so that
naive size or dim proxies are not optimal on it. The model below follows what the CPU
kernels do (forward: a pooled gather per bag with software prefetch; backward: per table
a radix sort of the ids, a gather of output-gradient rows per lookup and one fused SGD
update per distinct row) and what 200 measured shards show (MEASUREMENT.md); it has 18
positive parameters (``KernelParams``, held by a ``SimProfile``: backends/sim/profile.py)
and is calibrated with ``fit_profile`` (backends/sim/fit.py). This module holds the model
and :class:`SimBackend`, the cost backend on it.

Model of one shard (the ``n`` tables fused into one operator on one device), at batch
size ``B``. Per table with ``L = B * pooling_factor`` lookups, row bytes ``rb``,
``lines = max(1, rb / 64)`` cache lines per row and access histogram ``h``:

- distinct rows touched per batch ``U = min(rows, L / mean_count(h))`` (``mean_count``
  as ``synthetic.generate_ids`` draws counts within a bin); ``U`` lookups are the first
  touch of their row in the batch, the other ``L - U`` repeat a row touched earlier in
  the same batch (skew) and find it in cache;
- the shard's *footprint* ``S = sum(U * lines * 64)``: the bytes of cache lines holding
  the rows it touches. Training repeats the operator over batches whose rows overlap, so
  what decides whether a first touch misses is whether the shard's touched rows fit in
  the cache, not whether a table does: a 1e6-row table whose batch touches 12k rows runs
  at in-cache speed. Fusing tables adds up their footprints, which makes fusion
  super-additive once the sum outgrows the cache;
- ``m(S) = sig((log2 S - log2 cache_bytes) / cache_transition_octaves)``: the share of
  first touches that miss (smooth in ``log S``); ``span = sig(...)`` the same of the
  table's own bytes (TLB reach: lookups into a table bigger than the cache cost more);
- forward work (ns)::

      B * fwd_bag_ns + L * (fwd_lookup_ns + fwd_extra_line_ns * (lines - 1)
                            + fwd_table_span_ns * span)
      + U * lines * (fwd_first_touch_ns + fwd_miss_ns * m(S))
      + B * dim * fwd_output_ns_per_value

- backward work (ns), with ``passes = ceil(bits(rows) / 8)`` the passes of FBGEMM's
  8-bit radix sort over ids below ``rows``::

      B * bwd_bag_ns + L * (bwd_lookup_ns + bwd_sort_pass_ns * passes
                            + bwd_extra_line_ns * (lines - 1))
      + U * (bwd_distinct_ns + m(S) * (bwd_miss_ns + bwd_miss_extra_line_ns * (lines - 1)))

  The update of a distinct row has no prefetch, so its miss costs far more than a
  forward miss (the forward kernel prefetches rows 16 lookups ahead).

Per shard ``fwd_ms = fwd_op_fixed_ms + sum(forward work)`` and ``bwd_ms = bwd_op_fixed_ms
+ sum(backward work)``. A device without tables runs no operator and costs nothing. The
access histogram is taken as defined at ``DEFAULT_BATCH_SIZE``; at other batch sizes the
first-touch share ``U / L`` is kept, which is an approximation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from dreamshard.backends.base import ShardTiming, stage_synchronous_cost_ms
from dreamshard.backends.comm import ExchangeWidths, exchange_of
from dreamshard.backends.sim.profile import (
    DEFAULT_PROFILE_NAME,
    KernelParams,
    SimProfile,
    load_profile,
)
from dreamshard.constants import BYTES_PER_ELEMENT, DEFAULT_BATCH_SIZE, NUM_ACCESS_BINS
from dreamshard.data.synthetic import BIN_MEAN_ACCESS_COUNT
from dreamshard.errors import InputError, InvalidPlacementError
from dreamshard.types import (
    FloatArray,
    IntArray,
    Placement,
    PlacementCost,
    TableSpec,
    Task,
    synchronized_costs,
)

#: Bytes of one cache line: a row occupies at least one line.
CACHE_LINE_BYTES = 64

#: Bits per pass of FBGEMM's CPU radix sort of the ids in the backward (``fbgemm::
#: radix_sort_parallel``: 8-bit digits, as many passes as the largest id needs).
RADIX_BITS_PER_PASS = 8

_NS_PER_MS = 1e6

#: Mean access count of each histogram bin as ``synthetic.generate_ids`` draws them
#: (log-uniform within a bin), so that the distinct rows per batch the model assumes are
#: those the FBGEMM backend's generated ids have.
_BIN_COUNTS: FloatArray = np.asarray(BIN_MEAN_ACCESS_COUNT, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableFeatures:
    """Placement-independent quantities of tables at a batch size (arrays, one per table).

    Attributes:
        lookups: Lookups per batch, ``B * pooling_factor``.
        batch: Batch size of each table's shard.
        dims: Embedding dims (output width).
        distinct: Distinct rows touched per batch, ``U``.
        lines: Cache lines per row, ``max(1, row_bytes / 64)``.
        sort_passes: Radix-sort passes over the table's ids.
        log2_table_bytes: log2 of the table's bytes.
    """

    lookups: FloatArray
    batch: FloatArray
    dims: FloatArray
    distinct: FloatArray
    lines: FloatArray
    sort_passes: FloatArray
    log2_table_bytes: FloatArray

    @property
    def footprint_bytes(self) -> FloatArray:
        """Bytes of the cache lines holding the rows a batch touches, ``U * lines * 64``."""
        out: FloatArray = self.distinct * self.lines * CACHE_LINE_BYTES
        return out


def table_features(tables: Sequence[TableSpec], batch_sizes: Sequence[int]) -> TableFeatures:
    """Compute the per-table quantities of the model (see the module docstring).

    Args:
        tables: The tables.
        batch_sizes: Batch size of each table's shard, one per table.

    Raises:
        InputError: A table with non-positive rows or dim, a negative pooling factor, or
            an access histogram that is negative or sums to zero.
    """
    for table in tables:
        if table.rows <= 0 or table.dim <= 0 or not 0 <= table.pooling_factor < math.inf:
            raise InputError(
                f"table {table.name!r}: rows and dim must be positive and pooling_factor "
                f"non-negative (rows={table.rows}, dim={table.dim}, "
                f"pooling_factor={table.pooling_factor})"
            )
        hist_sum = sum(table.access_hist)
        if not (hist_sum > 0 and all(h >= 0 for h in table.access_hist)):
            raise InputError(
                f"table {table.name!r}: access_hist must be non-negative with a positive sum"
            )
    rows = np.array([t.rows for t in tables], dtype=np.float64)
    dims = np.array([t.dim for t in tables], dtype=np.float64)
    pooling = np.array([t.pooling_factor for t in tables], dtype=np.float64)
    elem_bytes = np.array([BYTES_PER_ELEMENT[t.dtype] for t in tables], dtype=np.float64)
    hist = np.array([t.access_hist for t in tables], dtype=np.float64).reshape(
        len(tables), NUM_ACCESS_BINS
    )
    hist = hist / hist.sum(axis=1, keepdims=True)  # tolerate rounding in files
    # Radix passes: ceil(bits / 8) of the largest id the sort is told about (rows).
    bits = np.array([int(t.rows).bit_length() for t in tables], dtype=np.float64)
    batch = np.asarray(batch_sizes, dtype=np.float64)

    lookups = batch * pooling
    row_bytes = dims * elem_bytes
    # Distinct rows touched per batch; a table cannot touch more rows than it has.
    distinct = np.minimum(rows, lookups / (hist @ _BIN_COUNTS))
    return TableFeatures(
        lookups=lookups,
        batch=batch,
        dims=dims,
        distinct=distinct,
        lines=np.maximum(row_bytes / CACHE_LINE_BYTES, 1.0),
        sort_passes=np.maximum(np.ceil(bits / RADIX_BITS_PER_PASS), 1.0),
        log2_table_bytes=np.log2(rows * row_bytes),
    )


def _sum_by(index: IntArray, weights: FloatArray | None, size: int) -> FloatArray:
    """Sum of ``weights`` (or counts) per group ``index`` over ``0..size-1``, as floats."""
    return np.asarray(np.bincount(index, weights=weights, minlength=size), dtype=np.float64)


def _sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
    return out


def _miss_share(k: KernelParams, size_bytes: FloatArray) -> FloatArray:
    """Share of first touches that miss, for a footprint (or table) of ``size_bytes``.

    Smooth in ``log2`` of the size, half at ``cache_bytes``; sizes below one byte count
    as one byte (nothing to miss).
    """
    log2_size = np.log2(np.maximum(size_bytes, 1.0))
    return _sigmoid((log2_size - math.log2(k.cache_bytes)) / k.cache_transition_octaves)


@dataclass(frozen=True)
class TableTerms:
    """Per-table work in ns, split by what the shard's footprint multiplies.

    Attributes:
        fwd_ns: Forward work independent of the footprint.
        fwd_miss_ns: Forward work per unit of the shard's miss share ``m(S)``.
        bwd_ns: Backward work independent of the footprint.
        bwd_miss_ns: Backward work per unit of ``m(S)``.
        footprint_bytes: The table's share of the footprint ``S``.
        dims: Embedding dims (output width).
    """

    fwd_ns: FloatArray
    fwd_miss_ns: FloatArray
    bwd_ns: FloatArray
    bwd_miss_ns: FloatArray
    footprint_bytes: FloatArray
    dims: FloatArray


def table_terms(k: KernelParams, feats: TableFeatures) -> TableTerms:
    """The work of each table, before the per-shard cache miss share is known.

    Args:
        k: Kernel parameters.
        feats: The tables' features (:func:`table_features`).
    """
    lookups, distinct, extra_lines = feats.lookups, feats.distinct, feats.lines - 1.0
    span = _sigmoid(
        (feats.log2_table_bytes - math.log2(k.cache_bytes)) / k.cache_transition_octaves
    )
    fwd = (
        feats.batch * (k.fwd_bag_ns + k.fwd_output_ns_per_value * feats.dims)
        + lookups
        * (k.fwd_lookup_ns + k.fwd_extra_line_ns * extra_lines + k.fwd_table_span_ns * span)
        + distinct * feats.lines * k.fwd_first_touch_ns
    )
    bwd = (
        feats.batch * k.bwd_bag_ns
        + lookups
        * (
            k.bwd_lookup_ns
            + k.bwd_sort_pass_ns * feats.sort_passes
            + k.bwd_extra_line_ns * extra_lines
        )
        + distinct * k.bwd_distinct_ns
    )
    return TableTerms(
        fwd_ns=fwd,
        fwd_miss_ns=distinct * feats.lines * k.fwd_miss_ns,
        bwd_ns=bwd,
        bwd_miss_ns=distinct * (k.bwd_miss_ns + k.bwd_miss_extra_line_ns * extra_lines),
        footprint_bytes=feats.footprint_bytes,
        dims=feats.dims,
    )


def _shard_ms(
    k: KernelParams,
    num_tables: FloatArray,
    footprint_bytes: FloatArray,
    fwd_ns: FloatArray,
    fwd_miss_ns: FloatArray,
    bwd_ns: FloatArray,
    bwd_miss_ns: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Forward and backward ms of shards from their summed table terms (vectorised).

    Shards with no tables run no operator and cost 0.
    """
    miss = _miss_share(k, footprint_bytes)
    fwd = k.fwd_op_fixed_ms + (fwd_ns + miss * fwd_miss_ns) / _NS_PER_MS
    bwd = k.bwd_op_fixed_ms + (bwd_ns + miss * bwd_miss_ns) / _NS_PER_MS
    present = num_tables > 0
    return np.where(present, fwd, 0.0), np.where(present, bwd, 0.0)


def shards_ms(
    k: KernelParams, terms: TableTerms, group: IntArray, num_groups: int
) -> tuple[FloatArray, FloatArray]:
    """Forward and backward ms of the shards formed by grouping tables by ``group``.

    Args:
        k: Kernel parameters.
        terms: Work of each table (:func:`table_terms`).
        group: Shard of each table, in ``0..num_groups-1``.
        num_groups: Number of shards; a shard without tables costs 0.

    Returns:
        Arrays ``[num_groups]`` of forward and backward ms.
    """
    return _shard_ms(
        k,
        _sum_by(group, None, num_groups),
        _sum_by(group, terms.footprint_bytes, num_groups),
        _sum_by(group, terms.fwd_ns, num_groups),
        _sum_by(group, terms.fwd_miss_ns, num_groups),
        _sum_by(group, terms.bwd_ns, num_groups),
        _sum_by(group, terms.bwd_miss_ns, num_groups),
    )


def shard_timing(
    profile: SimProfile, tables: Sequence[TableSpec], batch_size: int = DEFAULT_BATCH_SIZE
) -> ShardTiming:
    """Simulated forward and backward cost of one shard (tables fused into one operator).

    Args:
        profile: Calibration to use.
        tables: The tables fused on the device; empty means no operator (cost 0).
        batch_size: Global batch size in samples.

    Returns:
        The shard's forward and backward computation times in ms.
    """
    check_batch_size(batch_size)
    if not tables:
        return ShardTiming(fwd_comp_ms=0.0, bwd_comp_ms=0.0)
    feats = table_features(tables, [batch_size] * len(tables))
    terms = table_terms(profile.kernel, feats)
    fwd, bwd = shards_ms(profile.kernel, terms, np.zeros(len(tables), dtype=np.int64), 1)
    return ShardTiming(fwd_comp_ms=float(fwd[0]), bwd_comp_ms=float(bwd[0]))


def check_batch_size(batch_size: int) -> None:
    """Raise InputError unless ``batch_size`` is a positive integer (bools are not)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


# ---------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TaskTerms:
    """Per-task precomputation: everything about a placement's cost except the grouping."""

    table: TableTerms
    memory_bytes: FloatArray
    capacity_bytes: FloatArray
    #: Dims of each unit that is a row-wise block (its output goes through the
    #: reduce-scatter over every device), 0 for the others.
    row_dims: FloatArray
    #: Dims of each unit that is a table-row-wise block (reduce-scatter within its host,
    #: all-to-all across hosts), 0 for the others.
    host_row_dims: FloatArray


def _dims_of(task: Task, exchange: str) -> FloatArray:
    """Each unit's dim where its output is exchanged as ``exchange``
    (:func:`~dreamshard.backends.comm.exchange_of`), else 0."""
    return np.array(
        [t.dim if exchange_of(t) == exchange else 0 for t in task.tables], dtype=np.float64
    )


#: Number of tasks whose per-table terms a SimBackend keeps.
_TASK_CACHE_SIZE = 64


class SimBackend:
    """Cost backend on the analytical model (METHOD.md section 5, "Simulated").

    Deterministic: ``rel_spread`` is None. Per-table terms are computed once per task
    and cached, so that a placement costs a few ``np.bincount`` calls.

    Args:
        profile: Calibration; defaults to the packaged ``"cpu-zen4"`` profile.
        batch_size: Global batch size in samples.
    """

    name = "sim"

    def __init__(
        self, profile: SimProfile | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        check_batch_size(batch_size)
        self._profile = profile if profile is not None else load_profile(DEFAULT_PROFILE_NAME)
        self._batch_size = batch_size
        self._cache: OrderedDict[Task, _TaskTerms] = OrderedDict()
        self._last: tuple[Task, _TaskTerms] | None = None

    # Read-only: the cached per-task terms depend on both.
    @property
    def profile(self) -> SimProfile:
        """The calibration in use."""
        return self._profile

    @property
    def batch_size(self) -> int:
        """Global batch size in samples."""
        return self._batch_size

    def _terms(self, task: Task) -> _TaskTerms:
        # Identity first: hashing a task hashes every table, which costs more than a
        # whole evaluation for search loops that score many placements of one task.
        if self._last is not None and self._last[0] is task:
            return self._last[1]
        terms = self._cache.get(task)
        if terms is None:
            feats = table_features(task.tables, [self.batch_size] * task.num_tables)
            terms = _TaskTerms(
                table=table_terms(self.profile.kernel, feats),
                memory_bytes=np.array(
                    [task.table_memory_bytes(t) for t in task.tables], dtype=np.float64
                ),
                capacity_bytes=np.array([d.memory_bytes for d in task.devices], dtype=np.float64),
                row_dims=_dims_of(task, "rows"),
                host_row_dims=_dims_of(task, "host_rows"),
            )
            self._cache[task] = terms
            if len(self._cache) > _TASK_CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(task)
        self._last = (task, terms)
        return terms

    def _device_costs(
        self, task: Task, device_of: IntArray
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
        """Per-device fwd ms, bwd ms and output widths of a placement (unvalidated): of
        the all-to-all, of the row-wise blocks and of the table-row-wise blocks."""
        terms = self._terms(task)
        num_devices = task.num_devices
        fwd, bwd = shards_ms(self.profile.kernel, terms.table, device_of, num_devices)
        rows = _sum_by(device_of, terms.row_dims, num_devices)
        host_rows = _sum_by(device_of, terms.host_row_dims, num_devices)
        width = _sum_by(device_of, terms.table.dims, num_devices) - rows - host_rows
        return fwd, bwd, width, rows, host_rows

    def _exchange_ms(
        self, task: Task, width: FloatArray, rows: FloatArray, host_rows: FloatArray
    ) -> tuple[float, float]:
        """(forward, backward) ms of the output exchange (comm.AllToAllModel.exchange_ms)."""
        # Output widths are sums of integer dims, so the rounding is exact.
        a2a, row, host_row = (
            np.rint(w).astype(np.int64).tolist() for w in (width, rows, host_rows)
        )
        widths = ExchangeWidths(a2a, row, host_row, task.host_size)
        return self.profile.comm.exchange_ms(widths, self.batch_size)

    def _checked_device_of(self, task: Task, device_of: Sequence[int] | IntArray) -> IntArray:
        """The placement as an index array, validated like ``Placement.validate``."""
        dev = np.asarray(device_of, dtype=np.int64)
        if dev.shape != (task.num_tables,):
            raise InvalidPlacementError(
                f"placement covers {dev.size} tables, task {task.name!r} has {task.num_tables}"
            )
        if dev.min() < 0 or dev.max() >= task.num_devices:
            bad = int(np.flatnonzero((dev < 0) | (dev >= task.num_devices))[0])
            raise InvalidPlacementError(
                f"table {task.tables[bad].name!r} is on device {int(dev[bad])}, task "
                f"{task.name!r} has devices 0..{task.num_devices - 1}"
            )
        terms = self._terms(task)
        used = _sum_by(dev, terms.memory_bytes, task.num_devices)
        over = np.flatnonzero(used > terms.capacity_bytes)
        if over.size:
            d = int(over[0])
            raise InvalidPlacementError(
                f"device {d} ({task.devices[d].name}) holds {int(used[d]):,} bytes of tables "
                f"but has {task.devices[d].memory_bytes:,} bytes"
            )
        return dev

    @staticmethod
    def _resolved(task: Task, placement: Placement) -> tuple[Task, Placement]:
        """The task of a placement's units and their table-wise placement, split
        placements validated first (their splits and row layout)."""
        if placement.is_table_wise:
            return task, placement
        placement.validate(task)
        return placement.resolve(task)

    def stage_model(self, task: Task) -> SimStageModel:
        """The simulator's cost of ``task`` in the additive form searches use
        (:class:`~dreamshard.types.StageCostModel`): the same numbers as :meth:`cost_ms`."""
        return SimStageModel(self, task)

    def measure(self, task: Task, placements: Sequence[Placement]) -> list[PlacementCost]:
        """Simulated per-device stage costs of each placement, in the order given.

        Raises:
            InvalidPlacementError: A placement does not fit the task (memory included).
        """
        out: list[PlacementCost] = []
        for placement in placements:
            units, table_wise = self._resolved(task, placement)
            dev = self._checked_device_of(units, table_wise.device_of)
            fwd, bwd, width, rows, host_rows = self._device_costs(units, dev)
            fwd_a2a, bwd_a2a = self._exchange_ms(units, width, rows, host_rows)
            per_device = synchronized_costs(fwd.tolist(), bwd.tolist(), fwd_a2a, bwd_a2a)
            out.append(PlacementCost(per_device=per_device, backend=self.name, rel_spread=None))
        return out

    def cost_ms(self, task: Task, placement: Placement | Sequence[int] | IntArray) -> float:
        """Overall cost of one placement (fast path, same number as ``measure``).

        ``max fwd + 2 * all-to-all + max bwd`` (METHOD.md section 1, stage-synchronous).

        Args:
            task: The task.
            placement: A ``Placement`` or its ``device_of`` indices.

        Raises:
            InvalidPlacementError: The placement does not fit the task (memory included).
        """
        if isinstance(placement, Placement):
            task, placement = self._resolved(task, placement)
        device_of = placement.device_of if isinstance(placement, Placement) else placement
        dev = self._checked_device_of(task, device_of)
        fwd, bwd, width, rows, host_rows = self._device_costs(task, dev)
        fwd_a2a, bwd_a2a = self._exchange_ms(task, width, rows, host_rows)
        return float(stage_synchronous_cost_ms(fwd, bwd, fwd_a2a, bwd_a2a))

    def costs_ms(self, task: Task, device_of: IntArray) -> FloatArray:
        """Overall costs of many placements of one task at once.

        Args:
            task: The task.
            device_of: Integer array ``[placements, tables]`` of device indices.

        Returns:
            Array ``[placements]`` of costs in ms, equal to ``cost_ms`` of each row.

        Raises:
            InvalidPlacementError: A row does not fit the task (memory included).
        """
        dev = np.asarray(device_of, dtype=np.int64)
        if dev.ndim != 2:
            raise InvalidPlacementError(
                f"device_of must be [placements, tables], got shape {dev.shape}"
            )
        for row in dev:
            self._checked_device_of(task, row)
        table = self._terms(task).table
        num_placements, num_devices = dev.shape[0], task.num_devices
        # One grouping over (placement, device) pairs: index p * D + d, with the per-table
        # terms tiled once per placement.
        flat = (dev + num_devices * np.arange(num_placements)[:, None]).ravel()
        tiled = TableTerms(
            **{f.name: np.tile(getattr(table, f.name), num_placements) for f in fields(table)}
        )
        size = num_placements * num_devices
        fwd, bwd = shards_ms(self.profile.kernel, tiled, flat, size)
        terms = self._terms(task)
        rows, host_rows = (
            _sum_by(flat, np.tile(dims, num_placements), size).reshape(num_placements, num_devices)
            for dims in (terms.row_dims, terms.host_row_dims)
        )
        width = (
            _sum_by(flat, tiled.dims, size).reshape(num_placements, num_devices) - rows - host_rows
        )
        exchange = np.array(
            [
                self._exchange_ms(task, w, r, h)
                for w, r, h in zip(width, rows, host_rows, strict=True)
            ]
        )
        return stage_synchronous_cost_ms(
            fwd.reshape(num_placements, num_devices),
            bwd.reshape(num_placements, num_devices),
            exchange[:, 0],
            exchange[:, 1],
        )


class SimStageModel:
    """The simulator's placement cost of one task as a :class:`~dreamshard.types.StageCostModel`.

    A shard's cost depends on its tables only through sums of per-table terms (the
    ``TableTerms`` fields: work, work per unit of miss share, footprint, width), so a
    table's vector holds its terms and a device's stage costs (forward, backward, both
    all-to-alls) follow from their sums. ``sum over stages of max over devices`` of
    :meth:`stage_costs` is :meth:`SimBackend.cost_ms`; memory is not checked here.
    """

    #: Vector components, in order (``dims``: all-to-all output width; ``row_dims``: that
    #: of row-wise blocks, whose reduce-scatter and all-gather follow the all-to-all;
    #: ``host_row_dims``: that of table-row-wise blocks).
    COMPONENTS: tuple[str, ...] = (
        "fwd_ns",
        "fwd_miss_ns",
        "bwd_ns",
        "bwd_miss_ns",
        "footprint_bytes",
        "dims",
        "row_dims",
        "host_row_dims",
    )

    def __init__(self, backend: SimBackend, task: Task) -> None:
        task_terms = backend._terms(task)
        terms = task_terms.table
        self._kernel = backend.profile.kernel
        self._comm = backend.profile.comm
        self._batch_size = backend.batch_size
        self._num_devices = task.num_devices
        self._host_size = task.host_size
        row_dims, host_row_dims = task_terms.row_dims, task_terms.host_row_dims
        columns = {
            "dims": terms.dims - row_dims - host_row_dims,
            "row_dims": row_dims,
            "host_row_dims": host_row_dims,
        }
        self._vectors = np.stack(
            [
                columns[name] if name in columns else getattr(terms, name)
                for name in self.COMPONENTS
            ],
            axis=1,
        )
        self._total_width = float(columns["dims"].sum())
        self._total_rows = float(row_dims.sum())
        # Summed over the blocks: every device of a host holds a block of each of its
        # table-row-wise tables, so this is the sum over devices of their hosts' W_h.
        self._total_host_rows = float(host_row_dims.sum())

    @property
    def table_vectors(self) -> FloatArray:
        return self._vectors

    def stage_costs(self, sums: FloatArray, counts: FloatArray) -> FloatArray:
        fwd_ns, fwd_miss_ns, bwd_ns, bwd_miss_ns, footprint, width, rows, host_rows = np.moveaxis(
            sums, -1, 0
        )
        fwd, bwd = _shard_ms(
            self._kernel, counts, footprint, fwd_ns, fwd_miss_ns, bwd_ns, bwd_miss_ns
        )
        # Output widths are sums of integer dims (exact after rounding), as in cost_ms.
        comm = np.zeros_like(fwd)
        if self._total_width > 0:
            a2a = self._comm.device_time_ms(
                np.rint(width), self._total_width, self._num_devices, self._batch_size
            )
            comm = comm + 2.0 * a2a
        if self._total_rows > 0:
            # Every device holds one block of every row-wise table (their layout), so this
            # term is the same on every device and the max over devices adds up as in
            # cost_ms: all-to-all, then reduce-scatter forward and all-gather backward.
            row = self._comm.device_time_ms(
                np.rint(rows), self._total_rows, self._num_devices, self._batch_size
            )
            comm = comm + (self._comm.reduce_scatter_factor + self._comm.all_gather_factor) * row
        stages = [fwd, bwd, comm]
        if self._total_host_rows > 0:
            # Two stages of their own, so the sum over stages of the slowest device is
            # cost_ms's: within-host reduce-scatter (+ all-gather), across-host
            # all-to-all (forward and backward).
            intra, cross = self._comm.host_row_device_ms(
                np.rint(host_rows),
                self._total_host_rows,
                self._host_size,
                self._num_devices,
                self._batch_size,
            )
            gather = self._comm.reduce_scatter_factor + self._comm.all_gather_factor
            stages += [gather * intra, 2.0 * cross]
        out: FloatArray = np.stack(stages, axis=-1)
        return out
