"""Pretraining in stages (``workflows.pretrain``): the task mix and the provenance."""

from __future__ import annotations

import json
from pathlib import Path

from dreamshard.method.train import TrainConfig
from dreamshard.workflows.pretrain import PROVENANCE_FILE, PretrainConfig, pretrain

TINY = TrainConfig(
    iterations=1, measurements_per_iteration=2, cost_steps=2, policy_batches=1, seed=3
)


def _provenance(folder: Path) -> dict:
    return json.loads((folder / PROVENANCE_FILE).read_text())


def test_a_second_stage_adds_dlrm_like_tasks_and_records_the_first(tmp_path: Path) -> None:
    first = tmp_path / "first"
    pretrain(PretrainConfig(num_tables=40, num_tasks=2, train=TINY), first)
    stage1 = _provenance(first)
    assert stage1["data"]["tasks"] == 2
    assert stage1["data"]["dlrm_pool_tables"] == 0
    assert stage1["init_provenance"] is None

    second = tmp_path / "second"
    config = PretrainConfig(
        num_tables=40, num_tasks=2, dlrm_tables=30, dlrm_tasks=3, init=str(first), train=TINY
    )
    pretrain(config, second)
    stage2 = _provenance(second)
    assert stage2["data"]["tasks"] == 5
    assert stage2["data"]["dlrm_pool_tables"] == 30
    assert stage2["config"]["init"] == str(first)
    assert stage2["init_provenance"] == stage1
    info = json.loads((second / "config.json").read_text())["info"]
    assert info["init"] == str(first)
