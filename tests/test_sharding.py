"""Split tables: the data model (types.TableSplit, Placement.splits), the shards' ids, how
backends cost them, and the split search (method/split.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dreamshard.backends.comm import CPU_LOOPBACK, AllToAllModel, ExchangeWidths, output_widths
from dreamshard.backends.sim.model import SimBackend
from dreamshard.data.constraints import ConstraintSpec, constraints_for
from dreamshard.data.ids import table_ids
from dreamshard.errors import InvalidPlacementError
from dreamshard.method.search import placement_cost
from dreamshard.method.split import (
    SplitSettings,
    UnsplittableTableError,
    choose_splits,
    ordered,
    required_splits,
    split_candidates,
    unit_constraints,
    units_of,
)
from dreamshard.placers.oracle import OraclePlacer
from dreamshard.types import (
    Placement,
    TableSplit,
    Task,
    column_split_sizes,
    divides_into_hosts,
    row_split_sizes,
)

from .conftest import table, task

# -- sizes -------------------------------------------------------------------------------


def test_column_sizes_are_multiples_of_4_as_even_as_they_go() -> None:
    assert column_split_sizes(64, 3) == (24, 20, 20)
    assert column_split_sizes(16, 4) == (4, 4, 4, 4)
    with pytest.raises(ValueError):
        column_split_sizes(16, 5)
    with pytest.raises(ValueError):
        column_split_sizes(18, 2)


def test_row_sizes_follow_torchrec_ceil_blocks() -> None:
    assert row_split_sizes(10, 4) == (3, 3, 3, 1)
    assert row_split_sizes(8, 2) == (4, 4)
    with pytest.raises(InvalidPlacementError):
        row_split_sizes(5, 4)  # blocks 2, 2, 1, 0: one empty
    with pytest.raises(InvalidPlacementError):
        row_split_sizes(100, 1)


# -- shards and placements ---------------------------------------------------------------


def test_shards_keep_rows_or_dim_and_share_the_lookups() -> None:
    t = table("a", rows=1000, dim=16, pooling=4.0)
    c0, c1 = TableSplit(0, "column", (8, 8)).shards(t)
    assert (c0.name, c0.rows, c0.dim, c0.pooling_factor) == ("a#c0", 1000, 8, 4.0)
    assert c1.shard is not None and (c1.shard.offset, c1.shard.size) == (8, 8)
    r0, r1 = TableSplit(0, "row", (750, 250)).shards(t)
    assert (r0.name, r0.rows, r0.dim, r0.pooling_factor) == ("a#r0", 750, 16, 3.0)
    assert r1.pooling_factor == 1.0 and r1.whole is t


def test_units_and_resolve() -> None:
    job = task([table("a", dim=16), table("b")], [10**6, 10**6])
    p = Placement((1, 0, 0), (TableSplit(0, "column", (8, 8)),))
    assert [u.name for u in p.units(job)] == ["a#c0", "a#c1", "b"]
    units, flat = p.resolve(job)
    assert flat == Placement((1, 0, 0)) and [t.name for t in units.tables] == ["a#c0", "a#c1", "b"]
    assert p.to_names(job) == {"a#c0": "dev1", "a#c1": "dev0", "b": "dev0"}
    p.validate(job)


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        (Placement((0, 1, 0), (TableSplit(0, "column", (8, 4)),)), "not cover its 16 columns"),
        (Placement((0, 1, 0), (TableSplit(0, "column", (10, 6)),)), "multiple of 4"),
        (Placement((0, 0), (TableSplit(0, "column", (16,)),)), "at least 2 shards"),
        (Placement((0, 1, 0), (TableSplit(2, "column", (8, 8)),)), "names table 2"),
        (Placement((0, 1, 0), (TableSplit(0, "diagonal", (8, 8)),)), "unknown split kind"),  # type: ignore[arg-type]
        (Placement((0,)), "covers 1 tables"),
        (Placement((0, 1, 0), (TableSplit(0, "row", (600, 400)),)), "cuts 1000 rows"),
        (Placement((1, 0, 0), (TableSplit(0, "row", (500, 500)),)), "row block 0 on device 0"),
    ],
)
def test_bad_splits_are_named(placement: Placement, message: str) -> None:
    job = task([table("a", rows=1000, dim=16), table("b")], [10**6, 10**6])
    with pytest.raises(InvalidPlacementError, match=message):
        placement.validate(job)


def test_memory_counts_each_shard_on_its_device() -> None:
    # a: 1000 x 16 x 4 = 64,000 bytes, no device holds it whole; halves fit.
    job = task([table("a", rows=1000, dim=16), table("b", rows=100, dim=4)], [40_000, 40_000])
    Placement((0, 1, 0), (TableSplit(0, "row", (500, 500)),)).validate(job)
    with pytest.raises(InvalidPlacementError, match="device 0"):
        Placement((0, 0, 1), (TableSplit(0, "column", (8, 8)),)).validate(job)


# -- ids ---------------------------------------------------------------------------------


def test_row_shards_look_up_exactly_the_ids_in_their_range() -> None:
    t = table("a", rows=1000, dim=16, pooling=5.0)
    indices, offsets = table_ids(t, 64, seed=3)
    total = 0
    for shard in TableSplit(0, "row", row_split_sizes(1000, 3)).shards(t):
        assert shard.shard is not None
        lo, hi = shard.shard.offset, shard.shard.offset + shard.shard.size
        ids, offs = table_ids(shard, 64, seed=3)
        assert len(offs) == 65 and offs[-1] == len(ids)
        assert ids.min() >= 0 and ids.max() < shard.rows
        for b in range(64):  # bag b keeps its ids in [lo, hi), shifted by lo
            whole = indices[offsets[b] : offsets[b + 1]]
            np.testing.assert_array_equal(
                ids[offs[b] : offs[b + 1]], whole[(whole >= lo) & (whole < hi)] - lo
            )
        total += len(ids)
    assert total == len(indices)


def test_column_shards_look_up_the_tables_ids() -> None:
    t = table("a", rows=1000, dim=16, pooling=5.0)
    whole = table_ids(t, 32, seed=1)
    for shard in TableSplit(0, "column", (8, 8)).shards(t):
        got = table_ids(shard, 32, seed=1)
        np.testing.assert_array_equal(got[0], whole[0])
        np.testing.assert_array_equal(got[1], whole[1])


# -- costs -------------------------------------------------------------------------------


def test_row_blocks_go_through_their_own_collectives() -> None:
    t, u = table("a", rows=1000, dim=16), table("b", dim=8)
    units = (*TableSplit(0, "row", (500, 500)).shards(t), u)
    job = task([t, u], [10**9, 10**9])
    assert output_widths(units, (0, 1, 1), job) == ExchangeWidths([0, 8], [16, 16], [0, 0], 2)
    model = AllToAllModel(0.5, 1.0, "test", reduce_scatter_factor=3.0, all_gather_factor=2.0)
    a2a, row = model.time_ms([0, 8], 4096), model.time_ms([16, 16], 4096)

    def exchange(a2a: list[int], rows: list[int]) -> tuple[float, float]:
        return model.exchange_ms(ExchangeWidths(a2a, rows, [0, 0], 2), 4096)

    assert exchange([0, 8], [16, 16]) == (a2a + 3.0 * row, a2a + 2.0 * row)
    assert exchange([0, 0], [16, 16]) == (3.0 * row, 2.0 * row)
    assert exchange([8, 8], [0, 0]) == (model.time_ms([8, 8], 4096),) * 2
    assert CPU_LOOPBACK.reduce_scatter_factor == 1.0


def test_sim_costs_a_split_placement_as_its_units() -> None:
    job = task(
        [table("a", rows=10**5, dim=64, pooling=50.0), table("b"), table("c")], [10**9, 10**9]
    )
    sim = SimBackend()
    for p in (
        Placement((0, 1, 0, 1), (TableSplit(0, "column", (32, 32)),)),
        Placement((0, 1, 0, 1), (TableSplit(0, "row", (50_000, 50_000)),)),
    ):
        units, flat = p.resolve(job)
        expected = sim.cost_ms(units, flat)
        assert sim.cost_ms(job, p) == expected
        assert sim.measure(job, [p])[0].cost_ms == pytest.approx(expected)
        assert placement_cost(sim.stage_model(units), units, flat.device_of) == pytest.approx(
            expected
        )
    with pytest.raises(InvalidPlacementError):
        sim.cost_ms(job, Placement((1, 0, 0, 1), (TableSplit(0, "row", (50_000, 50_000)),)))


# -- the split search --------------------------------------------------------------------


def test_a_table_larger_than_every_device_is_split_row_wise() -> None:
    job = task([table("big", rows=1000, dim=16), table("b", rows=10)], [40_000, 40_000])
    assert required_splits(job, SplitSettings()) == {0: TableSplit(0, "row", (500, 500))}
    assert required_splits(job, SplitSettings(sharding="column")) == {
        0: TableSplit(0, "column", (8, 8))
    }


def test_a_table_that_fits_no_split_is_named_with_what_it_needs() -> None:
    job = task([table("big", rows=1000, dim=16)], [20_000, 20_000])  # 64,000 > 40,000
    with pytest.raises(UnsplittableTableError) as err:
        required_splits(job, SplitSettings())
    assert "table 'big' needs 64,000 bytes" in str(err.value)
    assert "40,000 in all" in str(err.value)
    with pytest.raises(UnsplittableTableError, match="--sharding auto"):
        required_splits(job, SplitSettings(sharding="table"))


def test_tables_named_in_constraints_are_never_split() -> None:
    job = task([table("big", rows=1000, dim=16), table("b", rows=10)], [40_000, 40_000])
    spec = ConstraintSpec(pins=(("big", 0),))
    best = choose_splits(job, SimBackend().stage_model, SplitSettings()).best
    assert 0 in best
    with pytest.raises(UnsplittableTableError, match="never split"):
        choose_splits(
            job,
            SimBackend().stage_model,
            SplitSettings(),
            spec,
        )


def test_unit_constraints_pin_row_blocks_and_keep_column_shards_apart() -> None:
    job = task([table("a", rows=1000, dim=16), table("b"), table("c")], [10**6] * 2)
    splits = {0: TableSplit(0, "column", (8, 8)), 1: TableSplit(1, "row", (500, 500))}
    units = units_of(job, splits)
    spec = unit_constraints(job, splits, ConstraintSpec(pins=(("c", 1),)))
    resolved = constraints_for(spec, units)
    names = [t.name for t in units.tables]
    assert names == ["a#c0", "a#c1", "b#r0", "b#r1", "c"]
    assert dict(resolved.pins) == {2: 0, 3: 1, 4: 1}
    assert resolved.apart == ((0, 1),)


def test_a_dominating_table_is_split_and_the_oracle_gains() -> None:
    # One hot table (pooling 400, dim 128) next to light ones on 4 devices.
    tables = [table("hot", rows=200_000, dim=128, pooling=400.0)] + [
        table(f"t{i}", rows=10_000, dim=16, pooling=2.0) for i in range(6)
    ]
    job = task(tables, [10**10] * 4)
    sim = SimBackend()
    load = SimBackend().cost_ms(job, OraclePlacer(sim, evaluations=0, restarts=0).place(job))
    assert split_candidates(job, sim.stage_model(job), SplitSettings(), load) == [0]
    choice = choose_splits(job, sim.stage_model, SplitSettings())
    assert choice.base == {} and set(choice.best) == {0}
    assert choice.splits_pay(0.2)
    whole = OraclePlacer(sim, evaluations=200, restarts=1, sharding="table").place(job)
    split = OraclePlacer(sim, evaluations=200, restarts=1, sharding="auto").place(job)
    assert whole.is_table_wise and not split.is_table_wise
    assert sim.cost_ms(job, split) < 0.8 * sim.cost_ms(job, whole)


def test_light_tables_stay_whole() -> None:
    job = task([table(f"t{i}", rows=1000, dim=16, pooling=2.0) for i in range(12)], [10**9] * 4)
    sim = SimBackend()
    load = SimBackend().cost_ms(job, OraclePlacer(sim, evaluations=0, restarts=0).place(job))
    assert split_candidates(job, sim.stage_model(job), SplitSettings(), load) == []
    placed = OraclePlacer(sim, evaluations=100, restarts=1, sharding="auto").place(job)
    assert placed.is_table_wise


def test_table_mode_never_splits() -> None:
    tables = [table("hot", rows=200_000, dim=128, pooling=400.0), table("t0"), table("t1")]
    job = task(tables, [10**10] * 4)
    sim = SimBackend()
    assert split_candidates(job, sim.stage_model(job), SplitSettings(sharding="table"), 1.0) == []


def test_the_cost_network_rates_a_split_placement_as_its_units(four_tables: list) -> None:
    from dreamshard.data.features import FeatureNormalizer
    from dreamshard.method.checkpoint import DreamShardModel

    model = DreamShardModel(normalizer=FeatureNormalizer.fit(four_tables))
    job = task(four_tables, [10**9] * 2)
    split = Placement((0, 1, 0, 1, 0), (TableSplit(0, "row", (500, 500)),))
    units, flat = split.resolve(job)
    np.testing.assert_allclose(
        model.predict_cost_ms([job], [split]), model.predict_cost_ms([units], [flat])
    )


def test_the_split_search_gives_equal_tables_equal_plans() -> None:
    # Shards are cached by value: an equal task built anew (new TableSpec objects) must
    # be split and placed exactly as the first.
    def build() -> Task:
        tables = [table("hot", rows=200_000, dim=128, pooling=400.0)] + [
            table(f"t{i}", rows=10_000, dim=16, pooling=2.0) for i in range(6)
        ]
        return task(tables, [10**10] * 4)

    sim = SimBackend()
    first = choose_splits(build(), sim.stage_model, SplitSettings())
    assert choose_splits(build(), sim.stage_model, SplitSettings()) == first
    placed = OraclePlacer(sim, evaluations=100, restarts=1, sharding="auto")
    assert placed.place(build()) == placed.place(build())


def test_the_split_search_scores_are_the_costs_of_its_placements() -> None:
    # A child plan updates its parent's device sums; the score must equal the cost of
    # its placement computed afresh.
    tables = [table(f"hot{k}", rows=200_000, dim=128, pooling=400.0) for k in range(2)] + [
        table(f"t{i}", rows=10_000, dim=16, pooling=2.0) for i in range(8)
    ]
    job = task(tables, [10**10] * 4)
    sim = SimBackend()
    choice = choose_splits(job, sim.stage_model, SplitSettings())
    assert set(choice.best) == {0, 1} and choice.splits_pay(0.02)
    for splits, placement, cost in (
        (choice.best, choice.best_placement, choice.best_cost),
        (choice.base, choice.base_placement, choice.base_cost),
    ):
        units = units_of(job, splits)
        assert placement is not None
        Placement(placement.device_of, ordered(splits)).validate(job)
        fresh = placement_cost(sim.stage_model(units), units, placement.device_of)
        assert cost == pytest.approx(fresh, rel=1e-9)


def test_dreamshard_keeps_a_split_plan_only_where_its_score_pays() -> None:
    from dreamshard.method.checkpoint import DreamShardModel, packaged_model_dir
    from dreamshard.placers.dreamshard import DreamShardPlacer

    model = DreamShardModel.load(packaged_model_dir("cpu-zen4"))
    tables = [table("hot", rows=200_000, dim=128, pooling=400.0)] + [
        table(f"t{i}", rows=10_000, dim=16, pooling=2.0) for i in range(6)
    ]
    job = task(tables, [10**10] * 4)
    for scorer in ("costnet", "sim"):
        placer = DreamShardPlacer(model, split_scorer=scorer)
        placement = placer.place(job)
        placement.validate(job)
        report = placer.last_report
        assert report is not None and report.split_tables == len(placement.splits) == 1
        assert report.split_score_ms is not None and report.base_score_ms is not None
        assert report.split_score_ms < 0.98 * report.base_score_ms
    light = task([table(f"t{i}", rows=1000, dim=16, pooling=2.0) for i in range(12)], [10**9] * 4)
    placer = DreamShardPlacer(model)
    assert placer.place(light).is_table_wise
    assert placer.last_report is not None and placer.last_report.split_score_ms is None


# -- table-row-wise: row blocks over one host's devices ----------------------------------


def hosts_task(tables: list, memory: list[int], per_host: int) -> Task:
    """A task of hosts of ``per_host`` devices."""
    return replace(task(tables, memory), devices_per_host=per_host)


def test_a_task_knows_its_hosts() -> None:
    job = hosts_task([table("a")], [10**6] * 4, 2)
    assert (job.host_size, job.num_hosts) == (2, 2)
    one = task([table("a")], [10**6] * 4)
    assert (one.host_size, one.num_hosts) == (4, 1)
    with pytest.raises(ValueError, match="divides its 4 devices"):
        hosts_task([table("a")], [10**6] * 4, 3)
    assert divides_into_hosts(2, 4) and divides_into_hosts(4, 4)
    assert not any(divides_into_hosts(n, 4) for n in (3, 0, -2, True, 2.0, "2"))
    # Hosts survive the tasks derived from it (a split task's units).
    assert job.with_tables([table("b")]).devices_per_host == 2


def test_table_row_blocks_sit_on_their_hosts_devices() -> None:
    job = hosts_task([table("a", rows=1000), table("b")], [10**6] * 4, 2)
    split = TableSplit(0, "table_row", (500, 500), host=1)
    shards = split.shards(job.tables[0])
    assert [s.name for s in shards] == ["a#h0", "a#h1"]
    assert [s.shard.device(job.host_size) for s in shards if s.shard] == [2, 3]
    assert shards[0].pooling_factor == pytest.approx(1.0)  # half the rows, half the ids
    Placement((2, 3, 0), (split,)).validate(job)
    with pytest.raises(InvalidPlacementError, match="puts row block 1 on device 3"):
        Placement((2, 2, 0), (split,)).validate(job)


@pytest.mark.parametrize(
    ("split", "per_host", "message"),
    [
        (TableSplit(0, "table_row", (500, 500), host=0), None, "needs at least 2 hosts"),
        (TableSplit(0, "table_row", (500, 500), host=2), 2, "has hosts 0..1"),
        (TableSplit(0, "table_row", (250,) * 4, host=0), 2, "over 2 devices of a host"),
        (TableSplit(0, "row", (250,) * 4, host=1), 2, "a row split has no host"),
    ],
)
def test_bad_table_row_splits_are_named(
    split: TableSplit, per_host: int | None, message: str
) -> None:
    job = task([table("a", rows=1000)], [10**6] * 4)
    if per_host is not None:
        job = replace(job, devices_per_host=per_host)
    with pytest.raises(InvalidPlacementError, match=message):
        split.check(job)


def test_table_row_blocks_reduce_within_the_host_then_cross_hosts() -> None:
    # 2 hosts of 2: a (dim 16) table-row-wise on host 1, b (dim 8) whole on device 0.
    job = hosts_task([table("a", rows=1000, dim=16), table("b", dim=8)], [10**6] * 4, 2)
    placement = Placement((2, 3, 0), (TableSplit(0, "table_row", (500, 500), host=1),))
    units = placement.units(job)
    widths = output_widths(units, placement.device_of, job)
    assert widths == ExchangeWidths([8, 0, 0, 0], [0, 0, 0, 0], [0, 0, 16, 16], 2)
    model = AllToAllModel(0.5, 1.0, "test", reduce_scatter_factor=3.0, all_gather_factor=2.0)
    batch = 4096
    a2a = model.time_ms([8, 0, 0, 0], batch)
    # Within host 1: each of its 2 devices sends and receives half the batch's 16 columns.
    intra = 0.5 + batch * 16 / 2 * 4 / 1e6
    # Across the 2 hosts, per local rank: host 1's devices send half of their B/2
    # samples' 16 columns; host 0's receive that and send nothing.
    cross = 0.5 + batch / 2 * 16 / 2 * 4 / 1e6
    fwd, bwd = model.exchange_ms(widths, batch)
    assert fwd == pytest.approx(a2a + 3.0 * intra + cross)
    assert bwd == pytest.approx(a2a + 2.0 * intra + cross)


def test_sim_costs_a_table_row_placement_as_its_stage_model_does() -> None:
    tables = [table("hot", rows=10**5, dim=64, pooling=50.0), table("b"), table("c", dim=8)]
    job = hosts_task(tables, [10**9] * 4, 2)
    sim = SimBackend()
    for host in (0, 1):
        split = TableSplit(0, "table_row", (50_000, 50_000), host=host)
        p = Placement((2 * host, 2 * host + 1, 1, 3), (split,))
        units, flat = p.resolve(job)
        expected = sim.cost_ms(job, p)
        assert sim.measure(job, [p])[0].cost_ms == pytest.approx(expected)
        assert placement_cost(sim.stage_model(units), units, flat.device_of) == pytest.approx(
            expected
        )
    # The same blocks over all 4 devices (row-wise) are another plan with another cost.
    row = Placement((0, 1, 2, 3, 1, 3), (TableSplit(0, "row", (25_000,) * 4),))
    assert sim.cost_ms(job, row) != pytest.approx(expected)


def test_a_table_no_device_holds_goes_table_row_wise_when_row_wise_is_full() -> None:
    # Devices 0 and 1 are nearly full with c, so a row block on each of the 4 does not
    # fit; host 1's two devices hold big's halves.
    tables = [table("big", rows=1000, dim=16), table("c", rows=10)]
    job = hosts_task(tables, [1_000, 1_000, 40_000, 40_000], 2)
    assert required_splits(job, SplitSettings()) == {
        0: TableSplit(0, "table_row", (500, 500), host=1)
    }
    placed = OraclePlacer(SimBackend(), evaluations=50, restarts=1, sharding="auto").place(job)
    assert placed.splits == (TableSplit(0, "table_row", (500, 500), host=1),)
    placed.validate(job)


def test_unit_constraints_pin_table_row_blocks_to_their_hosts_devices() -> None:
    job = hosts_task([table("a", rows=1000), table("b")], [10**6] * 4, 2)
    splits = {0: TableSplit(0, "table_row", (500, 500), host=1)}
    resolved = constraints_for(unit_constraints(job, splits, None), units_of(job, splits))
    assert dict(resolved.pins) == {0: 2, 1: 3}


def test_the_split_search_proposes_table_row_only_to_fit() -> None:
    # A dominating table on 2 hosts: the beam search splits it, never table-row-wise
    # (no cost model here sees what that saves); the plans equal those of one host.
    tables = [table("hot", rows=200_000, dim=128, pooling=400.0)] + [
        table(f"t{i}", rows=10_000, dim=16, pooling=2.0) for i in range(6)
    ]
    sim = SimBackend()
    for sharding in ("auto", "row"):
        one = choose_splits(task(tables, [10**10] * 4), sim.stage_model, SplitSettings(sharding))
        two = choose_splits(
            hosts_task(tables, [10**10] * 4, 2), sim.stage_model, SplitSettings(sharding)
        )
        assert two.best == one.best and set(two.best) == {0}
        assert all(s.kind != "table_row" for s in two.best.values())
