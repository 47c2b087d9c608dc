"""Simulated cost backend: an analytical model of fused TBE computation costs.

METHOD.md section 5 asks for a fast simulator of the per-device costs of FBGEMM's fused
table-batched embedding (TBE) that keeps the qualitative effects of fusion, so that
naive size or dim proxies are not optimal on it. The model below follows what the CPU
kernels do (forward: a pooled gather per bag with software prefetch; backward: per table
a radix sort of the ids, a gather of output-gradient rows per lookup and one fused SGD
update per distinct row) and what 200 measured shards show (MEASUREMENT.md); it has 18
positive parameters (``KernelParams``) and is calibrated with ``fit_profile``.

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

import json
import logging
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
from dreamshard.backends.comm import VOLUME_MODES, AllToAllModel
from dreamshard.constants import BYTES_PER_ELEMENT, DEFAULT_BATCH_SIZE, NUM_ACCESS_BINS
from dreamshard.errors import InputError, InvalidPlacementError
from dreamshard.synthetic import _BIN_MEAN_COUNT
from dreamshard.types import Placement, PlacementCost, TableSpec, Task, synchronized_costs

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Version of the profile JSON format written by ``SimProfile.to_dict``. Version 2 has
#: the footprint model's kernel parameters, the cache capacity among them.
PROFILE_FORMAT_VERSION = 2

#: Packaged profile used when a ``SimBackend`` is built without one.
DEFAULT_PROFILE_NAME = "cpu-zen4"

#: Package folder of the packaged profiles (``src/dreamshard/profiles/<name>.json``).
_PROFILE_PACKAGE_DIR = "profiles"

#: Bytes of one cache line: a row occupies at least one line.
CACHE_LINE_BYTES = 64

#: Bits per pass of FBGEMM's CPU radix sort of the ids in the backward (``fbgemm::
#: radix_sort_parallel``: 8-bit digits, as many passes as the largest id needs).
RADIX_BITS_PER_PASS = 8

_NS_PER_MS = 1e6

#: Mean access count of each histogram bin as ``synthetic.generate_ids`` draws them
#: (log-uniform within a bin), so that the distinct rows per batch the model assumes are
#: those the FBGEMM backend's generated ids have.
_BIN_COUNTS: FloatArray = np.asarray(_BIN_MEAN_COUNT, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelParams:
    """The fitted parameters of the fused-kernel model; all positive (fit in log space).

    Costs in ns are per unit of work of one table of a shard; see the module docstring
    for the equations.

    Attributes:
        fwd_op_fixed_ms: Fixed cost of one fused forward call (MEASUREMENT.md: ~0.1 ms).
        fwd_bag_ns: Forward cost per table and sample (the kernel's per-bag work,
            writing the pooled row included): ~0.1 ms per table at batch 4096.
        fwd_lookup_ns: Forward cost of one lookup of a one-line row found in cache.
        fwd_extra_line_ns: Forward cost per lookup of each further cache line of a row.
        fwd_table_span_ns: Further forward cost per lookup into a table bigger than the
            cache (address translation; smooth in the table's bytes).
        fwd_first_touch_ns: Forward cost per line of the first touch of a row in a batch.
        fwd_miss_ns: Further forward cost per line of a first touch that misses the cache
            (the shard's footprint outgrows it); small, the kernel prefetches.
        fwd_output_ns_per_value: Forward cost per pooled output value written (B x dim).
        bwd_op_fixed_ms: Fixed cost of one fused backward call.
        bwd_bag_ns: Backward cost per table and sample (building the sort's input).
        bwd_lookup_ns: Backward cost of one lookup (gathering its output-gradient row).
        bwd_sort_pass_ns: Backward cost per lookup of each pass of the radix sort.
        bwd_extra_line_ns: Backward cost per lookup of each further line of a row.
        bwd_distinct_ns: Backward cost per distinct row (its fused SGD update) in cache.
        bwd_miss_ns: Further backward cost per distinct row whose update misses the
            cache (no prefetch: about a memory latency).
        bwd_miss_extra_line_ns: Further cost of each further line of such a row.
        cache_bytes: Effective capacity of the caches that keep a shard's rows between
            batches; fitted (on the Zen 4 VM ~1.6 MiB: the 1 MiB L2 and little of L3).
        cache_transition_octaves: Width of the smooth cache-capacity transition, in
            octaves (log2 units) of footprint.
    """

    fwd_op_fixed_ms: float
    fwd_bag_ns: float
    fwd_lookup_ns: float
    fwd_extra_line_ns: float
    fwd_table_span_ns: float
    fwd_first_touch_ns: float
    fwd_miss_ns: float
    fwd_output_ns_per_value: float
    bwd_op_fixed_ms: float
    bwd_bag_ns: float
    bwd_lookup_ns: float
    bwd_sort_pass_ns: float
    bwd_extra_line_ns: float
    bwd_distinct_ns: float
    bwd_miss_ns: float
    bwd_miss_extra_line_ns: float
    cache_bytes: float
    cache_transition_octaves: float

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
        kernel: Parameters of the fused-kernel model (the cache capacity included).
        comm: All-to-all model used for both communication stages.
    """

    name: str
    description: str
    measured: bool
    fitted_on: str
    kernel: KernelParams
    comm: AllToAllModel

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the format ``from_dict`` reads)."""
        return {
            "format_version": PROFILE_FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "measured": self.measured,
            "fitted_on": self.fitted_on,
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
        if "format_version" in data and data["format_version"] != PROFILE_FORMAT_VERSION:
            raise InputError(
                f"{source}: format_version {data['format_version']!r} is not supported "
                f"(this version reads {PROFILE_FORMAT_VERSION}; profiles of format 1 hold "
                "the parameters of an earlier kernel model: refit them with "
                "`dreamshard calibrate`)"
            )
        expected = {
            "format_version",
            "name",
            "description",
            "measured",
            "fitted_on",
            "kernel",
            "comm",
        }
        _check_keys(data, expected, source)
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
        # "volume" came later: profiles without it keep the full-duplex default.
        _check_keys(
            {"volume": "max", **comm}, {f.name for f in fields(AllToAllModel)}, f"{source}: comm"
        )
        if comm.get("volume", "max") not in VOLUME_MODES:
            raise InputError(f"{source}: comm.volume must be one of {', '.join(VOLUME_MODES)}")
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
            kernel=kernel_params,
            comm=AllToAllModel(
                latency_ms=float(comm["latency_ms"]),
                bandwidth_gbps=float(comm["bandwidth_gbps"]),
                source=comm["source"],
                volume=comm.get("volume", "max"),
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


# The model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TableFeatures:
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
    # Radix passes: ceil(bits / 8) of the largest id the sort is told about (rows).
    bits = np.array([int(t.rows).bit_length() for t in tables], dtype=np.float64)
    batch = np.asarray(batch_sizes, dtype=np.float64)

    lookups = batch * pooling
    row_bytes = dims * elem_bytes
    # Distinct rows touched per batch; a table cannot touch more rows than it has.
    distinct = np.minimum(rows, lookups / (hist @ _BIN_COUNTS))
    return _TableFeatures(
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
class _TableTerms:
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


def _table_terms(k: KernelParams, feats: _TableFeatures) -> _TableTerms:
    """The work of each table, before the per-shard cache miss share is known."""
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
    return _TableTerms(
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


def _shards_ms(
    k: KernelParams, terms: _TableTerms, group: IntArray, num_groups: int
) -> tuple[FloatArray, FloatArray]:
    """Forward and backward ms of the shards formed by grouping tables by ``group``."""
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
    _check_batch_size(batch_size)
    if not tables:
        return ShardTiming(fwd_comp_ms=0.0, bwd_comp_ms=0.0)
    feats = _table_features(tables, [batch_size] * len(tables))
    terms = _table_terms(profile.kernel, feats)
    fwd, bwd = _shards_ms(profile.kernel, terms, np.zeros(len(tables), dtype=np.int64), 1)
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

    table: _TableTerms
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
            terms = _TaskTerms(
                table=_table_terms(self.profile.kernel, feats),
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
        table = self._terms(task).table
        num_devices = task.num_devices
        fwd, bwd = _shards_ms(self.profile.kernel, table, device_of, num_devices)
        return fwd, bwd, _sum_by(device_of, table.dims, num_devices)

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
        table = self._terms(task).table
        num_placements, num_devices = dev.shape[0], task.num_devices
        # One grouping over (placement, device) pairs: index p * D + d, with the per-table
        # terms tiled once per placement.
        flat = (dev + num_devices * np.arange(num_placements)[:, None]).ravel()
        tiled = _TableTerms(
            **{f.name: np.tile(getattr(table, f.name), num_placements) for f in fields(table)}
        )
        size = num_placements * num_devices
        fwd, bwd = _shards_ms(self.profile.kernel, tiled, flat, size)
        width = _sum_by(flat, tiled.dims, size).reshape(num_placements, num_devices)
        a2a = np.array([self._a2a_ms(w) for w in width])
        costs: FloatArray = (
            fwd.reshape(num_placements, num_devices).max(axis=1)
            + 2.0 * a2a
            + bwd.reshape(num_placements, num_devices).max(axis=1)
        )
        return costs


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------


def _samples_arrays(
    samples: Sequence[ShardSample],
) -> tuple[_TableFeatures, IntArray, FloatArray]:
    """Features of every table of every sample, the sample of each table, and the
    measured (fwd, bwd) of every sample stacked as ``[samples, 2]``."""
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
    measured = np.array(
        [[s.timing.fwd_comp_ms, s.timing.bwd_comp_ms] for s in samples], dtype=np.float64
    )
    return _table_features(tables, batches), np.array(owner, dtype=np.int64), measured


def _predict_samples(
    k: KernelParams, feats: _TableFeatures, owner: IntArray, num_samples: int
) -> tuple[FloatArray, FloatArray]:
    return _shards_ms(k, _table_terms(k, feats), owner, num_samples)


#: Residual evaluations the least-squares fit may spend.
_FIT_MAX_EVALUATIONS = 5000

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
    tiny and huge shards count alike) over ``log(params)`` (keeps them positive; the
    cache capacity and its transition width are fitted like the rest), with
    ``scipy.optimize.least_squares``. A weak pull of ``prior_weight * (log p - log p0)``
    per parameter keeps parameters the samples do not determine (say, miss penalties
    when no shard outgrows the cache) at their initial values instead of drifting.

    Args:
        samples: Measured shards.
        name: Name of the new profile.
        description: Its description.
        fitted_on: The hardware and measurements (for example "FBGEMM CPU 1.8.0, AMD
            EPYC Zen 4, 400 shards, median of 200 calls over 6 windows").
        comm: All-to-all model to store in the profile.
        init: Starting point; defaults to the packaged "cpu-zen4".
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
    feats, owner, measured_ms = _samples_arrays(samples)
    num_samples = measured_ms.shape[0]
    log_measured = np.log(measured_ms)
    x0 = np.log(start.kernel.to_vector())

    def residuals(x: FloatArray) -> FloatArray:
        k = KernelParams.from_vector(np.exp(x))
        fwd, bwd = _predict_samples(k, feats, owner, num_samples)
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
        max_nfev=_FIT_MAX_EVALUATIONS,
    )
    if result.status < 0:
        raise InputError(f"fitting profile {name!r} failed: {result.message}")
    if not result.success:
        # Out of evaluations: the fit is still the best found; its errors get reported.
        log.warning("fitting profile %r stopped early: %s", name, result.message)
    return SimProfile(
        name=name,
        description=description,
        measured=measured,
        fitted_on=fitted_on,
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
    feats, owner, measured_ms = _samples_arrays(samples)
    fwd, bwd = _predict_samples(profile.kernel, feats, owner, measured_ms.shape[0])
    meas_fwd, meas_bwd = measured_ms[:, 0], measured_ms[:, 1]
    meas_total = meas_fwd + meas_bwd

    def ape(pred: FloatArray, meas: FloatArray) -> list[float]:
        return [float(v) for v in 100.0 * np.abs(pred - meas) / meas]

    return {
        "fwd": ape(fwd, meas_fwd),
        "bwd": ape(bwd, meas_bwd),
        "total": ape(fwd + bwd, meas_total),
    }
