"""A real run: 2 CPU processes (gloo) shard a model with DistributedModelParallel using
a plan DreamShard produced, run forward and backward, and report which tables they hold;
4 processes as 2 hosts of 2 for table-row-wise sharding."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torchrec")

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dreamshard.data.features import FeatureNormalizer
from dreamshard.errors import InputError, InvalidPlacementError
from dreamshard.method.checkpoint import DreamShardModel
from dreamshard.torchrec.plan import plan_from_placement, save_plan
from dreamshard.types import Placement, TableSplit, row_split_sizes

from .conftest import table, task

WORLD_SIZE = 2
BATCH_PER_RANK = 8
#: name, rows, dim
TABLES = [("t0", 100, 8), ("t1", 60, 16), ("t2", 40, 8), ("t3", 80, 4)]
#: The plan under test puts t0 and t3 on rank 1, t1 and t2 on rank 0.
RANKS = (1, 0, 0, 1)
LEARNING_RATE = 0.5


class SparseModel(nn.Module):
    """A tiny recommendation model: an EmbeddingBagCollection under ``sparse.ebc`` and a
    dense layer over the pooled embeddings."""

    def __init__(self) -> None:
        super().__init__()
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        configs = [
            EmbeddingBagConfig(name=n, num_embeddings=r, embedding_dim=d, feature_names=[f"f_{n}"])
            for n, r, d in TABLES
        ]
        self.sparse = nn.Module()
        self.sparse.ebc = EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
        self.dense = nn.Linear(sum(d for _, _, d in TABLES), 1)

    def forward(self, features: Any) -> torch.Tensor:
        pooled = self.sparse.ebc(features)
        return self.dense(pooled.values())  # type: ignore[no-any-return]


def _batch(rank: int) -> Any:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    generator = torch.Generator().manual_seed(100 + rank)
    lengths, values = [], []
    for _, rows, _ in TABLES:
        bag = torch.randint(1, 4, (BATCH_PER_RANK,), generator=generator)
        lengths.append(bag)
        values.append(torch.randint(0, rows, (int(bag.sum()),), generator=generator))
    return KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f_{n}" for n, _, _ in TABLES],
        values=torch.cat(values),
        lengths=torch.cat(lengths),
    )


def _worker(rank: int, port: int, plan_path: str, out_dir: str, model_dir: str) -> None:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel

    from dreamshard.errors import InputError
    from dreamshard.torchrec.plan import load_sharding_plan, ranks_of_tables
    from dreamshard.torchrec.planner import DreamShardPlanner, PlannerTopology, TableStats

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        model = SparseModel()
        plan = load_sharding_plan(plan_path, model, world_size=dist.get_world_size())
        sharder = EmbeddingBagCollectionSharder(
            fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LEARNING_RATE}
        )
        sharded = DistributedModelParallel(
            model, plan=plan, device=torch.device("cpu"), sharders=[sharder]
        )
        state = sharded.state_dict()
        prefix = "sparse.ebc.embedding_bags."
        local = {
            key[len(prefix) : -len(".weight")]: value.local_shards()[0].tensor.clone()
            for key, value in state.items()
            if key.startswith(prefix) and value.local_shards()
        }
        out = sharded(_batch(rank))
        out.sum().backward()
        after = sharded.state_dict()
        changed = {
            name: not torch.equal(before, after[f"{prefix}{name}.weight"].local_shards()[0].tensor)
            for name, before in local.items()
        }
        # The drop-in planner: plans on rank 0 and broadcasts to every rank.
        planner = DreamShardPlanner(
            PlannerTopology.uniform(WORLD_SIZE, 10**6, "cpu"),
            model_dir,
            {n: TableStats(pooling_factor=2.0) for n, _, _ in TABLES},
        )
        collective = ranks_of_tables(planner.collective_plan(SparseModel()))
        wrong = DreamShardPlanner(PlannerTopology.uniform(3, 10**6, "cpu"), model_dir)
        try:
            wrong.collective_plan(SparseModel())
            mismatch = ""
        except InputError as err:
            mismatch = str(err)
        result = {
            "rank": rank,
            "collective_plan": collective,
            "world_size_error": mismatch,
            "tables": sorted(local),
            "shapes": {n: list(t.shape) for n, t in local.items()},
            "updated": changed,
            "output_shape": list(out.shape),
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_distributed_model_parallel_runs_our_plan(tmp_path: Path) -> None:
    placed = task([table(n, rows=r, dim=d) for n, r, d in TABLES], [10**6] * WORLD_SIZE)
    torch.manual_seed(0)  # an untrained model: the collective plan needs weights, not quality
    model_dir = tmp_path / "model"
    DreamShardModel(normalizer=FeatureNormalizer.fit(placed.tables)).save(model_dir)
    spec = plan_from_placement(placed, Placement(RANKS), module_path="sparse.ebc")
    plan_path = tmp_path / "plan.json"
    save_plan(plan_path, spec)

    mp.spawn(
        _worker,
        args=(_free_port(), str(plan_path), str(tmp_path), str(model_dir)),
        nprocs=WORLD_SIZE,
        join=True,
    )

    expected = {
        rank: sorted(n for (n, _, _), r in zip(TABLES, RANKS, strict=True) if r == rank)
        for rank in range(WORLD_SIZE)
    }
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    for rank, result in enumerate(results):
        assert result["tables"] == expected[rank]
        # Whole tables (table-wise): each local shard has the table's full shape.
        for name, rows, dim in TABLES:
            if name in expected[rank]:
                assert result["shapes"][name] == [rows, dim]
        # Backward ran the fused SGD update on every local table (every table was looked up).
        assert all(result["updated"].values())
        assert result["output_shape"] == [BATCH_PER_RANK, 1]
    # Every rank received rank 0's DreamShard plan: every table once, on a real rank.
    collective = results[0]["collective_plan"]
    assert results[1]["collective_plan"] == collective
    assert sorted(collective["sparse.ebc"]) == sorted(n for n, _, _ in TABLES)
    # (Whole tables on one rank; a table the default sharding="auto" splits on both.)
    assert all(r and set(r) <= {0, 1} for r in collective["sparse.ebc"].values())
    # A topology for another world size is refused on every rank, naming the field.
    for result in results:
        assert result["world_size_error"] == ("topology: world size 3, but the job runs on 2 ranks")


# -- split tables: column-wise, row-wise and table-wise in one model ---------------------

#: name, rows, dim. ``rw`` (9,632 bytes) fits no single device of SPLIT_MEMORY_BYTES,
#: while all three tables (14,112 bytes) fit the two together.
SPLIT_TABLES = [("cw", 60, 16), ("rw", 301, 8), ("tw", 40, 4)]
SPLIT_MEMORY_BYTES = 8_000
#: ``cw`` in column shards of 12 and 4 columns on ranks 1 and 0 (shard 0 on rank 1:
#: TorchRec's helper alone would put shard j on rank j); ``rw`` in TorchRec's row blocks
#: (151, 150) on ranks 0 and 1; ``tw`` whole on rank 0.
SPLIT_DEVICE_OF = (1, 0, 0, 1, 0)
#: Rank -> table -> (offsets, sizes) of each shard it must hold.
SPLIT_SHARDS = {
    0: {"cw": [[[0, 12], [60, 4]]], "rw": [[[0, 0], [151, 8]]], "tw": [[[0, 0], [40, 4]]]},
    1: {"cw": [[[0, 0], [60, 12]]], "rw": [[[151, 0], [150, 8]]]},
}


#: (name, rows, dim) of each table.
TableShapes = list[tuple[str, int, int]]


class PooledModel(nn.Module):
    """An EmbeddingBagCollection under ``sparse.ebc``; the output is its pooled embeddings."""

    def __init__(self, device: str, tables: TableShapes) -> None:
        super().__init__()
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        configs = [
            EmbeddingBagConfig(name=n, num_embeddings=r, embedding_dim=d, feature_names=[f"f_{n}"])
            for n, r, d in tables
        ]
        self.sparse = nn.Module()
        self.sparse.ebc = EmbeddingBagCollection(tables=configs, device=torch.device(device))

    def forward(self, features: Any) -> Any:
        return self.sparse.ebc(features)


def _split_batch(rank: int, tables: TableShapes) -> Any:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    generator = torch.Generator().manual_seed(200 + rank)
    lengths, values = [], []
    for _, rows, _ in tables:
        bag = torch.randint(1, 4, (BATCH_PER_RANK,), generator=generator)
        lengths.append(bag)
        values.append(torch.randint(0, rows, (int(bag.sum()),), generator=generator))
    return KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f_{n}" for n, _, _ in tables],
        values=torch.cat(values),
        lengths=torch.cat(lengths),
    )


def _split_worker(
    rank: int,
    port: int,
    plan_path: str,
    out_dir: str,
    tables: TableShapes = SPLIT_TABLES,
    world_size: int = WORLD_SIZE,
    local_world_size: int | None = None,
) -> None:
    """Shard ``tables`` by the plan on ``world_size`` ranks (hosts of ``local_world_size``
    ranks, TorchRec's ``LOCAL_WORLD_SIZE``; None: one host), run forward and backward on
    this rank's batch and write what the rank holds and computed to ``split<rank>.json``."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel

    from dreamshard.torchrec.plan import load_sharding_plan

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        reference = PooledModel("cpu", tables)  # the same weights on every rank
        model = PooledModel("meta", tables)
        hosts_error = ""
        if local_world_size is not None:
            # TorchRec builds its intra-host groups from LOCAL_WORLD_SIZE: a job whose
            # hosts are not the plan's is refused.
            os.environ["LOCAL_WORLD_SIZE"] = str(world_size)
            try:
                load_sharding_plan(plan_path, model, world_size=world_size)
            except InputError as err:
                hosts_error = str(err)
            os.environ["LOCAL_WORLD_SIZE"] = str(local_world_size)
        plan = load_sharding_plan(plan_path, model, world_size=dist.get_world_size())
        sharder = EmbeddingBagCollectionSharder(
            fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LEARNING_RATE}
        )
        sharded = DistributedModelParallel(
            model, plan=plan, device=torch.device("cpu"), sharders=[sharder]
        )
        # Each local shard takes its slice of the reference table.
        prefix = "sparse.ebc.embedding_bags."
        whole = reference.state_dict()
        shards: dict[str, list[list[list[int]]]] = {}
        shapes: dict[str, list[list[int]]] = {}
        for key, value in sharded.state_dict().items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) : -len(".weight")]
            for shard in value.local_shards():
                (row, col), (rows, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                with torch.no_grad():
                    shard.tensor.copy_(whole[key][row : row + rows, col : col + cols])
                shards.setdefault(name, []).append([[row, col], [rows, cols]])
                shapes.setdefault(name, []).append(list(shard.tensor.shape))
        batch = _split_batch(rank, tables)
        pooled = sharded(batch)
        expected = reference(batch)
        mine, theirs = pooled.to_dict(), expected.to_dict()
        max_diff = {k: float((mine[k] - theirs[k]).abs().max()) for k in theirs}
        pooled.values().sum().backward()
        updated = {
            key[len(prefix) : -len(".weight")]: any(
                not torch.equal(s.tensor, whole[key][o[0] : o[0] + z[0], o[1] : o[1] + z[1]])
                for s in value.local_shards()
                for o, z in [(s.metadata.shard_offsets, s.metadata.shard_sizes)]
            )
            for key, value in sharded.state_dict().items()
            if key.startswith(prefix) and value.local_shards()
        }
        result = {
            "shards": shards,
            "shapes": shapes,
            "keys": sorted(mine),
            "max_diff": max_diff,
            "updated": updated,
            "hosts_error": hosts_error,
        }
        Path(out_dir, f"split{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_model_parallel_runs_a_split_placement(tmp_path: Path) -> None:
    placed = task(
        [table(n, rows=r, dim=d) for n, r, d in SPLIT_TABLES], [SPLIT_MEMORY_BYTES] * WORLD_SIZE
    )
    rw = placed.tables[1]
    splits = (
        TableSplit(0, "column", (12, 4)),
        TableSplit(1, "row", row_split_sizes(rw.rows, WORLD_SIZE)),
    )
    # The row-wise table fits no device whole, all tables fit both: only split is it valid.
    assert rw.size_bytes > SPLIT_MEMORY_BYTES
    assert sum(t.size_bytes for t in placed.tables) <= SPLIT_MEMORY_BYTES * WORLD_SIZE
    for device in range(WORLD_SIZE):  # the same placement with rw whole, on either device
        with pytest.raises(InvalidPlacementError, match=f"device {device} .* holds"):
            Placement((1, 0, device, 0), splits[:1]).validate(placed)
    placement = Placement(SPLIT_DEVICE_OF, splits)
    placement.validate(placed)
    plan_path = tmp_path / "plan.json"
    save_plan(plan_path, plan_from_placement(placed, placement, module_path="sparse.ebc"))

    mp.spawn(
        _split_worker,
        args=(_free_port(), str(plan_path), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
    )

    for rank in range(WORLD_SIZE):
        result = json.loads((tmp_path / f"split{rank}.json").read_text())
        # Each rank holds exactly its planned shards, as local tensors of their size.
        assert result["shards"] == SPLIT_SHARDS[rank]
        assert result["shapes"] == {
            name: [size for _, size in shards] for name, shards in SPLIT_SHARDS[rank].items()
        }
        # The pooled embeddings of the rank's batch are the unsharded collection's.
        assert result["keys"] == sorted(f"f_{n}" for n, _, _ in SPLIT_TABLES)
        assert all(diff < 1e-5 for diff in result["max_diff"].values()), result["max_diff"]
        # Backward ran the fused SGD update on every shard the rank holds.
        assert result["updated"] == {name: True for name in SPLIT_SHARDS[rank]}


# -- two hosts: table-row-wise, column-wise and table-wise in one model -----------------

HOST_WORLD_SIZE = 4
RANKS_PER_HOST = 2
#: name, rows, dim.
HOST_TABLES = [("cw", 60, 16), ("twrw", 301, 8), ("tw", 40, 4)]
#: ``cw`` in column shards of 12 and 4 columns on ranks 3 and 0 (one on each host);
#: ``twrw`` in TorchRec's table-row blocks (151, 150) on host 1 (ranks 2 and 3); ``tw``
#: whole on rank 1.
HOST_DEVICE_OF = (3, 0, 2, 3, 1)  # cw#c0, cw#c1, twrw#h0, twrw#h1, tw
#: Rank -> table -> (offsets, sizes) of each shard it must hold.
HOST_SHARDS = {
    0: {"cw": [[[0, 12], [60, 4]]]},
    1: {"tw": [[[0, 0], [40, 4]]]},
    2: {"twrw": [[[0, 0], [151, 8]]]},
    3: {"cw": [[[0, 0], [60, 12]]], "twrw": [[[151, 0], [150, 8]]]},
}


@pytest.mark.slow
def test_distributed_model_parallel_runs_table_row_wise_on_two_hosts(tmp_path: Path) -> None:
    placed = dataclasses.replace(
        task([table(n, rows=r, dim=d) for n, r, d in HOST_TABLES], [10**6] * HOST_WORLD_SIZE),
        devices_per_host=RANKS_PER_HOST,
    )
    twrw = placed.tables[1]
    splits = (
        TableSplit(0, "column", (12, 4)),
        TableSplit(1, "table_row", row_split_sizes(twrw.rows, RANKS_PER_HOST), host=1),
    )
    placement = Placement(HOST_DEVICE_OF, splits)
    placement.validate(placed)
    plan_path = tmp_path / "plan.json"
    save_plan(plan_path, plan_from_placement(placed, placement, module_path="sparse.ebc"))

    mp.spawn(
        _split_worker,
        args=(
            _free_port(),
            str(plan_path),
            str(tmp_path),
            HOST_TABLES,
            HOST_WORLD_SIZE,
            RANKS_PER_HOST,
        ),
        nprocs=HOST_WORLD_SIZE,
        join=True,
    )

    for rank in range(HOST_WORLD_SIZE):
        result = json.loads((tmp_path / f"split{rank}.json").read_text())
        # Each rank holds exactly its planned shards, as local tensors of their size.
        assert result["shards"] == HOST_SHARDS[rank]
        assert result["shapes"] == {
            name: [size for _, size in shards] for name, shards in HOST_SHARDS[rank].items()
        }
        # The pooled embeddings of the rank's batch are the unsharded collection's.
        assert result["keys"] == sorted(f"f_{n}" for n, _, _ in HOST_TABLES)
        assert all(diff < 1e-5 for diff in result["max_diff"].values()), result["max_diff"]
        # Backward ran the fused SGD update on every shard the rank holds.
        assert result["updated"] == {name: True for name in HOST_SHARDS[rank]}
        # A job on one host of 4 (LOCAL_WORLD_SIZE=4) is refused before sharding.
        assert result["hosts_error"] == (
            f"{plan_path}: plan: table_row_wise table 'twrw' is cut over hosts of 2 ranks "
            "(field 'local_world_size'), but TorchRec sees 4 ranks per host (set "
            "LOCAL_WORLD_SIZE)"
        )
