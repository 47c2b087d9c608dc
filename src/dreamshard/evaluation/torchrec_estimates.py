"""TorchRec's own estimate of any placement, beside measured costs.

:func:`torchrec_estimate` rates a placement with TorchRec's cost and memory estimators
(``EmbeddingPerfEstimator``, ``EmbeddingStorageEstimator``), so reports can show what
TorchRec's model thinks of every placer's plans next to what they measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dreamshard.constants import DEFAULT_BATCH_SIZE
from dreamshard.errors import InvalidPlacementError
from dreamshard.evaluation.evaluate import Evaluation
from dreamshard.placers.torchrec import (
    sharders,
    task_module,
    torchrec_constraints,
    torchrec_topology,
)
from dreamshard.types import Placement, StageCosts, Task


@dataclass(frozen=True)
class TorchRecEstimate:
    """TorchRec's own estimate of a placement, per rank (its ``Perf`` and ``Storage``).

    Attributes:
        per_device: TorchRec's estimated stage times per rank, in milliseconds: forward
            compute (plus prefetch, zero here), forward comms, backward comms, backward
            compute. Its input-distribution time is not part of its total, nor here.
        storage_bytes: Estimated memory per rank (HBM on cuda, DDR on cpu), including
            the input/output buffers TorchRec counts.
    """

    per_device: tuple[StageCosts, ...]
    storage_bytes: tuple[int, ...]

    @property
    def cost_ms(self) -> float:
        """TorchRec's rating of the plan: the largest per-rank total (``NoopPerfModel``)."""
        return max(c.total_ms for c in self.per_device)


def torchrec_estimate(
    task: Task,
    placement: Placement,
    compute_device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> TorchRecEstimate:
    """Rate ``placement`` with TorchRec's perf and storage estimators (table-wise, fused).

    The estimate of a table-wise shard does not depend on its rank, so each table is
    estimated once and summed per rank, as TorchRec's partitioner and ``NoopPerfModel``
    do for their own plans.
    """
    from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
    from torchrec.distributed.planner.shard_estimators import (
        EmbeddingPerfEstimator,
        EmbeddingStorageEstimator,
    )

    placement.validate(task)
    if not placement.is_table_wise:
        raise InvalidPlacementError(
            f"task {task.name!r}: TorchRec's estimate here rates table-wise placements; "
            f"this one splits {len(placement.splits)} tables"
        )
    topology = torchrec_topology(task, compute_device)
    constraints = torchrec_constraints(task)
    enumerator = EmbeddingEnumerator(
        topology=topology,
        batch_size=max(1, batch_size // task.num_devices),
        constraints=constraints,
        estimator=[
            EmbeddingPerfEstimator(topology, constraints),
            EmbeddingStorageEstimator(topology, constraints),
        ],
    )
    options = {o.name: o for o in enumerator.enumerate(task_module(task), sharders())}
    zero = np.zeros(task.num_devices)
    fwd_comp, fwd_comm, bwd_comm, bwd_comp = (zero.copy() for _ in range(4))
    storage = [0] * task.num_devices
    for t, d in zip(task.tables, placement.device_of, strict=True):
        (shard,) = options[t.name].shards
        perf, mem = shard.perf, shard.storage
        fwd_comp[d] += perf.fwd_compute + perf.prefetch_compute
        fwd_comm[d] += perf.fwd_comms
        bwd_comm[d] += perf.bwd_comms
        bwd_comp[d] += perf.bwd_compute
        storage[d] += int(mem.hbm if compute_device == "cuda" else mem.ddr)
    per_device = tuple(
        StageCosts(float(a), float(b), float(c), float(e))
        for a, b, c, e in zip(fwd_comp, fwd_comm, bwd_comm, bwd_comp, strict=True)
    )
    return TorchRecEstimate(per_device, tuple(storage))


def torchrec_estimates(
    evaluation: Evaluation,
    tasks: Sequence[Task],
    compute_device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """TorchRec's estimate of every placement of an evaluation, beside the measured cost.

    Returns:
        JSON-ready: ``per_task`` (placer -> task -> TorchRec's estimated cost in ms; split
        placements have none, the estimate being table-wise), ``mean_estimate_ms`` (placer
        -> mean over the tasks every placer placed table-wise) and ``mean_measured_ms``
        (the evaluation's means), ``compute_device`` and ``batch_size``.
    """
    by_name = {t.name: t for t in tasks}
    per_task: dict[str, dict[str, float]] = {p: {} for p in evaluation.placers}
    for r in evaluation.results:
        # The estimate is table-wise (one shard per table): split placements get none.
        if r.placement is not None and r.placement.is_table_wise:
            estimate = torchrec_estimate(by_name[r.task], r.placement, compute_device, batch_size)
            per_task[r.placer][r.task] = estimate.cost_ms
    common = [
        t for t in evaluation.common_tasks() if all(t in per_task[p] for p in evaluation.placers)
    ]
    mean_estimate = {
        p: float(np.mean([per_task[p][t] for t in common])) if common else float("nan")
        for p in evaluation.placers
    }
    mean_measured = {s.placer: s.mean_cost_ms for s in evaluation.summary()}
    return {
        "compute_device": compute_device,
        "batch_size": batch_size,
        "per_task": per_task,
        "mean_estimate_ms": mean_estimate,
        "mean_measured_ms": mean_measured,
    }
