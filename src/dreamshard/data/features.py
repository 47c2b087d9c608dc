"""Table features: the 21 numbers DreamShard describes each table with (METHOD.md section 2).

The features are ``dim``, ``rows``, ``pooling_factor``, ``size_bytes`` and a 17-bin access
histogram. They can be computed from one batch of raw ids (FBGEMM-style indices and
offsets of one table) or read ready-made from a :class:`~dreamshard.types.TableSpec`.
Values here are raw; normalisation belongs to the networks that consume them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dreamshard.constants import (
    ACCESS_BIN_UPPER_EDGES,
    DEFAULT_BATCH_SIZE,
    DIM_MULTIPLE,
    NUM_ACCESS_BINS,
)
from dreamshard.types import FloatArray, IntArray, TableSpec

#: Names of the table features, in the order of :func:`table_features` (METHOD.md section 2).
FEATURE_NAMES: tuple[str, ...] = (
    "dim",
    "rows",
    "pooling_factor",
    "size_bytes",
    *(f"access_bin_{k}" for k in range(NUM_ACCESS_BINS)),
)

#: DreamShard's data pipeline sets rows = max id + 1 but at least this (see
#: shared/data/dlrm_dataset_stats.md), so tiny observed id ranges do not make toy tables.
MIN_ROWS_FROM_IDS = 100

#: :func:`access_histogram` counts with a dense ``bincount`` while the id range is below
#: this or twice the number of ids (count array at most ~2x the ids' memory), else sorts.
_DENSE_COUNT_MIN_RANGE = 1 << 20

_UPPER_EDGES = np.asarray(ACCESS_BIN_UPPER_EDGES, dtype=np.int64)


def access_histogram(ids: npt.ArrayLike) -> FloatArray:
    """Access histogram of one batch of ids of one table (METHOD.md section 2).

    Counts how often each distinct row is accessed and returns the fraction of distinct
    rows whose count falls in (0,1], (1,2], (2,4], ..., (2^14,2^15], and above 2^15.

    Args:
        ids: Non-negative integer row ids of one batch, any shape.

    Returns:
        Array of 17 float64 fractions that sum to 1.

    Raises:
        ValueError: If ``ids`` is empty, not integer or holds negative ids.
    """
    flat = np.asarray(ids).ravel()
    if flat.size == 0:
        raise ValueError("access_histogram needs at least one id, got an empty batch")
    if not np.issubdtype(flat.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {flat.dtype}")
    if flat.min() < 0:
        raise ValueError(f"ids must be non-negative, found {int(flat.min())}")
    max_id = int(flat.max())
    # A dense count is ~20x faster than sorting (np.unique) for 1e7 ids; use it whenever
    # the id range is small enough for the count array to be cheap.
    if max_id < max(2 * flat.size, _DENSE_COUNT_MIN_RANGE):
        counts = np.bincount(flat)
        counts = counts[counts > 0]
    else:
        # Sort and cut at value changes: about 2x faster than np.unique(return_counts=True).
        ordered = np.sort(flat)
        starts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        counts = np.diff(np.concatenate(([0], starts, [ordered.size])))
    # Upper edges are inclusive: count c goes to the first bin whose edge is >= c; counts
    # above the last edge (2^15) land in the open 17th bin.
    bins = np.searchsorted(_UPPER_EDGES, counts, side="left")
    hist = np.bincount(bins, minlength=NUM_ACCESS_BINS).astype(np.float64)
    return hist / counts.size


def _check_offsets(name: str, offsets: IntArray, num_ids: int) -> None:
    if offsets.ndim != 1 or offsets.size < 2:
        raise ValueError(
            f"table {name!r}: offsets must be 1-D with batch+1 >= 2 entries, "
            f"got shape {offsets.shape}"
        )
    if offsets[0] != 0:
        raise ValueError(f"table {name!r}: offsets must start at 0, got {int(offsets[0])}")
    if offsets[-1] != num_ids:
        raise ValueError(
            f"table {name!r}: offsets must end at len(indices)={num_ids}, got {int(offsets[-1])}"
        )
    if np.any(np.diff(offsets) < 0):
        bad = int(np.argmax(np.diff(offsets) < 0))
        raise ValueError(
            f"table {name!r}: offsets must be non-decreasing, offsets[{bad + 1}]="
            f"{int(offsets[bad + 1])} < offsets[{bad}]={int(offsets[bad])}"
        )


def table_from_ids(
    name: str,
    indices: npt.ArrayLike,
    offsets: npt.ArrayLike,
    rows: int | None = None,
    dim: int = 16,
    dtype: str = "fp32",
) -> TableSpec:
    """Build a table's spec from its ids of one batch (FBGEMM indices/offsets layout).

    Bag ``b`` holds ``indices[offsets[b]:offsets[b + 1]]``, so the batch size is
    ``len(offsets) - 1``. Pooling factor, rows and histogram follow the DreamShard data
    pipeline (METHOD.md section 2, shared/data/dlrm_dataset_stats.md).

    Args:
        name: Table name.
        indices: 1-D integer row ids of all bags, concatenated.
        offsets: 1-D bag boundaries, ``batch + 1`` entries, from 0 to ``len(indices)``.
        rows: Hash size; when None, ``max id + 1`` but at least ``MIN_ROWS_FROM_IDS``.
        dim: Embedding dimension, a positive multiple of ``DIM_MULTIPLE``.
        dtype: Training precision of the weights.

    Returns:
        The table's spec, with ``pooling_factor = len(indices) / batch``.

    Raises:
        ValueError: On malformed offsets, an empty batch, ids outside ``[0, rows)`` or a
            bad ``dim``.
    """
    idx = np.asarray(indices)
    offs = np.asarray(offsets, dtype=np.int64)
    if idx.ndim != 1:
        raise ValueError(f"table {name!r}: indices must be 1-D, got shape {idx.shape}")
    if dim <= 0 or dim % DIM_MULTIPLE != 0:
        raise ValueError(
            f"table {name!r}: dim must be a positive multiple of {DIM_MULTIPLE}, got {dim}"
        )
    _check_offsets(name, offs, idx.size)
    if idx.size == 0:
        raise ValueError(f"table {name!r}: the batch has no ids, cannot build its histogram")
    hist = access_histogram(idx)  # also rejects non-integer and negative ids
    max_id = int(idx.max())
    if rows is None:
        rows = max(max_id + 1, MIN_ROWS_FROM_IDS)
    elif max_id >= rows:
        raise ValueError(f"table {name!r}: id {max_id} is out of range for rows={rows}")
    batch_size = offs.size - 1
    return TableSpec(
        name=name,
        rows=int(rows),
        dim=dim,
        pooling_factor=idx.size / batch_size,
        access_hist=tuple(float(x) for x in hist),
        dtype=dtype,
    )


def table_features(table: TableSpec) -> FloatArray:
    """Raw features of one table, in ``FEATURE_NAMES`` order (METHOD.md section 2).

    Args:
        table: The table.

    Returns:
        float64 array of shape ``[len(FEATURE_NAMES)]``.
    """
    head = (table.dim, table.rows, table.pooling_factor, table.size_bytes)
    return np.array((*head, *table.access_hist), dtype=np.float64)


def features_matrix(tables: Sequence[TableSpec]) -> FloatArray:
    """Raw features of several tables, one row per table.

    Args:
        tables: The tables, in the order wanted for the rows.

    Returns:
        float64 array of shape ``[len(tables), len(FEATURE_NAMES)]``.
    """
    out = np.empty((len(tables), len(FEATURE_NAMES)), dtype=np.float64)
    for i, table in enumerate(tables):
        out[i] = table_features(table)
    return out


#: Inputs of the networks derived from the 21 features (beyond the paper): the distinct
#: rows one batch touches, B * pooling / (mean accesses per distinct row), capped at the
#: rows, and the bytes those rows occupy. Kernel cost follows the rows a batch touches
#: (cache footprint) rather than table size, and this ratio is hard for a small ReLU
#: network to compute from the raw histogram.
DERIVED_FEATURE_NAMES: tuple[str, ...] = ("distinct_rows_per_batch", "touched_bytes_per_batch")

#: What the cost and policy networks read, in order.
NETWORK_FEATURE_NAMES: tuple[str, ...] = (*FEATURE_NAMES, *DERIVED_FEATURE_NAMES)

#: Representative access count of each histogram bin: 1, 2, then the geometric middle
#: of (2^(k-1), 2^k], and 2^15.5 for the open last bin.
_BIN_COUNTS = np.array(
    [1.0, 2.0, *(2.0 ** (k - 0.5) for k in range(2, 16)), 2.0**15.5], dtype=np.float64
)


def network_features(tables: Sequence[TableSpec]) -> FloatArray:
    """Raw network inputs ``[len(tables), len(NETWORK_FEATURE_NAMES)]``: the 21 table
    features and the derived ones (histograms are over batches of DEFAULT_BATCH_SIZE)."""
    raw = features_matrix(tables)
    hist = raw[:, len(FEATURE_NAMES) - NUM_ACCESS_BINS : len(FEATURE_NAMES)]
    rows, pooling, size = raw[:, 1], raw[:, 2], raw[:, 3]
    mean_count = np.maximum(hist @ _BIN_COUNTS, 1.0)
    distinct = np.minimum(rows, DEFAULT_BATCH_SIZE * pooling / mean_count)
    touched = distinct * size / rows
    return np.column_stack([raw, distinct, touched])


#: Features that span orders of magnitude and enter the networks as log10(1 + x)
#: (METHOD.md section 2: a fixed log transform generalises better across tasks than
#: per-task normalisation). The pooling factor stays linear: a table's cost grows
#: linearly with its lookups, and with the log transform the cost network generalised
#: markedly worse to unseen tables (held-out placement error 11.5% vs 8.2% on `sim`).
LOG_FEATURES: frozenset[str] = frozenset(
    {"dim", "rows", "size_bytes", "distinct_rows_per_batch", "touched_bytes_per_batch"}
)


def log_transform(raw: FloatArray, log_features: Collection[str] = LOG_FEATURES) -> FloatArray:
    """Apply the fixed log transform to raw network inputs ``[..., len(NETWORK_FEATURE_NAMES)]``."""
    out = np.array(raw, dtype=np.float64, copy=True)
    for k, name in enumerate(NETWORK_FEATURE_NAMES):
        if name in log_features:
            out[..., k] = np.log10(1.0 + out[..., k])
    return out


@dataclass(frozen=True)
class FeatureNormalizer:
    """Log transform, then standardisation with statistics saved with the model.

    Attributes:
        mean: Per-feature mean of the transformed training features.
        std: Per-feature standard deviation (floored, so constant features stay finite).
        log_features: Features that were log-transformed (saved, so a model keeps the
            transform it was trained with).
        clip: Normalised values are clipped to ``[-clip, clip]`` (None: not clipped, as
            in normalisers saved before clipping). A table far outside the training
            range (a 100-row table read 190 times per sample sat 20 standard deviations
            out on one access bin) otherwise gets arbitrary predictions a search then
            exploits; clipped, it looks like the most extreme table the networks know.
            Non-finite values stay non-finite, so they are still refused.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    log_features: tuple[str, ...] = tuple(sorted(LOG_FEATURES))
    clip: float | None = None

    #: Smallest standard deviation used, so a feature constant in training (say, all
    #: dims 16) maps to 0 and unseen values stay finite.
    MIN_STD = 0.05
    #: The clip of newly fitted normalisers, in standard deviations.
    CLIP = 6.0

    @classmethod
    def fit(cls, tables: Sequence[TableSpec]) -> FeatureNormalizer:
        """Statistics of the transformed features of ``tables``."""
        if not tables:
            raise ValueError("cannot fit a feature normaliser on no tables")
        logged = log_transform(network_features(tables))
        std = np.maximum(logged.std(axis=0), cls.MIN_STD)
        return cls(mean=tuple(logged.mean(axis=0).tolist()), std=tuple(std.tolist()), clip=cls.CLIP)

    def transform(self, tables: Sequence[TableSpec]) -> npt.NDArray[np.float32]:
        """Normalised network inputs ``[len(tables), len(NETWORK_FEATURE_NAMES)]``, float32."""
        logged = log_transform(network_features(tables), self.log_features)
        normalised: FloatArray = (logged - np.array(self.mean)) / np.array(self.std)
        if self.clip is not None:
            finite = np.isfinite(normalised)
            normalised = np.where(finite, np.clip(normalised, -self.clip, self.clip), normalised)
        return normalised.astype(np.float32)

    def to_dict(self) -> dict[str, list[float] | list[str] | float | None]:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "log_features": list(self.log_features),
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureNormalizer:
        mean, std = tuple(data["mean"]), tuple(data["std"])
        width = len(NETWORK_FEATURE_NAMES)
        if len(mean) != width or len(std) != width:
            raise ValueError(f"normaliser needs {width} means and stds")
        unknown = set(data["log_features"]) - set(NETWORK_FEATURE_NAMES)
        if unknown:
            raise ValueError(f"normaliser names unknown features {sorted(unknown)}")
        clip = data.get("clip")
        if clip is not None and not (isinstance(clip, int | float) and clip > 0):
            raise ValueError(f"normaliser clip must be a positive number, got {clip!r}")
        return cls(
            mean=mean,
            std=std,
            log_features=tuple(data["log_features"]),
            clip=None if clip is None else float(clip),
        )
