"""The real FBGEMM backend on tiny inputs (batch 64, a handful of calls)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dreamshard.backends.base import ShardTiming, stage_synchronous_cost_ms
from dreamshard.backends.comm import AllToAllModel
from dreamshard.backends.fbgemm import FbgemmBackend, FbgemmConfig
from dreamshard.errors import BackendError, InvalidPlacementError
from dreamshard.types import Placement

from .conftest import table, task

COMM = AllToAllModel(latency_ms=0.1, bandwidth_gbps=1.0, source="test")


def backend(**overrides: object) -> FbgemmBackend:
    settings: dict = dict(batch_size=64, windows=2, calls_per_window=2, warmup_calls=1, comm=COMM)
    settings.update(overrides)
    return FbgemmBackend(FbgemmConfig(**settings))


def test_measure_combines_stages_as_defined() -> None:
    tables = [table("a"), table("b"), table("c", dim=32)]
    t = task(tables, [10**9, 10**9])
    (cost,) = backend().measure(t, [Placement((0, 0, 1))])
    assert len(cost.per_device) == 2
    assert cost.backend == "fbgemm"
    fwd = max(c.fwd_comp_ms for c in cost.per_device)
    bwd = max(c.bwd_comp_ms for c in cost.per_device)
    a2a = COMM.time_ms([32, 32], 64)
    assert cost.cost_ms == pytest.approx(fwd + 2 * a2a + bwd)
    assert all(c.fwd_comp_ms > 0 and c.bwd_comp_ms > 0 for c in cost.per_device)
    assert len(cost.window_costs_ms) == 2
    assert cost.rel_spread is not None and cost.rel_spread >= 0


def test_window_cost_is_the_stage_synchronous_form_bit_for_bit() -> None:
    # What the backend computed for each window before the formula had one home:
    # max fwd + 2 * a2a + max bwd over the shards' timings, in Python floats.
    rng = np.random.default_rng(0)
    for _ in range(300):
        devices = int(rng.integers(1, 9))
        shards = [ShardTiming(float(f), float(b)) for f, b in rng.exponential(size=(devices, 2))]
        if devices > 1:
            shards[0] = ShardTiming(0.0, 0.0)  # a device without tables
        a2a = float(rng.exponential(0.5))
        expected = max(s.fwd_comp_ms for s in shards) + 2 * a2a + max(s.bwd_comp_ms for s in shards)
        fwd = [s.fwd_comp_ms for s in shards]
        bwd = [s.bwd_comp_ms for s in shards]
        assert float(stage_synchronous_cost_ms(fwd, bwd, a2a, a2a)) == expected


def test_stage_synchronous_cost_is_vectorised_over_placements() -> None:
    rng = np.random.default_rng(1)
    fwd, bwd = rng.exponential(size=(2, 50, 4))
    a2a = rng.exponential(size=50)
    many = stage_synchronous_cost_ms(fwd, bwd, a2a, a2a)
    assert many.shape == (50,)
    for k in range(50):
        assert many[k] == float(stage_synchronous_cost_ms(fwd[k], bwd[k], a2a[k], a2a[k]))
        assert many[k] == fwd[k].max() + 2.0 * a2a[k] + bwd[k].max()
    # Different forward and backward all-to-alls add up.
    assert float(stage_synchronous_cost_ms([1.0, 3.0], [2.0, 0.5], 0.25, 0.5)) == 5.75


def test_device_without_tables_costs_no_computation() -> None:
    t = task([table("a"), table("b")], [10**9, 10**9, 10**9])
    (cost,) = backend().measure(t, [Placement((0, 0))])
    assert cost.per_device[1].fwd_comp_ms == 0.0
    assert cost.per_device[2].bwd_comp_ms == 0.0


def test_several_placements_in_one_call_keep_order() -> None:
    t = task([table("a"), table("b", pooling=20.0)], [10**9, 10**9])
    costs = backend().measure(t, [Placement((0, 1)), Placement((0, 0))])
    assert len(costs) == 2
    # Both tables fused on one device means no parallelism and no partner: bigger max.
    assert costs[1].per_device[1].fwd_comp_ms == 0.0


def test_many_more_lookups_cost_more() -> None:
    # 256x the lookups, medians of 15 calls: robust to a busy machine (64x and 4 calls
    # failed once under load).
    light, heavy = backend(windows=3, calls_per_window=5).measure_shards(
        [[table("l", pooling=1.0)], [table("h", pooling=256.0)]]
    )
    assert heavy.fwd_comp_ms + heavy.bwd_comp_ms > light.fwd_comp_ms + light.bwd_comp_ms


def test_invalid_placement_is_rejected_before_measuring() -> None:
    t = task([table("a", rows=1000)], [100])
    with pytest.raises(InvalidPlacementError):
        backend().measure(t, [Placement((0,))])


def test_row_cap_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        backend(row_cap=500).measure_shards([[table("wide", rows=5000)]])
    assert "'wide' runs with 500 of its 5000 rows" in caplog.text


def test_shard_over_memory_budget_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="more than the memory budget"):
        backend(memory_budget_bytes=1000).measure_shards([[table("a", rows=1000)]])


def test_reference_normalisation_scales_to_the_nominal_speed() -> None:
    # A nominal reference time 1,000x the real one scales every cost up ~1,000x.
    (raw,) = backend(reference=False).measure_shards([[table("a")]])
    (scaled,) = backend(reference_nominal_ms=(1000.0, 1000.0)).measure_shards([[table("a")]])
    assert scaled.fwd_comp_ms > 50 * raw.fwd_comp_ms
    assert scaled.bwd_comp_ms > 50 * raw.bwd_comp_ms


def test_conditions_compare_the_interleaved_reference_with_its_nominal() -> None:
    # A nominal far below any real time: the reference looks hugely slowed down.
    measuring = backend(reference_nominal_ms=(1e-6, 1e-6))
    measuring.measure_shards([[table("a")]])
    conditions = measuring.conditions()
    assert len(measuring.reference_ms) == 2  # one per window before the one shard
    assert conditions.reference_slowdown is not None and conditions.reference_slowdown > 100
    assert any("slower than nominal" in w for w in conditions.warnings)
    # Without a reference there is nothing to compare.
    assert backend(reference=False).conditions().reference_slowdown is None


def test_two_splits_of_one_table_run_their_own_operators() -> None:
    # t#c0 has 32 columns in the 2-way split and 16 in the 4-way one: one name, two
    # operators. Each device's operator must hold its own shards' dims.
    from dreamshard.types import TableSplit

    t = task([table("t", rows=1000, dim=64), table("u")], [10**9] * 4)
    halves = Placement((0, 1, 0), (TableSplit(0, "column", (32, 32)),))
    quarters = Placement((0, 1, 2, 3, 0), (TableSplit(0, "column", (16, 16, 16, 16)),))
    b = backend()
    b.measure(t, [halves, quarters])
    dims = {tuple((u.name, u.dim) for u in key) for key in b._ops}
    assert (("t#c0", 32), ("u", 16)) in dims and (("t#c0", 16), ("u", 16)) in dims
    assert (("t#c0", 32),) not in dims and (("t#c1", 32),) in dims and (("t#c1", 16),) in dims
