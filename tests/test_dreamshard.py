"""The DreamShard placer (placers/dreamshard.py): user constraints."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dreamshard.data.constraints import (
    parse_constraints,
    resolve_constraints,
)
from dreamshard.data.features import FeatureNormalizer
from dreamshard.errors import InfeasiblePlacementError
from dreamshard.method.checkpoint import DreamShardModel
from dreamshard.method.mdp import Rollout, TaskTensors
from dreamshard.placers.dreamshard import DreamShardPlacer
from dreamshard.types import Device, Task

from .conftest import table

TABLES = [
    table("a", 1000, 16, 2.0),
    table("b", 250, 32, 1.0),
    table("c", 500, 8, 10.0),
    table("d", 8000, 4, 1.0),
]


def task(memory: list[int]) -> Task:
    return Task("t", tuple(TABLES), tuple(Device(f"dev{i}", m) for i, m in enumerate(memory)))


@pytest.fixture
def model() -> DreamShardModel:
    torch.manual_seed(0)
    return DreamShardModel(normalizer=FeatureNormalizer.fit(TABLES))


def test_dreamshard_honours_constraints(model: DreamShardModel) -> None:
    t = task([10**9] * 3)
    raw = parse_constraints({"pin": {"d": 2}, "together": [["a", "c"]], "apart": [["a", "b", "d"]]})
    rules = resolve_constraints(raw, t)
    for samples in (0, 8):
        placement = DreamShardPlacer(model, samples=samples, constraints=raw).place(t)
        placement.validate(t)
        rules.check(placement, t)


def test_dreamshard_reports_unplaceable_constraints(model: DreamShardModel) -> None:
    t = task([130_000, 100_000])
    raw = parse_constraints({"apart": [["a", "d"]], "together": [["b", "c"]]})
    # Which table the error names depends on the order the model places them in.
    with pytest.raises(InfeasiblePlacementError, match=r"table '[a-d]'"):
        DreamShardPlacer(model, constraints=raw).place(t)


def test_dead_ended_policy_falls_back_to_a_memory_packing(
    model: DreamShardModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    import dreamshard.method.propose as propose_module
    from dreamshard.data.tasks import first_fit_decreasing
    from dreamshard.method.mdp import greedy_rollout, rollout

    def dead_end(result: Rollout, tt: TaskTensors) -> Rollout:
        last = tt.order[-1]  # stuck on the last table
        return replace(
            result,
            feasible=torch.zeros_like(result.feasible),
            stuck_table=torch.full_like(result.stuck_table, last),
        )

    def dead_ends(policy: Any, costnet: Any, tt: TaskTensors, *args: Any) -> Rollout:
        return dead_end(rollout(policy, costnet, tt, *args), tt)

    def greedy_dead_ends(policy: Any, costnet: Any, tt: TaskTensors) -> Rollout:
        return dead_end(greedy_rollout(policy, costnet, tt), tt)

    monkeypatch.setattr(propose_module, "rollout", dead_ends)
    monkeypatch.setattr(propose_module, "greedy_rollout", greedy_dead_ends)
    t = task([10**9, 10**9])
    placer = DreamShardPlacer(model, search="none", sharding="table")
    assert placer.place(t) == first_fit_decreasing(t)
    assert placer.last_report is not None and placer.last_report.chosen == "memory-packing"
    # The search starts from the packing (or its own greedy) and keeps memory.
    searched = DreamShardPlacer(model).place(t)
    searched.validate(t)
    # With constraints the packing (which ignores them) is no way out: still an error.
    pinned = parse_constraints({"pin": {"a": 1}})
    with pytest.raises(InfeasiblePlacementError):
        DreamShardPlacer(model, constraints=pinned, search="none", sharding="table").place(t)
    # The cost-guided greedy honours the pin.
    assert DreamShardPlacer(model, constraints=pinned).place(t).device_of[0] == 1
