"""A real run: 2 CPU processes (gloo) shard a model with DistributedModelParallel using
a plan DreamShard produced, run forward and backward, and report which tables they hold."""

from __future__ import annotations

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
from dreamshard.method.checkpoint import DreamShardModel
from dreamshard.torchrec.plan import plan_from_placement, save_plan
from dreamshard.types import Placement

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
    assert all(r in ([0], [1]) for r in collective["sparse.ebc"].values())
    # A topology for another world size is refused on every rank, naming the field.
    for result in results:
        assert result["world_size_error"] == ("topology: world size 3, but the job runs on 2 ranks")
