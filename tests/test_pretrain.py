"""Pretraining in stages (``workflows.pretrain``): the task mix and the provenance."""

from __future__ import annotations

import json
from pathlib import Path

from dreamshard.data.augment import (
    LARGE_DEVICES,
    MAX_TABLES_PER_TASK,
    augmented_table_pool,
    augmented_tasks,
)
from dreamshard.data.tasks import fits_memory
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


def test_large_tasks_reach_many_devices_and_fit_memory() -> None:
    pool = augmented_table_pool(400, seed=5)
    tasks = augmented_tasks(pool, 40, seed=6, large=True)
    assert {t.num_devices for t in tasks} <= set(LARGE_DEVICES)
    assert max(t.num_devices for t in tasks) == max(LARGE_DEVICES)
    # More tables than the small tasks' cap, never more than the pool holds.
    assert max(t.num_tables for t in tasks) > MAX_TABLES_PER_TASK
    assert all(t.num_tables <= len(pool) for t in tasks)
    assert all(fits_memory(t) for t in tasks)
    small = augmented_tasks(pool, 12, seed=6)
    assert max(t.num_tables for t in small) <= MAX_TABLES_PER_TASK


def test_large_tasks_join_the_stage_and_its_provenance(tmp_path: Path) -> None:
    config = PretrainConfig(num_tables=40, num_tasks=2, large_tasks=1, train=TINY)
    pretrain(config, tmp_path / "m")
    provenance = _provenance(tmp_path / "m")
    assert provenance["data"]["tasks"] == 3
    assert provenance["config"]["large_tasks"] == 1
