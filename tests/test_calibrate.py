"""What the simulator's calibration measures (backends/calibrate.py), on the simulator."""

from __future__ import annotations

import pytest

from dreamshard.backends.base import ShardSample
from dreamshard.backends.calibrate import Calibration, CalibrationConfig, sample_shards
from dreamshard.backends.sim.model import shard_timing
from dreamshard.backends.sim.profile import load_profile
from dreamshard.errors import InputError
from dreamshard.types import ShardOf, column_split_sizes, row_split_sizes


def test_a_share_of_the_shards_holds_one_piece_of_a_split_heavy_table() -> None:
    config = CalibrationConfig(num_shards=200, split_share=0.5, seed=3)
    shards = sample_shards(config)
    with_piece = [s for s in shards if any(t.shard is not None for t in s)]
    assert 70 <= len(with_piece) <= 130
    for shard in with_piece:
        piece, *rest = shard
        assert piece.shard is not None and all(t.shard is None for t in rest)
        assert len({t.name for t in shard}) == len(shard)
        parent = piece.shard.table
        assert parent.pooling_factor >= 100 and parent.rows <= config.max_rows
        if piece.shard.kind == "column":
            assert piece.dim == piece.shard.size and piece.rows == parent.rows
        else:
            assert piece.rows == piece.shard.size and piece.dim == parent.dim
        assert _is_a_piece_of_an_even_split(piece.shard)
    # The pieces do not change which whole tables the other shards hold.
    plain = sample_shards(CalibrationConfig(num_shards=200, split_share=0.0, seed=3))
    for a, b in zip(shards, plain, strict=True):
        assert [t.name for t in a[1:]] == [t.name for t in b[1:]]
    with pytest.raises(InputError, match="split_share"):
        CalibrationConfig(split_share=1.5)


def _is_a_piece_of_an_even_split(shard: ShardOf) -> bool:
    """Whether ``shard`` is piece ``index`` of its table cut in 2, 4 or 8 (TorchRec's
    row blocks; column shards of multiples of 4)."""
    table = shard.table
    for parts in (2, 4, 8):
        if shard.kind == "column":
            sizes = column_split_sizes(table.dim, parts)
        else:
            sizes = row_split_sizes(table.rows, parts)
        at = shard.index
        if at < parts and sizes[at] == shard.size and sum(sizes[:at]) == shard.offset:
            return True
    return False


def test_held_out_errors_are_reported_for_shards_with_pieces_apart() -> None:
    profile = load_profile("cpu-zen4")
    shards = sample_shards(CalibrationConfig(num_shards=40, split_share=0.5, seed=1))
    samples = [ShardSample(s, 4096, shard_timing(profile, s)) for s in shards]
    calibration = Calibration(profile, tuple(samples[:20]), tuple(samples[20:]))
    errors = calibration.holdout_errors()
    assert errors["total_median_ape"] == pytest.approx(0.0, abs=1e-6)
    assert errors["piece_total_median_ape"] == pytest.approx(0.0, abs=1e-6)
    whole = Calibration(profile, (), tuple(s for s in samples if s.tables[0].shard is None))
    assert "piece_total_median_ape" not in whole.holdout_errors()
