from __future__ import annotations

import numpy as np
import pytest

from dreamshard.constants import NUM_ACCESS_BINS
from dreamshard.data.features import access_histogram
from dreamshard.data.synthetic import (
    MAX_ROWS,
    expected_access_histograms,
    generate_ids,
    generate_table_pool,
)
from dreamshard.types import TableSpec

ONCE = (1.0,) + (0.0,) * (NUM_ACCESS_BINS - 1)
HOT = (0.0,) * (NUM_ACCESS_BINS - 1) + (1.0,)


@pytest.fixture(scope="module")
def pool() -> list[TableSpec]:
    return generate_table_pool(seed=0)


def l1(a: np.ndarray, b: tuple[float, ...]) -> float:
    return float(np.abs(a - np.asarray(b)).sum())


# --- table pool ---------------------------------------------------------------------


def test_pool_is_deterministic_per_seed(pool: list[TableSpec]) -> None:
    assert generate_table_pool(seed=0) == pool
    assert generate_table_pool(seed=1) != pool


def test_pool_properties(pool: list[TableSpec]) -> None:
    assert len(pool) == 856
    assert [t.name for t in pool] == [f"t{i}" for i in range(856)]
    rows = np.array([t.rows for t in pool])
    pooling = np.array([t.pooling_factor for t in pool])
    assert rows.min() >= 100 and rows.max() <= MAX_ROWS
    assert all(t.dim == 16 for t in pool)
    assert (pooling > 0).all()
    for t in pool:
        assert min(t.access_hist) >= 0.0
        assert sum(t.access_hist) == pytest.approx(1.0)
    # Long tails like the public DLRM dataset: many small tables and some of millions of
    # rows; pooling factors mostly small, a few above 100, mean near 13.6 (2022 release).
    assert (rows < 1000).sum() > 50 and (rows > 2_000_000).sum() > 20
    assert (pooling < 1.5).sum() > 100 and (pooling > 100).sum() >= 5
    assert 11.0 < pooling.mean() < 17.0
    # Heavy mass in the low access bins across the pool.
    assert np.mean([t.access_hist[0] for t in pool]) > 0.2


def test_pool_options() -> None:
    base = generate_table_pool(num_tables=40, seed=3)
    mixed = generate_table_pool(num_tables=40, seed=3, dims=(8, 16, 32), name_prefix="m")
    capped = generate_table_pool(num_tables=40, seed=3, max_rows=5000)
    assert {t.dim for t in mixed} == {8, 16, 32}
    assert mixed[0].name == "m0"
    assert max(t.rows for t in capped) == 5000
    # The options change only what they name: the other draws stay the same.
    assert [t.pooling_factor for t in mixed] == [t.pooling_factor for t in base]
    assert [t.pooling_factor for t in capped] == [t.pooling_factor for t in base]
    assert [min(t.rows, 5000) for t in base] == [t.rows for t in capped]


@pytest.mark.parametrize(
    "kwargs",
    [{"dims": (8, 6)}, {"dim": 0}, {"max_rows": 50}, {"num_tables": 0}, {"batch_size": 0}],
)
def test_pool_rejects_bad_options(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        generate_table_pool(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rows", "pooling", "skew"), [(5000, 5.0, 0.8), (200_000, 20.0, 1.2), (300, 100.0, 1.4)]
)
def test_expected_histogram_matches_sampled_zipf_ids(
    rows: int, pooling: float, skew: float
) -> None:
    # Draw real Zipf ids and compare their histogram (mean of 3 batches) with the analytic one.
    rng = np.random.default_rng(0)
    batch = 4096
    p = np.arange(1, rows + 1, dtype=np.float64) ** -skew
    p /= p.sum()
    sampled = np.mean(
        [access_histogram(rng.choice(rows, int(batch * pooling), p=p)) for _ in range(3)], axis=0
    )
    expected = expected_access_histograms([rows], [pooling], [skew], batch)[0]
    assert expected.sum() == pytest.approx(1.0)
    assert l1(sampled, tuple(expected)) < 0.04  # measured 0.011, 0.003, 0.009


def test_expected_histogram_limits() -> None:
    # Uniform ids over far more rows than ids: nearly every accessed row is read once.
    sparse = expected_access_histograms([10_000_000], [1.0], [0.0], 4096)[0]
    assert sparse[0] > 0.999
    # 100 rows, 307,200 uniform ids: every row is read 3072 +- 55 times, bin (2048, 4096].
    dense = expected_access_histograms([100], [75.0], [0.0], 4096)[0]
    assert dense[12] == pytest.approx(1.0)


# --- ids of one batch ---------------------------------------------------------------


def test_generate_ids_layout_and_determinism(pool: list[TableSpec]) -> None:
    table = pool[0]
    indices, offsets = generate_ids(table, batch_size=512, seed=7)
    assert indices.dtype == np.int64 and offsets.dtype == np.int64
    assert offsets.shape == (513,)
    assert offsets[0] == 0 and offsets[-1] == indices.size
    assert (np.diff(offsets) >= 0).all()
    assert indices.size == round(table.pooling_factor * 512)
    assert indices.min() >= 0 and indices.max() < table.rows
    again, again_offsets = generate_ids(table, batch_size=512, seed=7)
    np.testing.assert_array_equal(indices, again)
    np.testing.assert_array_equal(offsets, again_offsets)
    other, _ = generate_ids(table, batch_size=512, seed=8)
    assert not np.array_equal(indices, other)


def test_generated_ids_reproduce_pool_histograms(pool: list[TableSpec]) -> None:
    distances = []
    for table in pool[:150]:
        indices, _ = generate_ids(table, batch_size=4096, seed=1)
        assert indices.min() >= 0 and indices.max() < table.rows
        assert indices.size / 4096 == pytest.approx(table.pooling_factor, rel=0.01)
        distances.append(l1(access_histogram(indices), table.access_hist))
    # Measured on all 856 tables: median 0.0005, worst 0.057 (tables of ~100 rows).
    assert np.median(distances) < 0.01
    assert max(distances) < 0.1


def test_generate_ids_exact_cases() -> None:
    # All rows read once: as many distinct ids as ids.
    once = TableSpec("once", rows=1_000_000, dim=16, pooling_factor=2.0, access_hist=ONCE)
    indices, _ = generate_ids(once, batch_size=1000, seed=0)
    assert np.unique(indices).size == indices.size == 2000
    # All accesses on rows read more than 2^15 times: one hot row takes all 40,960 ids.
    hot = TableSpec("hot", rows=100, dim=16, pooling_factor=10.0, access_hist=HOT)
    indices, _ = generate_ids(hot, batch_size=4096, seed=0)
    assert np.unique(indices).size == 1
    assert access_histogram(indices).tolist() == list(HOT)


def test_generate_ids_big_table_and_inconsistent_histogram() -> None:
    big = TableSpec("big", rows=20_000_000, dim=16, pooling_factor=100.0, access_hist=ONCE)
    indices, offsets = generate_ids(big, batch_size=4096, seed=0)
    assert indices.size == 409_600 and indices.max() < big.rows
    assert np.unique(indices).size == indices.size
    # The histogram asks for 2000 distinct rows but the table has 100: ids still valid.
    small = TableSpec("small", rows=100, dim=16, pooling_factor=2.0, access_hist=ONCE)
    indices, offsets = generate_ids(small, batch_size=1000, seed=0)
    assert indices.size == 2000 and offsets[-1] == 2000
    assert np.unique(indices).size == 100


def test_generate_ids_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        generate_ids(TableSpec("t", 100, 16, 1.0, ONCE), batch_size=0)
    with pytest.raises(ValueError, match="access_hist"):
        generate_ids(TableSpec("t", 100, 16, 1.0, (0.0,) * NUM_ACCESS_BINS))
