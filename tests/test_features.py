from __future__ import annotations

import numpy as np
import pytest

from dreamshard.constants import NUM_ACCESS_BINS
from dreamshard.data.features import (
    FEATURE_NAMES,
    access_histogram,
    features_matrix,
    table_features,
    table_from_ids,
)
from dreamshard.types import TableSpec


def hist_of(**fractions: float) -> list[float]:
    """A 17-bin histogram from ``b<k>=fraction`` keywords, zeros elsewhere."""
    out = [0.0] * NUM_ACCESS_BINS
    for key, value in fractions.items():
        out[int(key[1:])] = value
    return out


def test_feature_names_are_the_21_method_features() -> None:
    assert len(FEATURE_NAMES) == 21 == 4 + NUM_ACCESS_BINS
    assert FEATURE_NAMES[:4] == ("dim", "rows", "pooling_factor", "size_bytes")
    assert FEATURE_NAMES[4] == "access_bin_0"
    assert FEATURE_NAMES[-1] == "access_bin_16"


def test_histogram_hand_computed_counts_1_to_5() -> None:
    # Row 10 read once, 11 twice, 12 three times, 13 four times, 14 five times.
    ids = np.array([10, 11, 11, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 14])
    # Bins (0,1] (1,2] (2,4] (4,8]: counts 1 | 2 | 3, 4 | 5.
    assert access_histogram(ids).tolist() == hist_of(b0=0.2, b1=0.2, b2=0.4, b3=0.2)


def test_histogram_edges_8_9_and_above_2_to_15() -> None:
    ids = np.concatenate(
        [
            np.full(8, 1),  # (4,8]
            np.full(9, 2),  # (8,16]
            np.full(2**15, 3),  # (2^14, 2^15]: 32768 is still inside bin 15
            np.full(40_000, 4),  # > 2^15: the open last bin
        ]
    )
    expected = hist_of(b3=0.25, b4=0.25, b15=0.25, b16=0.25)
    assert access_histogram(ids).tolist() == expected


def test_histogram_is_the_same_for_huge_ids() -> None:
    # Ids far above the batch size take the sorting path instead of the dense count.
    rng = np.random.default_rng(0)
    ids = rng.zipf(1.5, size=20_000) % 5000
    dense = access_histogram(ids)
    sparse = access_histogram(ids + 10**12)
    np.testing.assert_array_equal(dense, sparse)
    assert dense.sum() == pytest.approx(1.0)
    assert access_histogram(np.array([10**12, 10**12, 5])).tolist() == hist_of(b0=0.5, b1=0.5)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (np.array([], dtype=np.int64), "empty"),
        (np.array([1, -2]), "non-negative"),
        (np.array([1.0, 2.0]), "integers"),
    ],
)
def test_histogram_rejects_bad_ids(ids: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        access_histogram(ids)


def test_table_from_ids_tiny_case() -> None:
    # 3 bags: [3, 3], [], [5, 0, 7, 7] -> 6 ids / 3 samples; rows 3 and 7 read twice.
    indices = np.array([3, 3, 5, 0, 7, 7], dtype=np.int64)
    offsets = np.array([0, 2, 2, 6], dtype=np.int64)
    table = table_from_ids("t", indices, offsets, dim=8)
    assert table.pooling_factor == 2.0
    assert table.rows == 100  # max id + 1 = 8, raised to the minimum of 100
    assert table.dim == 8
    assert list(table.access_hist) == hist_of(b0=0.5, b1=0.5)
    assert table_from_ids("t", indices, offsets, rows=8).rows == 8
    assert table_from_ids("t", np.array([149, 1]), np.array([0, 2])).rows == 150


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        ([1, 2, 4], "start at 0"),
        ([0, 2, 3], "end at len"),
        ([0, 3, 2, 4], "non-decreasing"),
        ([0], "batch\\+1"),
        ([[0, 4]], "1-D"),
    ],
)
def test_table_from_ids_rejects_bad_offsets(offsets: list[int], message: str) -> None:
    indices = np.array([1, 2, 3, 4])
    with pytest.raises(ValueError, match=message):
        table_from_ids("t", indices, np.array(offsets))


def test_table_from_ids_rejects_bad_ids_and_dim() -> None:
    with pytest.raises(ValueError, match="out of range"):
        table_from_ids("t", np.array([1, 8]), np.array([0, 2]), rows=8)
    with pytest.raises(ValueError, match="no ids"):
        table_from_ids("t", np.array([], dtype=np.int64), np.array([0, 0]))
    with pytest.raises(ValueError, match="multiple of 4"):
        table_from_ids("t", np.array([1]), np.array([0, 1]), dim=6)


def test_table_features_and_matrix() -> None:
    hist = tuple(hist_of(b0=0.75, b16=0.25))
    a = TableSpec("a", rows=1000, dim=16, pooling_factor=2.5, access_hist=hist)
    b = TableSpec("b", rows=200, dim=8, pooling_factor=1.0, access_hist=hist, dtype="fp16")
    feats = table_features(a)
    assert feats.dtype == np.float64
    assert feats.shape == (len(FEATURE_NAMES),)
    assert feats[:4].tolist() == [16, 1000, 2.5, 1000 * 16 * 4]
    assert feats[4:].tolist() == list(hist)
    matrix = features_matrix([a, b])
    assert matrix.shape == (2, len(FEATURE_NAMES))
    np.testing.assert_array_equal(matrix[0], feats)
    assert matrix[1, FEATURE_NAMES.index("size_bytes")] == 200 * 8 * 2
    assert features_matrix([]).shape == (0, len(FEATURE_NAMES))


def test_fitted_normaliser_clips_tables_far_outside_the_training_range() -> None:
    from dreamshard.data.features import FeatureNormalizer

    from .conftest import table

    train = [table(f"t{i}", rows=1000 + 10 * i, pooling=2.0 + 0.1 * i) for i in range(20)]
    normalizer = FeatureNormalizer.fit(train)
    far = table("far", rows=10**9, pooling=400.0)
    assert float(np.abs(normalizer.transform([far])).max()) == normalizer.CLIP
    # Saved and read back with its clip; normalisers saved before clipping do not clip.
    again = FeatureNormalizer.from_dict(normalizer.to_dict())
    assert again == normalizer
    old = {k: v for k, v in normalizer.to_dict().items() if k != "clip"}
    assert float(np.abs(FeatureNormalizer.from_dict(old).transform([far])).max()) > normalizer.CLIP
