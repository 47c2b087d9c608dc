"""DreamShardPlanner (drop-in for TorchRec), TorchRec's planner as a placer, its estimates."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchrec")

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from dreamshard.backends.sim.model import SimBackend
from dreamshard.data.constraints import ConstraintSpec, parse_constraints
from dreamshard.data.features import FeatureNormalizer
from dreamshard.data.tables import DEFAULT_POOLING_FACTOR
from dreamshard.errors import InfeasiblePlacementError, InputError
from dreamshard.evaluation.evaluate import evaluate
from dreamshard.evaluation.torchrec_estimates import torchrec_estimate
from dreamshard.method.checkpoint import DreamShardModel
from dreamshard.placers.registry import PlacerOptions, make_placer
from dreamshard.placers.torchrec import TorchRecPlacer
from dreamshard.torchrec.plan import build_sharding_plan, ranks_of_tables
from dreamshard.torchrec.planner import DreamShardPlanner, PlannerTopology, TableStats
from dreamshard.types import Device, Placement, TableSpec, TableSplit

from .conftest import ONCE, table, task

#: name, rows, dim
TABLES = [("a", 1000, 16), ("b", 250, 32), ("c", 500, 8), ("d", 8000, 4)]
STATS = {n: TableStats(pooling_factor=float(k + 1)) for k, (n, _, _) in enumerate(TABLES)}
FULL_STATS = {n: TableStats(float(k + 1), ONCE) for k, (n, _, _) in enumerate(TABLES)}


def make_ebc(tables: list[tuple[str, int, int]] = TABLES) -> EmbeddingBagCollection:
    configs = [
        EmbeddingBagConfig(name=n, num_embeddings=r, embedding_dim=d, feature_names=[f"f_{n}"])
        for n, r, d in tables
    ]
    return EmbeddingBagCollection(tables=configs, device=torch.device("meta"))


def nested_model() -> nn.Module:
    model = nn.Module()
    model.sparse = nn.Module()
    model.sparse.ebc = make_ebc()
    return model


@pytest.fixture
def model_dir(tmp_path: Path, four_tables: list[TableSpec]) -> Path:
    """An untrained (seeded) DreamShard model: planning needs weights, not quality."""
    torch.manual_seed(0)
    DreamShardModel(normalizer=FeatureNormalizer.fit(four_tables)).save(tmp_path / "model")
    return tmp_path / "model"


def test_planner_plans_every_table_once_within_memory(model_dir: Path, single_thread: None) -> None:
    # d (128,000 bytes) fills a rank of 130,000 bytes: a, b and c (112,000) share the other.
    planner = DreamShardPlanner(PlannerTopology.uniform(2, 130_000, "cpu"), model_dir, STATS)
    with pytest.warns(UserWarning, match=r"4 of 4 tables lack statistics \(access_hist\)"):
        plan = planner.plan(nested_model())
    ranks = ranks_of_tables(plan)
    assert list(ranks) == ["sparse.ebc"]
    assert sorted(ranks["sparse.ebc"]) == ["a", "b", "c", "d"]
    (d_rank,) = ranks["sparse.ebc"]["d"]
    assert [ranks["sparse.ebc"][n] for n in "abc"] == [[1 - d_rank]] * 3
    assert planner.last is not None
    planner.last.placement.validate(planner.last.task)  # memory respected
    assert [t.pooling_factor for t in planner.last.task.tables] == [1.0, 2.0, 3.0, 4.0]
    assert planner.last.defaulted == {n: ["access_hist"] for n in "abcd"}


def test_missing_statistics_get_defaults_and_a_warning(
    model_dir: Path, single_thread: None
) -> None:
    planner = DreamShardPlanner(PlannerTopology.uniform(2, 10**6), model_dir)
    with pytest.warns(UserWarning, match="4 of 4 tables lack statistics"):
        planner.plan(make_ebc())
    assert planner.last is not None
    assert {t.pooling_factor for t in planner.last.task.tables} == {DEFAULT_POOLING_FACTOR}


def test_statistics_for_a_table_the_model_lacks_are_named(model_dir: Path) -> None:
    planner = DreamShardPlanner(
        PlannerTopology.uniform(2, 10**6), model_dir, {**STATS, "zzz": TableStats(1.0)}
    )
    with pytest.raises(InputError, match="table 'zzz' is not in the model"):
        planner.plan(make_ebc())


def test_model_table_without_statistics_is_named(model_dir: Path, single_thread: None) -> None:
    partial = {n: s for n, s in STATS.items() if n != "c"}
    with pytest.raises(InputError, match="the model's table 'c' has no statistics"):
        DreamShardPlanner(PlannerTopology.uniform(2, 10**6), model_dir, partial).plan(make_ebc())
    lenient = DreamShardPlanner(
        PlannerTopology.uniform(2, 10**6), model_dir, partial, allow_missing_stats=True
    )
    with pytest.warns(UserWarning, match="first: 'a'"):
        lenient.plan(make_ebc())


def test_id_sample_gives_pooling_factor_and_histogram(model_dir: Path, single_thread: None) -> None:
    # 4 bags with 3, 0, 2, 1 ids: pooling factor 6 / 4; rows 0 and 5 read twice.
    ids = (np.array([0, 5, 7, 0, 5, 1]), np.array([0, 3, 3, 5, 6]))
    stats = {**STATS, "a": TableStats(ids=ids)}
    planner = DreamShardPlanner(PlannerTopology.uniform(2, 10**6), model_dir, stats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        planner.plan(make_ebc())
    assert planner.last is not None
    a = planner.last.task.tables[0]
    assert a.pooling_factor == 1.5
    assert a.access_hist[:2] == (0.5, 0.5)  # rows 7, 1 once; rows 0, 5 twice
    assert "a" not in planner.last.defaulted


def test_bad_id_sample_names_the_table(model_dir: Path) -> None:
    stats = {**STATS, "b": TableStats(ids=(np.array([0, 300]), np.array([0, 2])))}
    planner = DreamShardPlanner(PlannerTopology.uniform(2, 10**6), model_dir, stats)
    with pytest.raises(InputError, match=r"statistics of table 'b': ids: .*out of range"):
        planner.plan(make_ebc())


# Two tables of 1000 x 16 FP32: 64,000 bytes of weights each; row-wise Adagrad adds one
# FP32 per row (4,000 bytes). On one rank of 130,000 bytes SGD fits, Adagrad does not.
TWO = [("x", 1000, 16), ("y", 1000, 16)]
TWO_STATS = {"x": TableStats(2.0, (1.0,) + (0.0,) * 16), "y": TableStats(3.0, (1.0,) + (0.0,) * 16)}


def test_optimizer_state_counts_in_memory(model_dir: Path, single_thread: None) -> None:
    topology = PlannerTopology.uniform(1, 130_000)
    DreamShardPlanner(topology, model_dir, TWO_STATS).plan(make_ebc(TWO))  # SGD: fits

    with_adagrad = make_ebc(TWO)
    apply_optimizer_in_backward(RowWiseAdagrad, with_adagrad.parameters(), {"lr": 0.1})
    # 2 x 68,000 bytes with the optimizer state: more than the one rank's 130,000.
    with pytest.raises(InputError, match="need 136,000 bytes in all"):
        DreamShardPlanner(topology, model_dir, TWO_STATS).plan(with_adagrad)

    sharder = EmbeddingBagCollectionSharder(
        fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.1}
    )
    with pytest.raises(InputError, match="need 136,000 bytes in all"):
        DreamShardPlanner(topology, model_dir, TWO_STATS).plan(make_ebc(TWO), [sharder])


def test_uncounted_optimizer_is_rejected(model_dir: Path) -> None:
    ebc = make_ebc(TWO)
    apply_optimizer_in_backward(torch.optim.Adam, ebc.parameters(), {"lr": 0.1})
    with pytest.raises(InputError, match="optimizer Adam"):
        DreamShardPlanner(PlannerTopology.uniform(1, 10**6), model_dir, TWO_STATS).plan(ebc)


def test_torchrec_topology_is_accepted(model_dir: Path, single_thread: None) -> None:
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=3, hbm_cap_bytes=500_000),
        kernel_config=KernelConfig(compute_device="cuda"),
    )
    planner = DreamShardPlanner(topology, model_dir, FULL_STATS)
    assert planner.topology == PlannerTopology((500_000,) * 3, "cuda", 3)
    plan = planner.plan(make_ebc())
    shard = plan.plan[""]["a"].sharding_spec.shards[0]  # type: ignore[index]
    assert str(shard.placement).endswith(f"cuda:{shard.placement.rank()}")


def test_planner_plans_for_the_hosts_of_a_torchrec_topology(
    model_dir: Path, single_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=4, local_world_size=2, hbm_cap_bytes=500_000),
        kernel_config=KernelConfig(compute_device="cuda"),
    )
    planner = DreamShardPlanner(topology, model_dir, FULL_STATS)
    assert planner.topology.devices_per_host == 2
    plan = planner.plan(make_ebc())
    assert planner.last is not None
    assert planner.last.task.devices_per_host == planner.last.spec.local_world_size == 2
    assert sorted(ranks_of_tables(plan)[""]) == ["a", "b", "c", "d"]
    # A placement with d's rows on host 1 becomes TorchRec's table_row_wise, built by
    # plan.py from the planner's spec.
    twrw = Placement((0, 1, 0, 2, 3), (TableSplit(3, "table_row", (4000, 4000), host=1),))
    monkeypatch.setattr(planner._placer, "place", lambda task: twrw)
    plan = planner.plan(make_ebc())
    d = plan.plan[""]["d"]  # type: ignore[index]
    assert (d.sharding_type, d.compute_kernel, d.ranks) == ("table_row_wise", "fused", [2, 3])
    assert [(s.shard_offsets, s.shard_sizes, str(s.placement)) for s in d.sharding_spec.shards] == [
        ([0, 0], [4000, 4], "rank:2/cuda:0"),
        ([4000, 0], [4000, 4], "rank:3/cuda:1"),
    ]
    spec = planner.last.spec
    assert plan == build_sharding_plan(spec, make_ebc(), local_world_size=2, device_type="cuda")
    # Ranks per host that do not split the ranks evenly into hosts: one host, as before.
    assert PlannerTopology((1,) * 4, "cuda", 3).devices_per_host is None
    assert PlannerTopology((1,) * 4, "cuda", 4).devices_per_host is None


# -- TorchRec's planner as a placer, and its estimates --------------------------------


def test_torchrec_placer_gives_a_valid_placement(four_tables: list[TableSpec]) -> None:
    placed = task(four_tables, [10**7] * 2)
    placer = make_placer("torchrec")
    placement = placer.place(placed)
    placement.validate(placed)
    assert placer.place(placed) == placement  # deterministic
    assert set(placement.device_of) == {0, 1}  # it balances its estimate over both ranks


def test_torchrec_placer_respects_memory(four_tables: list[TableSpec]) -> None:
    # d (128,000 bytes of weights) alone exceeds 100,000 bytes: TorchRec finds no plan.
    with pytest.raises(InfeasiblePlacementError, match="TorchRec's planner found no plan"):
        TorchRecPlacer().place(task(four_tables, [100_000] * 4))


def test_torchrec_estimate_sums_tables_per_rank(four_tables: list[TableSpec]) -> None:
    placed = task(four_tables, [10**7] * 2)
    together = torchrec_estimate(placed, Placement((0, 0, 0, 0)))
    spread = torchrec_estimate(placed, Placement((0, 1, 0, 1)))
    assert together.per_device[1].total_ms == 0.0
    assert together.storage_bytes[1] == 0
    # Table-wise estimates do not depend on the rank: the per-rank sums add up the same.
    assert sum(c.fwd_comp_ms for c in spread.per_device) == pytest.approx(
        together.per_device[0].fwd_comp_ms
    )
    assert spread.cost_ms < together.cost_ms
    # TorchRec counts at least the weights (plus its input/output buffers).
    assert together.storage_bytes[0] >= sum(t.size_bytes for t in four_tables)


def test_torchrec_estimate_of_its_own_plan_is_its_rating(four_tables: list[TableSpec]) -> None:
    placed = task([*four_tables, table("e", rows=3000, dim=8, pooling=20.0)], [10**7] * 3)
    own = torchrec_estimate(placed, TorchRecPlacer().place(placed))
    worst = torchrec_estimate(placed, Placement((0,) * 5))
    assert own.cost_ms < worst.cost_ms


def test_evaluate_compares_torchrec_with_the_baselines(four_tables: list[TableSpec]) -> None:
    tasks = [task(four_tables, [10**7] * 2, name=f"t{k}") for k in range(2)]
    result = evaluate(tasks, [make_placer("torchrec"), make_placer("size")], SimBackend())
    assert result.common_tasks() == ["t0", "t1"]
    assert result.best_baseline() in ("torchrec", "size")
    assert [s.placer for s in result.summary()] == ["torchrec", "size"]


# -- devices of different memory, and constraints -----------------------------------------


def test_planner_topology_keeps_each_ranks_memory_and_name(tmp_path: Path) -> None:
    path = tmp_path / "gpus.csv"
    path.write_text("name,memory\nbig,130kB\nsmall,120kB\n")
    topology = PlannerTopology.from_file(path, "cpu")
    assert topology == PlannerTopology((130_000, 120_000), "cpu", None, ("big", "small"))
    assert [(d.name, d.memory_bytes) for d in topology.devices()] == [
        ("big", 130_000),
        ("small", 120_000),
    ]
    listed = PlannerTopology([5, np.int64(7)])  # type: ignore[arg-type]
    assert listed.memory_bytes == (5, 7) and [d.name for d in listed.devices()] == [
        "rank0",
        "rank1",
    ]
    with pytest.raises(InputError, match=r"topology: rank 1: memory must be a positive integer"):
        PlannerTopology((5, 0))
    with pytest.raises(InputError, match=r"topology: rank name 'x' is given twice"):
        PlannerTopology((5, 6), names=("x", "x"))
    with pytest.raises(InputError, match=r"topology: 1 names for 2 ranks"):
        PlannerTopology((5, 6), names=("x",))


def test_heterogeneous_torchrec_topology_is_read_per_device() -> None:
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=3, hbm_cap_bytes=500_000),
        kernel_config=KernelConfig(compute_device="cuda"),
    )
    topology.devices[1].storage.hbm = 200_000
    assert PlannerTopology.from_torchrec(topology).memory_bytes == (500_000, 200_000, 500_000)


def test_planner_puts_the_big_table_on_the_big_rank(model_dir: Path, single_thread: None) -> None:
    # d (128,000 bytes) fits only rank 0 (130,000), which then has no room for another
    # table; a, b and c (112,000) fill rank 1 (120,000): the only placement.
    devices = (Device("big", 130_000), Device("small", 120_000))
    planner = DreamShardPlanner(PlannerTopology.from_devices(devices, "cpu"), model_dir, FULL_STATS)
    ranks = ranks_of_tables(planner.plan(make_ebc()))[""]
    assert ranks == {"a": [1], "b": [1], "c": [1], "d": [0]}


def test_planner_honours_constraints(model_dir: Path, single_thread: None) -> None:
    topology = PlannerTopology.uniform(world_size=3, memory_bytes=10**9)
    rules = {"pin": {"d": 2}, "together": [["a", "b"]], "apart": [["a", "c"]]}
    planner = DreamShardPlanner(topology, model_dir, FULL_STATS, constraints=rules)
    ranks = ranks_of_tables(planner.plan(make_ebc()))[""]
    assert ranks["d"] == [2]
    assert ranks["a"] == ranks["b"] != ranks["c"]
    with pytest.raises(InputError, match="unknown table 'zz'"):
        DreamShardPlanner(topology, model_dir, FULL_STATS, constraints={"pin": {"zz": 0}}).plan(
            make_ebc()
        )


def test_torchrec_placer_puts_the_big_table_on_the_big_device() -> None:
    # huge (64 MB) fits only dev1 (80 MB); dev0 (20 MB) holds one of the 12 MB tables.
    tables = [table("huge", rows=1_000_000), table("m1", rows=187_500), table("m2", rows=187_500)]
    for memory, big in (([20_000_000, 80_000_000], 1), ([80_000_000, 20_000_000], 0)):
        placed = task(tables, memory)
        placement = TorchRecPlacer().place(placed)
        placement.validate(placed)
        assert placement.device_of[0] == big
        assert sorted(placement.device_of[1:]) == [0, 1]


def test_torchrec_placer_refuses_constraints() -> None:
    message = r"placer 'torchrec' cannot honour constraints .*torchrec issue #2642"
    with pytest.raises(InputError, match=message):
        TorchRecPlacer(constraints=parse_constraints({"pin": {"a": 0}}))
    with pytest.raises(InputError, match=message):
        make_placer(
            "torchrec", PlacerOptions(constraints=parse_constraints({"apart": [["a", "b"]]}))
        )
    assert isinstance(
        make_placer("torchrec", PlacerOptions(constraints=ConstraintSpec())), TorchRecPlacer
    )
