"""Synthetic DLRM-like tables and the ids of one batch for them.

Two halves:

- :func:`generate_table_pool` draws a pool of tables that resembles Meta's public DLRM
  dataset (shared/data/dlrm_dataset_stats.md): long-tailed row counts and pooling
  factors, and per-table access skew. Each table's access histogram (METHOD.md
  section 2) is the *expected* histogram of Zipf-distributed ids, computed analytically
  by :func:`expected_access_histograms`.
- :func:`generate_ids` draws one batch of ids (FBGEMM indices/offsets) that matches a
  table's rows, pooling factor and access histogram, from the :class:`TableSpec` alone,
  so user tables that come with only a histogram can be measured on hardware backends
  (METHOD.md section 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.special import pdtr

from dreamshard.constants import (
    ACCESS_BIN_UPPER_EDGES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_SEED,
    DIM_MULTIPLE,
    NUM_ACCESS_BINS,
)
from dreamshard.types import FloatArray, IntArray, TableSpec

# Pool shape, chosen so that a pool resembles the public DLRM dataset
# (shared/data/dlrm_dataset_stats.md):
#: log10(rows) is normal with this mean and spread, clipped to [log10(MIN_ROWS), log10(MAX_ROWS)].
ROWS_LOG10_MEAN = 4.6
ROWS_LOG10_STD = 1.3
MIN_ROWS = 100
MAX_ROWS = 20_000_000
#: Share of one-hot-like tables, whose pooling factor is uniform in this range.
ONE_HOT_SHARE = 0.2
ONE_HOT_POOLING_RANGE = (0.6, 1.0)
#: The other tables' pooling factors are log-normal (median, sigma of the log), clipped
#: to the range. Together with the one-hot share the pool mean is ~13.6 ids per sample,
#: the 2022 release's average.
POOLING_MEDIAN = 8.2
POOLING_LOG_SIGMA = 1.2
POOLING_RANGE = (0.05, 500.0)
#: Zipf exponent of each table's ids (0 = uniform), uniform in this range.
SKEW_RANGE = (0.0, 1.2)
#: The Zipf law runs over the table's *active* rows, a fraction 10^u of its rows with u
#: uniform in this range (hash sizes are over-provisioned). At the 2022 batch size
#: (131,072) a pool then has ~47-50% single-access distinct ids (without it ~54%;
#: published 34%), ~115k distinct ids per table (140k) and ~15-17 accesses per distinct
#: id (12.7). Independent Zipf draws cannot match all three at once.
ACTIVE_ROWS_LOG10_RANGE = (-0.65, 0.0)

#: Rank bands per table in the analytic histogram: log-spaced, so that within a band the
#: Zipf rate changes by under 10% even for 2e7 rows.
_NUM_RANK_BANDS = 256

# Access-count bin k holds integer counts in (_BIN_LO[k], _BIN_HI[k]] (METHOD.md section 2).
# The open last bin gets an upper end of 2^17 for drawing counts; _fix_total adjusts.
_BIN_LO = np.array((0, *ACCESS_BIN_UPPER_EDGES), dtype=np.int64)
_BIN_HI = np.array((*ACCESS_BIN_UPPER_EDGES, 2**17), dtype=np.int64)

#: Id ranges up to this size are sampled without replacement by numpy directly.
_SMALL_ID_RANGE = 1 << 20


def _bin_mean_counts() -> FloatArray:
    # Within a bin, counts are drawn as floor(X) with X log-uniform on [lo+1, hi+1), so
    # count c has probability ln(1 + 1/c) / ln((hi+1)/(lo+1)); this is its exact mean.
    c = np.arange(1, int(_BIN_HI[-1]) + 1, dtype=np.float64)
    weight = np.log1p(1.0 / c)
    starts = _BIN_LO  # count c sits at position c-1, so bin k starts at position lo_k
    return np.add.reduceat(c * weight, starts) / np.add.reduceat(weight, starts)


#: Exact mean access count of the rows in each histogram bin under the pool's generator
#: (also what the simulator assumes for a table's distinct rows per batch).
BIN_MEAN_ACCESS_COUNT = _bin_mean_counts()


def _zipf_band_masses(
    rows: FloatArray, skews: FloatArray, num_bands: int
) -> tuple[FloatArray, FloatArray]:
    """Sum of rank^-s over each of ``num_bands`` log-spaced rank bands, and band widths.

    Returns ``(mass, width)``, both ``[tables, num_bands]``. Ranks ``a..b-1`` form a band;
    some bands are empty (width 0) where log spacing is finer than one rank.
    """
    u = np.linspace(0.0, 1.0, num_bands + 1)
    edges = np.rint(np.exp(u[None, :] * np.log(rows + 1.0)[:, None]))  # [T, K+1], 1..rows+1
    lo, hi = edges[:, :-1], edges[:, 1:]
    width = hi - lo
    s = skews[:, None]
    # Wide bands: midpoint-rule integral of x^-s over [a-1/2, b-1/2]; it is exact for s=0
    # and within ~0.1% for the ranks >= 10 where bands get wider than one rank.
    one_minus_s = 1.0 - s
    near_one = np.abs(one_minus_s) < 1e-6
    safe = np.where(near_one, 1.0, one_minus_s)
    a, b = lo - 0.5, hi - 0.5
    integral = np.where(near_one, np.log(b / a), (b**one_minus_s - a**one_minus_s) / safe)
    mass = np.where(width == 1, lo ** (-s), integral)
    mass = np.where(width == 0, 0.0, mass)
    return mass, width


def _expected_rows_per_bin(
    rows: FloatArray, pooling_factors: FloatArray, skews: FloatArray, batch_size: int
) -> FloatArray:
    """Expected number of distinct rows per access-count bin, ``[tables, 17]``."""
    mass, width = _zipf_band_masses(rows, skews, _NUM_RANK_BANDS)
    total_ids = batch_size * pooling_factors
    # Rank r is accessed Poisson(N r^-s / H) times in a batch of N ids (METHOD.md
    # section 2 histogram under a Zipf model); a band uses its mean rate.
    rate = total_ids[:, None] * mass / (mass.sum(axis=1, keepdims=True) * np.maximum(width, 1))
    count_edges = _BIN_LO.astype(np.float64)  # 0, 1, 2, 4, ..., 2^15
    cdf = pdtr(count_edges[None, None, :], rate[:, :, None])  # [T, K, 17]: P(count <= edge)
    probs = np.concatenate([np.diff(cdf, axis=2), 1.0 - cdf[:, :, -1:]], axis=2)
    result: FloatArray = np.einsum("tk,tkb->tb", width, probs)
    return result


def expected_access_histograms(
    rows: npt.ArrayLike,
    pooling_factors: npt.ArrayLike,
    skews: npt.ArrayLike,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> FloatArray:
    """Expected access histograms of tables with Zipf-distributed ids.

    In one batch of ``N = batch_size * pooling_factor`` ids the row of rank ``r`` is
    accessed about Poisson(``N r^-s / H``) times, ``H = sum_r r^-s``. The histogram is the
    expected number of distinct rows per access-count bin (METHOD.md section 2) divided
    by the expected number of distinct rows. Ranks are grouped into log-spaced bands so
    that the cost does not grow with ``rows``.

    Args:
        rows: Rows of each table, shape ``[T]``.
        pooling_factors: Mean ids per sample of each table, ``[T]``, all > 0.
        skews: Zipf exponent ``s >= 0`` of each table, ``[T]`` (0 is uniform).
        batch_size: Samples per batch the histogram refers to.

    Returns:
        Array ``[T, 17]`` of histograms, each summing to 1.

    Raises:
        ValueError: On mismatched shapes or out-of-range values.
    """
    r = np.atleast_1d(np.asarray(rows, dtype=np.float64))
    pf = np.atleast_1d(np.asarray(pooling_factors, dtype=np.float64))
    s = np.atleast_1d(np.asarray(skews, dtype=np.float64))
    if not (r.shape == pf.shape == s.shape) or r.ndim != 1:
        raise ValueError(
            f"rows, pooling_factors, skews must be 1-D of one length, got "
            f"{r.shape}, {pf.shape}, {s.shape}"
        )
    if np.any(r < 1) or np.any(pf <= 0) or np.any(s < 0) or batch_size < 1:
        raise ValueError("need rows >= 1, pooling_factors > 0, skews >= 0, batch_size >= 1")
    per_bin = _expected_rows_per_bin(r, pf, s, batch_size)
    hist: FloatArray = per_bin / per_bin.sum(axis=1, keepdims=True)
    return hist


def generate_table_pool(
    num_tables: int = 856,
    seed: int = DEFAULT_SEED,
    dim: int = 16,
    dims: Sequence[int] | None = None,
    max_rows: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    name_prefix: str = "t",
) -> list[TableSpec]:
    """A pool of synthetic tables resembling Meta's public DLRM dataset.

    Rows are log-normal (100 to 2e7), pooling factors long-tailed (a one-hot share near 1,
    the rest log-normal; pool mean ~13.6), each table's ids follow a Zipf law over a
    random share of its rows, and its access histogram is the expected one at
    ``batch_size`` samples per batch (:func:`expected_access_histograms`). The random
    draws do not depend on ``dim``, ``dims`` or ``max_rows``, so these options change
    only what they name.

    Args:
        num_tables: Number of tables (856 like the 2021 release).
        seed: Seed of every random draw; same seed, same pool.
        dim: Embedding dimension of every table, when ``dims`` is None.
        dims: Dimensions to draw from uniformly, one per table, instead of ``dim``.
        max_rows: Cap on the rows of every table (at least 100).
        batch_size: Samples per batch the access histograms refer to.
        name_prefix: Table ``i`` is named ``f"{name_prefix}{i}"``.

    Returns:
        The tables, in order.

    Raises:
        ValueError: On a non-positive count, dims that are not positive multiples of 4, or
            ``max_rows`` below 100.
    """
    if num_tables < 1:
        raise ValueError(f"num_tables must be >= 1, got {num_tables}")
    choices = list(dims) if dims is not None else [dim]
    if not choices or any(d <= 0 or d % DIM_MULTIPLE != 0 for d in choices):
        raise ValueError(f"dims must be positive multiples of {DIM_MULTIPLE}, got {choices}")
    if max_rows is not None and max_rows < MIN_ROWS:
        raise ValueError(f"max_rows must be >= {MIN_ROWS}, got {max_rows}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    rng = np.random.default_rng(seed)
    log_rows = rng.normal(ROWS_LOG10_MEAN, ROWS_LOG10_STD, num_tables)
    log_rows = np.clip(log_rows, np.log10(MIN_ROWS), np.log10(MAX_ROWS))
    rows = np.rint(10.0**log_rows)
    if max_rows is not None:
        rows = np.minimum(rows, max_rows)

    one_hot = rng.random(num_tables) < ONE_HOT_SHARE
    one_hot_pf = rng.uniform(*ONE_HOT_POOLING_RANGE, num_tables)
    multi_hot_pf = rng.lognormal(np.log(POOLING_MEDIAN), POOLING_LOG_SIGMA, num_tables)
    pooling = np.clip(np.where(one_hot, one_hot_pf, multi_hot_pf), *POOLING_RANGE)

    skews = rng.uniform(*SKEW_RANGE, num_tables)
    active_rows = np.maximum(
        np.rint(rows * 10.0 ** rng.uniform(*ACTIVE_ROWS_LOG10_RANGE, num_tables)), 1
    )
    dim_of = rng.choice(np.asarray(choices, dtype=np.int64), num_tables)

    hists = expected_access_histograms(active_rows, pooling, skews, batch_size)
    return [
        TableSpec(
            name=f"{name_prefix}{i}",
            rows=int(rows[i]),
            dim=int(dim_of[i]),
            pooling_factor=float(pooling[i]),
            access_hist=tuple(float(x) for x in hists[i]),
        )
        for i in range(num_tables)
    ]


def _largest_remainder(total: int, weights: FloatArray) -> IntArray:
    """Split ``total`` into integers proportional to ``weights`` (largest remainders).

    Each part is at most ``ceil(total * w / sum(w))``, so it never exceeds a weight when
    ``total <= sum(weights)`` and the weights are integers.
    """
    exact = total * (weights / weights.sum())
    out: IntArray = np.floor(exact).astype(np.int64)
    short = total - int(out.sum())
    if short > 0:
        out[np.argsort(out - exact, kind="stable")[:short]] += 1
    return out


def _fix_total(counts: IntArray, low: IntArray, high: IntArray, total: int) -> IntArray:
    """Adjust per-row counts to sum to ``total`` (needs ``len(counts) <= total``).

    Row ``i``'s bin allows counts in ``[low[i], high[i]]``. The difference is first spread
    over the rows in proportion to their room inside their bins, which leaves the access
    histogram unchanged; only what the bins cannot absorb moves rows across bins, in
    proportion to their counts (most distinct rows have few accesses and stay put).
    """
    out = counts.copy()
    diff = total - int(out.sum())
    if diff == 0:
        return out
    sign = 1 if diff > 0 else -1
    room = (high - out) if diff > 0 else (out - low)
    if abs(diff) >= int(room.sum()):
        out += sign * room
    else:
        out += sign * _largest_remainder(abs(diff), room.astype(np.float64))
    diff = total - int(out.sum())
    if diff > 0:
        out += _largest_remainder(diff, out.astype(np.float64))
    elif diff < 0:  # counts of 1 cannot shrink; sum(out - 1) >= -diff since len <= total
        out -= _largest_remainder(-diff, (out - 1).astype(np.float64))
    return out


def _distinct_ids(rng: np.random.Generator, rows: int, count: int) -> IntArray:
    """``count`` distinct ids drawn uniformly from ``[0, rows)``, in random order."""
    if count * 50 <= rows or count * 2 > rows or rows <= _SMALL_ID_RANGE:
        ids: IntArray = rng.choice(rows, size=count, replace=False).astype(np.int64)
        return ids
    # In between, numpy's choice shuffles all of arange(rows) (0.3 s at 2e7 rows); drawing
    # with replacement and deduplicating by sorting costs O(count log count). Draw enough
    # that the expected number of distinct ids exceeds count by ~5%.
    draws = int(-rows * np.log1p(-count / rows) * 1.05) + 64
    while True:
        ordered = np.sort(rng.integers(0, rows, size=draws, dtype=np.int64))
        unique = ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]
        if unique.size >= count:
            # A uniform subset of a uniform random set is uniform; permuting also undoes
            # the sort so that the id value says nothing about the row's access count.
            return rng.permutation(unique)[:count]
        draws *= 2


def generate_ids(
    table: TableSpec, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = DEFAULT_SEED
) -> tuple[IntArray, IntArray]:
    """Ids of one batch that match a table's rows, pooling factor and access histogram.

    Uses only the :class:`TableSpec` (METHOD.md section 5: ids generated per table to
    match its features). Bag lengths are Poisson conditioned on their total
    ``round(pooling_factor * batch_size)``; the number of distinct rows follows from the
    histogram's mean count per distinct row; per-row counts are allocated bin by bin as
    the histogram says (drawn log-uniformly within a bin) and adjusted to the total; the
    distinct rows are uniform in ``[0, rows)`` and the ids are shuffled into the bags.

    Args:
        table: The table.
        batch_size: Number of samples (bags).
        seed: Seed; same seed, same ids.

    Returns:
        ``(indices, offsets)``: int64 ids, and int64 bag offsets of ``batch_size + 1``
        entries from 0 to ``len(indices)`` (FBGEMM layout).

    Raises:
        ValueError: If ``batch_size < 1`` or the histogram has negative or no mass.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    total = round(table.pooling_factor * batch_size)
    # Multinomial bag lengths = independent Poisson(pooling_factor) given their sum.
    lengths = rng.multinomial(total, np.full(batch_size, 1.0 / batch_size))
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    if total == 0:
        return np.zeros(0, dtype=np.int64), offsets

    hist = np.asarray(table.access_hist, dtype=np.float64)
    if np.any(hist < 0) or hist.sum() <= 0:
        raise ValueError(f"table {table.name!r}: access_hist must be >= 0 with a positive sum")
    hist = hist / hist.sum()
    mean_count = float(hist @ BIN_MEAN_ACCESS_COUNT)
    distinct = int(np.clip(round(total / mean_count), 1, min(table.rows, total)))

    rows_per_bin = _largest_remainder(distinct, hist)
    bin_of_row = np.repeat(np.arange(NUM_ACCESS_BINS), rows_per_bin)
    low = (_BIN_LO + 1)[bin_of_row]
    high = _BIN_HI[bin_of_row]
    drawn = np.floor(np.exp(rng.uniform(np.log(low), np.log(high + 1.0)))).astype(np.int64)
    # The open last bin has no upper end when making the total come out right.
    high = np.where(bin_of_row == NUM_ACCESS_BINS - 1, max(total, int(_BIN_HI[-1])), high)
    counts = _fix_total(np.clip(drawn, low, high), low, high, total)

    row_ids = _distinct_ids(rng, table.rows, distinct)
    indices = rng.permutation(np.repeat(row_ids, counts))
    return indices, offsets
