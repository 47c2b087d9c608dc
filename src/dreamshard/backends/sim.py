"""Simulated cost backend: an analytical model of fused TBE computation costs.

METHOD.md section 5 asks for a fast simulator of the per-device costs of FBGEMM's fused
table-batched embedding (TBE) that keeps the qualitative effects of fusion, so that
naive size or dim proxies are not optimal on it. The model below is built from the
behaviour of the real CPU kernels recorded in MEASUREMENT.md, has 16 positive
parameters (``KernelParams``) and is calibrated with ``fit_profile`` on measured shards.

Model of one shard (the ``n`` tables fused into one operator on one device), at batch
size ``B``. Per table ``t`` with ``L = B * pooling_factor`` lookups, row bytes ``rb``,
``lines = max(1, rb / 64)`` cache lines per row and access histogram ``h``:

- distinct rows touched per batch ``U = min(rows, L / mean_count(h))``; the share of
  lookups that are the first touch of their row in the batch is ``ft = U / L``, the
  rest are repeats of rows touched earlier in the same batch (skew, MEASUREMENT.md);
- miss penalty of a working set of ``S`` bytes (smooth, saturating in ``log S``)::

      P(S) = near_miss_ns * sig((log2 S - log2 C_near) / w)
           + last_level_miss_ns * sig((log2 S - log2 C_llc) / w)

  where first touches see the whole table (``S = rows * rb``: its rows stay cached
  between batches only if the table fits) and repeats see the hot working set
  (``S = U * (1 - h_0) * rb``, rows touched more than once);
- forward cost per lookup (ns), non-linear in dim because the in-cache part grows with
  bytes while misses grow with lines, and the latter only for tables that miss::

      c_t = fwd_lookup_ns + fwd_row_ns_per_byte * rb
            + (1 + extra_line_fraction * (lines - 1)) * (ft * P(table) + (1 - ft) * P(hot))

- forward work ``L * c_t + fwd_output_ns_per_value * B * dim`` (writing the outputs);
  backward work ``L * (bwd_lookup_factor * c_t + bwd_sort_ns_per_lookup)
  + bwd_grad_ns_per_value * B * dim`` (reading the output gradients).

Per shard, with ``W`` the total output width (sum of dims)::

    fwd_ms = fwd_op_fixed_ms + n * fwd_table_fixed_ms
             + sum(fwd work) / (1 + fwd_fusion_discount * (1 - 1/n))
    bwd_ms = bwd_op_fixed_ms + n * bwd_table_fixed_ms
             + sum(bwd work) * (1 + bwd_wide_fusion_penalty * W / (W + 512))

A device without tables runs no operator and costs nothing. The access histogram is
taken as defined at ``DEFAULT_BATCH_SIZE``; at other batch sizes the first-touch share
is kept, which is an approximation.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import least_squares

from dreamshard.backends.base import ShardSample, ShardTiming
from dreamshard.backends.comm import AllToAllModel
from dreamshard.constants import (
    ACCESS_BIN_UPPER_EDGES,
    BYTES_PER_ELEMENT,
    DEFAULT_BATCH_SIZE,
    NUM_ACCESS_BINS,
)
from dreamshard.errors import InputError, InvalidPlacementError
from dreamshard.types import Placement, PlacementCost, TableSpec, Task, synchronized_costs

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Version of the profile JSON format written by ``SimProfile.to_dict``.
PROFILE_FORMAT_VERSION = 1

#: Packaged profile used when a ``SimBackend`` is built without one.
DEFAULT_PROFILE_NAME = "cpu-zen4"

#: Package folder of the packaged profiles (``src/dreamshard/profiles/<name>.json``).
_PROFILE_PACKAGE_DIR = "profiles"

#: Bytes of one cache line: a missed row costs one line, or more for wider rows.
CACHE_LINE_BYTES = 64

#: Total output width (dims) at which the backward super-additivity of wide shards is
#: half its maximum: MEASUREMENT.md sees +12-16% at widths of 1000+.
WIDE_SHARD_HALF_WIDTH_DIMS = 512.0

_NS_PER_MS = 1e6

#: Representative access count of each histogram bin (METHOD.md section 2): counts 1 and
#: 2 for the first two bins, the mean of the integers in (2^(k-1), 2^k] for the doubling
#: bins, and 2^16 for the open last bin (an assumption: its true counts are unbounded).
_BIN_COUNTS: FloatArray = np.array(
    [1.0, 2.0]
    + [(ACCESS_BIN_UPPER_EDGES[k - 1] + 1 + ACCESS_BIN_UPPER_EDGES[k]) / 2.0 for k in range(2, 16)]
    + [2.0 * ACCESS_BIN_UPPER_EDGES[-1]]
)


# ---------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelParams:
    """The fitted parameters of the fused-kernel model; all positive (fit in log space).

    Attributes:
        fwd_op_fixed_ms: Fixed cost of one fused forward call (MEASUREMENT.md: ~0.1 ms).
        bwd_op_fixed_ms: Fixed cost of one fused backward call (~0.05 ms).
        fwd_table_fixed_ms: Forward cost of each table in a fused call.
        bwd_table_fixed_ms: Backward cost of each table (per-table sort set-up; ~0.1 ms
            per table in all, mostly backward).
        fwd_lookup_ns: Forward cost of one lookup independent of its width.
        fwd_row_ns_per_byte: Forward cost per byte of a looked-up row served from cache.
        near_miss_ns: Penalty of the first line of a row missing the near cache (CPU L2).
        last_level_miss_ns: Further penalty of a line missing the last-level cache.
        extra_line_fraction: Cost of each further line of a missed row relative to the
            first (prefetchers make contiguous lines cheaper than the first).
        cache_transition_octaves: Width of the smooth cache-capacity transition, in
            octaves (log2 units) of working-set size.
        fwd_output_ns_per_value: Forward cost per pooled output value written (B x dim).
        bwd_grad_ns_per_value: Backward cost per output-gradient value read (B x dim).
        bwd_lookup_factor: Backward cost of a lookup (gradient + fused SGD update) as a
            multiple of its forward cost.
        bwd_sort_ns_per_lookup: Backward cost per lookup of sorting the ids.
        fwd_fusion_discount: Forward sub-additivity: the fused work is divided by
            ``1 + discount * (1 - 1/n)`` for ``n`` tables (~0.9 of the sum).
        bwd_wide_fusion_penalty: Backward super-additivity of wide shards: the backward
            work is multiplied by ``1 + penalty * W / (W + 512)`` for output width ``W``.
    """

    fwd_op_fixed_ms: float
    bwd_op_fixed_ms: float
    fwd_table_fixed_ms: float
    bwd_table_fixed_ms: float
    fwd_lookup_ns: float
    fwd_row_ns_per_byte: float
    near_miss_ns: float
    last_level_miss_ns: float
    extra_line_fraction: float
    cache_transition_octaves: float
    fwd_output_ns_per_value: float
    bwd_grad_ns_per_value: float
    bwd_lookup_factor: float
    bwd_sort_ns_per_lookup: float
    fwd_fusion_discount: float
    bwd_wide_fusion_penalty: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise InputError(f"kernel parameter {f.name!r} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0.0):
                raise InputError(f"kernel parameter {f.name!r} must be positive, got {value!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Parameter names in their fixed order (the order of ``to_vector``)."""
        return tuple(f.name for f in fields(cls))

    def to_vector(self) -> FloatArray:
        """The parameters as a vector, in ``names()`` order."""
        return np.array([float(getattr(self, n)) for n in self.names()], dtype=np.float64)

    @classmethod
    def from_vector(cls, values: Sequence[float] | FloatArray) -> KernelParams:
        """Parameters from a vector in ``names()`` order."""
        names = cls.names()
        if len(values) != len(names):
            raise InputError(f"expected {len(names)} kernel parameters, got {len(values)}")
        return cls(**{n: float(v) for n, v in zip(names, values, strict=True)})


@dataclass(frozen=True)
class SimProfile:
    """A calibration of the simulator for one kind of hardware.

    Attributes:
        name: Short name (the packaged file name without ``.json``).
        description: What the profile models, in a sentence or two.
        measured: True only when the kernel parameters were fitted to measurements.
        fitted_on: The hardware and measurements behind the numbers, or
            ``"public figures, not measured"``.
        near_cache_bytes: Capacity of the near cache (CPU: per-core L2).
        last_level_cache_bytes: Capacity of the last-level cache (CPU: L3).
        kernel: Parameters of the fused-kernel model.
        comm: All-to-all model used for both communication stages.
    """

    name: str
    description: str
    measured: bool
    fitted_on: str
    near_cache_bytes: int
    last_level_cache_bytes: int
    kernel: KernelParams
    comm: AllToAllModel

    def __post_init__(self) -> None:
        for cache in ("near_cache_bytes", "last_level_cache_bytes"):
            value = getattr(self, cache)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(
                    f"profile {self.name!r}: {cache} must be a positive integer, got {value!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the format ``from_dict`` reads)."""
        return {
            "format_version": PROFILE_FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "measured": self.measured,
            "fitted_on": self.fitted_on,
            "near_cache_bytes": self.near_cache_bytes,
            "last_level_cache_bytes": self.last_level_cache_bytes,
            "kernel": asdict(self.kernel),
            "comm": asdict(self.comm),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile") -> SimProfile:
        """Read a profile dictionary, checking every field.

        Args:
            data: As written by ``to_dict``.
            source: Where it came from, for error messages.

        Raises:
            InputError: A field is missing, unknown, of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object, got {type(data).__name__}")
        expected = {
            "format_version",
            "name",
            "description",
            "measured",
            "fitted_on",
            "near_cache_bytes",
            "last_level_cache_bytes",
            "kernel",
            "comm",
        }
        _check_keys(data, expected, source)
        if data["format_version"] != PROFILE_FORMAT_VERSION:
            raise InputError(
                f"{source}: format_version {data['format_version']!r} is not supported "
                f"(this version reads {PROFILE_FORMAT_VERSION})"
            )
        for key in ("name", "description", "fitted_on"):
            if not isinstance(data[key], str):
                raise InputError(f"{source}: field {key!r} must be a string")
        if not isinstance(data["measured"], bool):
            raise InputError(f"{source}: field 'measured' must be true or false")
        kernel = data["kernel"]
        comm = data["comm"]
        if not isinstance(kernel, dict) or not isinstance(comm, dict):
            raise InputError(f"{source}: fields 'kernel' and 'comm' must be JSON objects")
        _check_keys(kernel, set(KernelParams.names()), f"{source}: kernel")
        _check_keys(comm, {f.name for f in fields(AllToAllModel)}, f"{source}: comm")
        for key in ("latency_ms", "bandwidth_gbps"):
            value = comm[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise InputError(f"{source}: comm.{key} must be a non-negative number")
        if not isinstance(comm["source"], str):
            raise InputError(f"{source}: comm.source must be a string")
        try:
            kernel_params = KernelParams(**kernel)
        except InputError as err:
            raise InputError(f"{source}: {err}") from err
        return cls(
            name=data["name"],
            description=data["description"],
            measured=data["measured"],
            fitted_on=data["fitted_on"],
            near_cache_bytes=data["near_cache_bytes"],
            last_level_cache_bytes=data["last_level_cache_bytes"],
            kernel=kernel_params,
            comm=AllToAllModel(
                latency_ms=float(comm["latency_ms"]),
                bandwidth_gbps=float(comm["bandwidth_gbps"]),
                source=comm["source"],
            ),
        )

    def to_json(self) -> str:
        """The profile as indented, human-readable JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "profile") -> SimProfile:
        """Parse a profile from JSON text; ``source`` names it in error messages."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{source}: not valid JSON ({err})") from err
        return cls.from_dict(data, source)

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON to ``path``."""
        Path(path).write_text(self.to_json(), encoding="utf-8")


def _check_keys(data: dict[str, Any], expected: set[str], source: str) -> None:
    missing = sorted(expected - data.keys())
    unknown = sorted(data.keys() - expected)
    if missing:
        raise InputError(f"{source}: missing field(s) {', '.join(missing)}")
    if unknown:
        raise InputError(f"{source}: unknown field(s) {', '.join(unknown)}")


def available_profiles() -> list[str]:
    """Names of the packaged profiles, sorted."""
    folder = resources.files("dreamshard").joinpath(_PROFILE_PACKAGE_DIR)
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".json")
    )


def load_profile(name_or_path: str | Path) -> SimProfile:
    """Load a packaged profile by name (``"cpu-zen4"``) or a profile JSON file by path.

    A ``Path``, or a string that ends in ``.json`` or contains a path separator, is read
    as a file; any other string names a packaged profile.

    Raises:
        InputError: The file does not exist or is malformed, or no packaged profile has
            that name (the message lists the available ones).
    """
    text_name = str(name_or_path)
    if isinstance(name_or_path, Path) or text_name.endswith(".json") or "/" in text_name:
        path = Path(name_or_path)
        if not path.is_file():
            raise InputError(f"profile file {str(path)!r} does not exist")
        return SimProfile.from_json(path.read_text(encoding="utf-8"), source=str(path))
    names = available_profiles()
    if text_name not in names:
        raise InputError(
            f"unknown simulator profile {text_name!r}; available: {', '.join(names)} "
            "(or give a path to a profile .json file)"
        )
    entry = resources.files("dreamshard").joinpath(_PROFILE_PACKAGE_DIR, f"{text_name}.json")
    return SimProfile.from_json(entry.read_text(encoding="utf-8"), source=f"profile {text_name}")


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TableFeatures:
    """Placement-independent quantities of tables at a batch size (arrays, one per table).

    Attributes:
        lookups: Lookups per batch, ``B * pooling_factor``.
        batch: Batch size of each table's shard.
        dims: Embedding dims (output width).
        row_bytes: Bytes of one row.
        extra_lines: ``lines - 1`` with ``lines = max(1, row_bytes / 64)``.
        first_touch_share: Share of lookups that first-touch their row in the batch.
        log2_table_bytes: log2 of the table's bytes.
        log2_hot_bytes: log2 of the bytes of rows touched more than once per batch.
    """

    lookups: FloatArray
    batch: FloatArray
    dims: FloatArray
    row_bytes: FloatArray
    extra_lines: FloatArray
    first_touch_share: FloatArray
    log2_table_bytes: FloatArray
    log2_hot_bytes: FloatArray


def _table_features(tables: Sequence[TableSpec], batch_sizes: Sequence[int]) -> _TableFeatures:
    """Compute the per-table quantities of the model (see the module docstring)."""
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
    batch = np.asarray(batch_sizes, dtype=np.float64)

    lookups = batch * pooling
    row_bytes = dims * elem_bytes
    mean_count = hist @ _BIN_COUNTS
    # Distinct rows touched per batch; a table cannot touch more rows than it has.
    distinct = np.minimum(rows, lookups / mean_count)
    safe_lookups = np.maximum(lookups, 1.0)
    first_touch = np.where(lookups > 0, np.minimum(distinct / safe_lookups, 1.0), 1.0)
    hot_bytes = distinct * (1.0 - hist[:, 0]) * row_bytes
    return _TableFeatures(
        lookups=lookups,
        batch=batch,
        dims=dims,
        row_bytes=row_bytes,
        extra_lines=np.maximum(row_bytes / CACHE_LINE_BYTES, 1.0) - 1.0,
        first_touch_share=first_touch,
        log2_table_bytes=np.log2(rows * row_bytes),
        # Below one byte the penalty is nil anyway; the floor avoids log2(0).
        log2_hot_bytes=np.log2(np.maximum(hot_bytes, 1.0)),
    )


def _sum_by(index: IntArray, weights: FloatArray | None, size: int) -> FloatArray:
    """Sum of ``weights`` (or counts) per group ``index`` over ``0..size-1``, as floats."""
    return np.asarray(np.bincount(index, weights=weights, minlength=size), dtype=np.float64)


def _sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
    return out


def _table_work_ns(
    k: KernelParams, feats: _TableFeatures, near_log2: float, llc_log2: float
) -> tuple[FloatArray, FloatArray]:
    """Forward and backward work of each table, in ns, before per-shard fusion effects."""
    width = k.cache_transition_octaves

    def penalty(log2_bytes: FloatArray) -> FloatArray:
        # Cost per missed row rises smoothly as the working set outgrows each cache
        # (MEASUREMENT.md: L2 1 MiB, L3 32 MiB on the dev machines).
        return k.near_miss_ns * _sigmoid((log2_bytes - near_log2) / width) + (
            k.last_level_miss_ns * _sigmoid((log2_bytes - llc_log2) / width)
        )

    ft = feats.first_touch_share
    miss_ns = (1.0 + k.extra_line_fraction * feats.extra_lines) * (
        ft * penalty(feats.log2_table_bytes) + (1.0 - ft) * penalty(feats.log2_hot_bytes)
    )
    per_lookup_ns = k.fwd_lookup_ns + k.fwd_row_ns_per_byte * feats.row_bytes + miss_ns
    output_values = feats.batch * feats.dims
    fwd = feats.lookups * per_lookup_ns + k.fwd_output_ns_per_value * output_values
    bwd = (
        feats.lookups * (k.bwd_lookup_factor * per_lookup_ns + k.bwd_sort_ns_per_lookup)
        + k.bwd_grad_ns_per_value * output_values
    )
    return fwd, bwd


def _shard_ms(
    k: KernelParams,
    num_tables: FloatArray,
    width: FloatArray,
    fwd_work_ns: FloatArray,
    bwd_work_ns: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Forward and backward ms of shards from their aggregated table terms (vectorised).

    Shards with no tables run no operator and cost 0.
    """
    present = num_tables > 0
    n = np.maximum(num_tables, 1.0)
    fused_fwd = fwd_work_ns / (1.0 + k.fwd_fusion_discount * (1.0 - 1.0 / n))
    wide = 1.0 + k.bwd_wide_fusion_penalty * width / (width + WIDE_SHARD_HALF_WIDTH_DIMS)
    fwd = k.fwd_op_fixed_ms + n * k.fwd_table_fixed_ms + fused_fwd / _NS_PER_MS
    bwd = k.bwd_op_fixed_ms + n * k.bwd_table_fixed_ms + bwd_work_ns * wide / _NS_PER_MS
    return np.where(present, fwd, 0.0), np.where(present, bwd, 0.0)


def _cache_log2(profile: SimProfile) -> tuple[float, float]:
    return math.log2(profile.near_cache_bytes), math.log2(profile.last_level_cache_bytes)


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
    _check_batch_size(batch_size)
    if not tables:
        return ShardTiming(fwd_comp_ms=0.0, bwd_comp_ms=0.0)
    feats = _table_features(tables, [batch_size] * len(tables))
    fwd_ns, bwd_ns = _table_work_ns(profile.kernel, feats, *_cache_log2(profile))
    fwd, bwd = _shard_ms(
        profile.kernel,
        np.array([float(len(tables))]),
        np.array([feats.dims.sum()]),
        np.array([fwd_ns.sum()]),
        np.array([bwd_ns.sum()]),
    )
    return ShardTiming(fwd_comp_ms=float(fwd[0]), bwd_comp_ms=float(bwd[0]))


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


# ---------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TaskTerms:
    """Per-task precomputation: everything about a placement's cost except the grouping."""

    fwd_work_ns: FloatArray
    bwd_work_ns: FloatArray
    dims: FloatArray
    memory_bytes: FloatArray
    capacity_bytes: FloatArray


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
        _check_batch_size(batch_size)
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
            feats = _table_features(task.tables, [self.batch_size] * task.num_tables)
            fwd, bwd = _table_work_ns(self.profile.kernel, feats, *_cache_log2(self.profile))
            terms = _TaskTerms(
                fwd_work_ns=fwd,
                bwd_work_ns=bwd,
                dims=feats.dims,
                memory_bytes=np.array(
                    [task.table_memory_bytes(t) for t in task.tables], dtype=np.float64
                ),
                capacity_bytes=np.array([d.memory_bytes for d in task.devices], dtype=np.float64),
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
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Per-device fwd ms, bwd ms and output width of a placement (unvalidated)."""
        terms = self._terms(task)
        num_devices = task.num_devices
        counts = _sum_by(device_of, None, num_devices)
        width = _sum_by(device_of, terms.dims, num_devices)
        fwd_ns = _sum_by(device_of, terms.fwd_work_ns, num_devices)
        bwd_ns = _sum_by(device_of, terms.bwd_work_ns, num_devices)
        fwd, bwd = _shard_ms(self.profile.kernel, counts, width, fwd_ns, bwd_ns)
        return fwd, bwd, width

    def _a2a_ms(self, width: FloatArray) -> float:
        # Output widths are sums of integer dims, so the rounding is exact.
        return self.profile.comm.time_ms(np.rint(width).astype(np.int64).tolist(), self.batch_size)

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

    def measure(self, task: Task, placements: Sequence[Placement]) -> list[PlacementCost]:
        """Simulated per-device stage costs of each placement, in the order given.

        Raises:
            InvalidPlacementError: A placement does not fit the task (memory included).
        """
        out: list[PlacementCost] = []
        for placement in placements:
            dev = self._checked_device_of(task, placement.device_of)
            fwd, bwd, width = self._device_costs(task, dev)
            # Forward and backward all-to-alls move tensors of the same size (comm.py).
            a2a = self._a2a_ms(width)
            per_device = synchronized_costs(fwd.tolist(), bwd.tolist(), a2a, a2a)
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
        device_of = placement.device_of if isinstance(placement, Placement) else placement
        dev = self._checked_device_of(task, device_of)
        fwd, bwd, width = self._device_costs(task, dev)
        return float(fwd.max()) + 2.0 * self._a2a_ms(width) + float(bwd.max())

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
        terms = self._terms(task)
        num_placements, num_devices = dev.shape[0], task.num_devices
        # One bincount over (placement, device) pairs: index p * D + d.
        flat = (dev + num_devices * np.arange(num_placements)[:, None]).ravel()
        size = num_placements * num_devices

        def per_device(weights: FloatArray | None) -> FloatArray:
            w = None if weights is None else np.tile(weights, num_placements)
            return _sum_by(flat, w, size).reshape(num_placements, num_devices)

        width = per_device(terms.dims)
        fwd, bwd = _shard_ms(
            self.profile.kernel,
            per_device(None),
            width,
            per_device(terms.fwd_work_ns),
            per_device(terms.bwd_work_ns),
        )
        a2a = np.array([self._a2a_ms(w) for w in width])
        costs: FloatArray = fwd.max(axis=1) + 2.0 * a2a + bwd.max(axis=1)
        return costs


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------


def _samples_arrays(
    samples: Sequence[ShardSample],
) -> tuple[_TableFeatures, IntArray, FloatArray, FloatArray, FloatArray]:
    """Features of every table of every sample, the sample of each table, and per-sample
    table counts, widths and measured (fwd, bwd) stacked as ``[samples, 2]``."""
    if not samples:
        raise InputError("no shard samples given")
    tables: list[TableSpec] = []
    batches: list[int] = []
    owner: list[int] = []
    for i, sample in enumerate(samples):
        if not sample.tables:
            raise InputError(f"shard sample {i} has no tables")
        _check_batch_size(sample.batch_size)
        timing = sample.timing
        if not (timing.fwd_comp_ms > 0 and timing.bwd_comp_ms > 0):
            raise InputError(
                f"shard sample {i}: timings must be positive to fit in log space "
                f"(fwd {timing.fwd_comp_ms} ms, bwd {timing.bwd_comp_ms} ms)"
            )
        tables.extend(sample.tables)
        batches.extend([sample.batch_size] * len(sample.tables))
        owner.extend([i] * len(sample.tables))
    feats = _table_features(tables, batches)
    owner_arr = np.array(owner, dtype=np.int64)
    counts = _sum_by(owner_arr, None, len(samples))
    width = _sum_by(owner_arr, feats.dims, len(samples))
    measured = np.array(
        [[s.timing.fwd_comp_ms, s.timing.bwd_comp_ms] for s in samples], dtype=np.float64
    )
    return feats, owner_arr, counts, width, measured


def _predict_samples(
    k: KernelParams,
    cache_log2: tuple[float, float],
    feats: _TableFeatures,
    owner: IntArray,
    counts: FloatArray,
    width: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    fwd_ns, bwd_ns = _table_work_ns(k, feats, *cache_log2)
    num = counts.size
    return _shard_ms(
        k,
        counts,
        width,
        _sum_by(owner, fwd_ns, num),
        _sum_by(owner, bwd_ns, num),
    )


#: How far (a factor) a fitted parameter may move from its initial value.
_FIT_BOUND_FACTOR = 1e4

#: Log error beyond which a robust loss ("soft_l1", ...) treats a sample as an outlier:
#: about 10%, the top of MEASUREMENT.md's noise for a median of 10 calls.
_FIT_OUTLIER_LOG_ERROR = 0.1


def fit_profile(
    samples: Sequence[ShardSample],
    name: str,
    description: str,
    fitted_on: str,
    comm: AllToAllModel,
    init: SimProfile | None = None,
    *,
    measured: bool = True,
    prior_weight: float = 1e-2,
    loss: str = "linear",
) -> SimProfile:
    """Fit the kernel parameters to measured shards by least squares in log space.

    Minimises the squared errors of ``log(fwd)`` and ``log(bwd)`` (relative errors, so
    tiny and huge shards count alike) over ``log(params)`` (keeps them positive), with
    ``scipy.optimize.least_squares``. A weak pull of ``prior_weight * (log p - log p0)``
    per parameter keeps parameters the samples do not determine (say, cache penalties
    when no sample outgrows a cache) at their initial values instead of drifting.

    Args:
        samples: Measured shards.
        name: Name of the new profile.
        description: Its description.
        fitted_on: The hardware and measurements (for example "FBGEMM CPU 1.8.0, AMD
            EPYC Zen 4, 400 shards, median of 200 calls over 6 windows").
        comm: All-to-all model to store in the profile.
        init: Starting point and cache sizes; defaults to the packaged "cpu-zen4".
        measured: Whether the samples are real measurements (False for synthetic ones).
        prior_weight: Weight of the pull towards ``init``; 0 disables it.
        loss: ``least_squares`` loss: "linear", or "soft_l1" to damp outliers (log
            errors beyond about 0.1, i.e. 10%, count less).

    Returns:
        The fitted profile.

    Raises:
        InputError: No samples, a sample without tables or with a non-positive timing,
            or the optimiser did not converge.
    """
    start = init if init is not None else load_profile(DEFAULT_PROFILE_NAME)
    feats, owner, counts, width, measured_ms = _samples_arrays(samples)
    log_measured = np.log(measured_ms)
    cache_log2 = _cache_log2(start)
    x0 = np.log(start.kernel.to_vector())

    def residuals(x: FloatArray) -> FloatArray:
        k = KernelParams.from_vector(np.exp(x))
        fwd, bwd = _predict_samples(k, cache_log2, feats, owner, counts, width)
        fit = np.concatenate([np.log(fwd) - log_measured[:, 0], np.log(bwd) - log_measured[:, 1]])
        if prior_weight > 0:
            fit = np.concatenate([fit, prior_weight * (x - x0)])
        return fit

    bound = math.log(_FIT_BOUND_FACTOR)
    result = least_squares(
        residuals,
        x0,
        bounds=(x0 - bound, x0 + bound),
        method="trf",
        loss=loss,
        f_scale=_FIT_OUTLIER_LOG_ERROR,
    )
    if not result.success:
        raise InputError(f"fitting profile {name!r} did not converge: {result.message}")
    return SimProfile(
        name=name,
        description=description,
        measured=measured,
        fitted_on=fitted_on,
        near_cache_bytes=start.near_cache_bytes,
        last_level_cache_bytes=start.last_level_cache_bytes,
        kernel=KernelParams.from_vector(np.exp(result.x)),
        comm=comm,
    )


def prediction_errors(
    profile: SimProfile, samples: Sequence[ShardSample]
) -> dict[str, list[float]]:
    """Absolute percentage errors of the profile's predictions on measured shards.

    Returns:
        ``{"fwd": [...], "bwd": [...], "total": [...]}``: per sample, in sample order,
        ``100 * |predicted - measured| / measured`` of the forward, backward and
        forward+backward computation times.
    """
    feats, owner, counts, width, measured_ms = _samples_arrays(samples)
    fwd, bwd = _predict_samples(profile.kernel, _cache_log2(profile), feats, owner, counts, width)
    meas_fwd, meas_bwd = measured_ms[:, 0], measured_ms[:, 1]
    meas_total = meas_fwd + meas_bwd

    def ape(pred: FloatArray, meas: FloatArray) -> list[float]:
        return [float(v) for v in 100.0 * np.abs(pred - meas) / meas]

    return {
        "fwd": ape(fwd, meas_fwd),
        "bwd": ape(bwd, meas_bwd),
        "total": ape(fwd + bwd, meas_total),
    }
