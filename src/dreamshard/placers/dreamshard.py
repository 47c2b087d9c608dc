"""Placing tables with a trained model (METHOD.md section 4, inference).

The greedy policy on the estimated MDP gives a placement in milliseconds without
running anything. Beyond the paper, ``samples=K`` also draws K placements from the
policy and keeps the one the cost network rates best (the greedy one included).

Memory: the MDP only offers devices with room for the current table, but a greedy
episode can still paint itself into a corner (every device too full for a later large
table). Then, beyond the paper, the placer draws up to :data:`FALLBACK_SAMPLES` sampled
episodes and keeps the best that fits (the cost network rates them). If none fits and
the task has no user constraints, it returns the task's first-fit-decreasing memory
packing (``data.tasks.first_fit_decreasing``, logged as a warning) rather than fail a
task a memory packing can place; only if that fails too is the task reported infeasible.
"""

from __future__ import annotations

import logging

import torch

from dreamshard.constants import DEFAULT_SEED
from dreamshard.data.constraints import ConstraintSpec, ConstraintTracker, constraints_for
from dreamshard.data.tasks import first_fit_decreasing
from dreamshard.method.checkpoint import DreamShardModel
from dreamshard.method.mdp import rollout, task_tensors
from dreamshard.runtime import one_thread
from dreamshard.types import Placement, Task

#: Sampled episodes tried, in rounds, when the greedy episode does not fit in memory.
FALLBACK_SAMPLES: tuple[int, ...] = (16, 64, 256)

log = logging.getLogger(__name__)


class DreamShardPlacer:
    """A trained DreamShard model as a placer.

    Args:
        model: The trained model.
        samples: Extra sampled placements to consider (0: greedy policy only).
        seed: Seed of the sampling.
        constraints: User constraints, resolved against each task placed.
    """

    name = "dreamshard"

    def __init__(
        self,
        model: DreamShardModel,
        samples: int = 0,
        seed: int = DEFAULT_SEED,
        constraints: ConstraintSpec | None = None,
    ) -> None:
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        self.model = model
        self.samples = samples
        self.seed = seed
        self.constraints = constraints

    def place(self, task: Task) -> Placement:
        model = self.model
        constraints = constraints_for(self.constraints, task)
        with torch.no_grad(), one_thread():
            tt = task_tensors(task, model.normalizer, model.costnet, constraints)
            greedy = rollout(model.policy, model.costnet, tt, 1, greedy=True)
            device_of, cost, feasible = greedy.device_of, greedy.predicted_cost, greedy.feasible
            if self.samples:
                generator = torch.Generator().manual_seed(self.seed)
                sampled = rollout(model.policy, model.costnet, tt, self.samples, False, generator)
                device_of = torch.cat([device_of, sampled.device_of])
                cost = torch.cat([cost, sampled.predicted_cost])
                feasible = torch.cat([feasible, sampled.feasible])
            for round_, episodes in enumerate(FALLBACK_SAMPLES):
                if bool(feasible.any()):
                    break
                generator = torch.Generator().manual_seed(self.seed + 1 + round_)
                sampled = rollout(model.policy, model.costnet, tt, episodes, False, generator)
                device_of = torch.cat([device_of, sampled.device_of])
                cost = torch.cat([cost, sampled.predicted_cost])
                feasible = torch.cat([feasible, sampled.feasible])
        if not bool(feasible.any()) and constraints.is_empty:
            packed = first_fit_decreasing(task)
            if packed is not None:
                log.warning(
                    "task %r: no episode of the policy fits memory; placed by first-fit "
                    "decreasing instead",
                    task.name,
                )
                return packed
        if not bool(feasible.any()):
            # Replay the greedy episode up to the table that found no legal device.
            stuck = int(greedy.stuck_table[0])
            tracker = ConstraintTracker(task, constraints)
            for i in tt.order[: tt.order.index(stuck)]:
                tracker.place(i, [int(greedy.device_of[0, i])])
            raise tracker.infeasible(stuck)
        cost = torch.where(feasible, cost, torch.full_like(cost, float("inf")))
        best = int(torch.argmin(cost))
        return Placement(tuple(int(d) for d in device_of[best]))
