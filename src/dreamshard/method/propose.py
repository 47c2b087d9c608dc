"""DreamShard's candidate placements of a task: the policy proposes, a search improves.

The paper places a task with the greedy policy on the estimated MDP. Beyond it (as
NeuroShard showed, search pays off once the cost model ranks placements right), the
policy's placements are candidates of a search scored by the cost network
(``method/search.py``):

- ``search="none"``: the policy's greedy placement, plus ``samples`` sampled ones;
- ``search="greedy"``: adds the cost-guided greedy (each table, largest predicted cost
  first, onto the device that minimises the predicted cost of the partial placement);
- ``search="local"``: then hill-climbs (moves and swaps) from the
  :data:`LOCAL_SEARCH_STARTS` best candidates.

Effort is bounded by passes and scored candidates (:class:`SearchSettings`; by default
:func:`default_evaluations`, sized to the planning-time targets on a 2-core machine),
which stop at the same point on any machine; a time budget may cap it too, and only a
search that budget cut short depends on the machine's speed (``Proposals.timed_out``).

The placer (``placers/dreamshard.py``) picks from these; the trainer measures them, so
the cost network learns exactly where the placer relies on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dreamshard.constants import DEFAULT_SEED
from dreamshard.data.constraints import NO_CONSTRAINTS, Constraints
from dreamshard.errors import InputError
from dreamshard.method.checkpoint import DreamShardModel
from dreamshard.method.costnet import CostNetStageModel
from dreamshard.method.mdp import Rollout, TaskTensors, greedy_rollout, rollout, task_tensors
from dreamshard.method.search import greedy_placement, local_search, placement_cost
from dreamshard.runtime import one_thread
from dreamshard.types import Placement, Task

#: Search modes, cheapest first.
SEARCH_MODES: tuple[str, ...] = ("none", "greedy", "local")

#: Candidates the local search starts from (the best distinct ones).
LOCAL_SEARCH_STARTS = 2

#: Sampled episodes tried, in rounds, when no episode so far fits in memory.
FALLBACK_SAMPLES: tuple[int, ...] = (16, 64, 256)

#: Most ``episodes x tables x devices`` of one fallback round: an episode's steps cost
#: in proportion to tables x devices, and pretraining on tasks of 2,500 tables over
#: 1,024 devices spent minutes of an iteration in these rounds (capped: 13 episodes a
#: round there). No task of up to 320 tables on 256 devices is capped.
FALLBACK_WORK = 2**25


@dataclass(frozen=True)
class SearchSettings:
    """How hard to search.

    Attributes:
        search: ``"none"``, ``"greedy"`` or ``"local"``.
        samples: Sampled policy episodes added as candidates.
        seed: Seed of the sampling and of the swap draws.
        max_passes: Passes over the tables of each local search.
        max_evaluations: Candidate placements the local searches of one task may score
            in all (None: :func:`default_evaluations`).
        time_budget_ms: Cap on the whole proposal's time (None: none, so results do not
            depend on the machine's speed).
    """

    search: str = "local"
    samples: int = 0
    seed: int = DEFAULT_SEED
    max_passes: int = 4
    max_evaluations: int | None = None
    time_budget_ms: float | None = None

    def __post_init__(self) -> None:
        if self.search not in SEARCH_MODES:
            raise InputError(f"unknown search {self.search!r} (use {', '.join(SEARCH_MODES)})")
        if self.samples < 0:
            raise InputError(f"samples must be >= 0, got {self.samples}")
        if self.max_passes < 1 or (self.max_evaluations is not None and self.max_evaluations < 1):
            raise InputError("search passes and evaluations must be at least 1")
        if self.time_budget_ms is not None and not self.time_budget_ms > 0:
            raise InputError(f"time budget must be positive, got {self.time_budget_ms} ms")


def default_evaluations(task: Task) -> int:
    """Default local-search effort: 2,000 + 20 per table scored candidates (a candidate
    costs 5-8 us on the 2-core development machine: 30 ms on 100 tables, 0.1 s on
    1,000), in all over the starts."""
    return 2_000 + 20 * task.num_tables


@dataclass
class Proposals:
    """Candidate placements of one task.

    Attributes:
        scored: (predicted cost ms, placement), lowest first; empty when none fits.
        origin: Where each came from ("policy", "policy-sample", "cost-greedy", "given",
            with "+local" when a local search produced it).
        tensors: The task's MDP tensors (order, constraints).
        greedy_episode: The policy's greedy episode (to explain a dead end).
        converged: Whether every local search reached a local optimum (None: none ran).
        timed_out: Whether the time budget cut a search short.
    """

    scored: list[tuple[float, Placement]]
    origin: dict[Placement, str]
    tensors: TaskTensors
    greedy_episode: Rollout
    converged: bool | None
    timed_out: bool


def propose(
    model: DreamShardModel,
    task: Task,
    settings: SearchSettings,
    constraints: Constraints = NO_CONSTRAINTS,
    extra: dict[Placement, str] | None = None,
    cost_greedy: Placement | None = None,
) -> Proposals:
    """The candidates of ``task`` (see the module docstring), scored by the cost network.

    Args:
        model: The model.
        task: The task.
        settings: Search mode and effort.
        constraints: User constraints every candidate honours.
        extra: Further valid placements to consider and search from (e.g. a memory
            packing when the policy dead-ends), with their origin.
        cost_greedy: The cost-guided greedy placement on this model, where the caller
            has one (the split search scores plans by it); else it is computed.
    """
    start = time.perf_counter()
    deadline = None if settings.time_budget_ms is None else start + settings.time_budget_ms / 1e3
    with torch.no_grad(), one_thread():
        tt = task_tensors(task, model.normalizer, model.costnet, constraints)
        origin, greedy = _policy_candidates(model, tt, settings)
        for placement, where in (extra or {}).items():
            origin.setdefault(placement, where)
        stage = CostNetStageModel(model.costnet, tt.features, task.num_devices)
        if settings.search != "none":
            if cost_greedy is None:
                cost_greedy = greedy_placement(task, stage, tt.order, constraints)
            if cost_greedy is not None:
                origin.setdefault(cost_greedy, "cost-greedy")
        scored = sorted(
            ((placement_cost(stage, task, p.device_of), p) for p in origin), key=lambda cp: cp[0]
        )
        converged: bool | None = None
        timed_out = False
        if settings.search == "local" and scored:
            converged = True
            starts = scored[:LOCAL_SEARCH_STARTS]
            budget = settings.max_evaluations or default_evaluations(task)
            for k, (_, begin) in enumerate(starts):
                share = None
                if deadline is not None:  # each start gets an equal share of the time left
                    now = time.perf_counter()
                    share = now + max(0.0, (deadline - now) / (LOCAL_SEARCH_STARTS - k))
                improved, report = local_search(
                    task,
                    stage,
                    begin,
                    constraints,
                    max_passes=settings.max_passes,
                    max_evaluations=max(1, budget // len(starts)),
                    deadline=share,
                    seed=settings.seed + k,
                )
                converged &= report.converged
                timed_out |= report.timed_out
                if improved not in origin:
                    origin[improved] = origin[begin] + "+local"
                    scored.append((report.cost, improved))
            scored.sort(key=lambda cp: cp[0])
    return Proposals(scored, origin, tt, greedy, converged, timed_out)


def _policy_candidates(
    model: DreamShardModel, tt: TaskTensors, settings: SearchSettings
) -> tuple[dict[Placement, str], Rollout]:
    """The policy's feasible placements (greedy, samples, then memory fallbacks while
    none fits), each with its origin, in the order found; and the greedy episode."""
    greedy = greedy_rollout(model.policy, model.costnet, tt)
    found: dict[Placement, str] = {}
    if bool(greedy.feasible[0]):
        found[_placement(greedy.device_of[0])] = "policy"

    def sample(episodes: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        sampled = rollout(model.policy, model.costnet, tt, episodes, False, generator)
        for b in torch.nonzero(sampled.feasible).flatten().tolist():
            found.setdefault(_placement(sampled.device_of[b]), "policy-sample")

    if settings.samples:
        sample(settings.samples, settings.seed)
    rounds = fallback_rounds(tt.task)
    for round_, episodes in enumerate(rounds):
        if found:
            break
        sample(episodes, settings.seed + 1 + round_)
    return found, greedy


def episode_cap(task: Task) -> int:
    """Most episodes of ``task`` one fallback round samples (:data:`FALLBACK_WORK`)."""
    return max(1, FALLBACK_WORK // max(1, task.num_tables * task.num_devices))


def fallback_rounds(task: Task) -> tuple[int, ...]:
    """The fallback rounds' episodes (:data:`FALLBACK_SAMPLES`), each capped by
    :func:`episode_cap`; a round the cap makes equal to the one before is dropped."""
    cap = episode_cap(task)
    rounds: list[int] = []
    for episodes in FALLBACK_SAMPLES:
        if not rounds or min(episodes, cap) > rounds[-1]:
            rounds.append(min(episodes, cap))
    return tuple(rounds)


def _placement(device_of: torch.Tensor) -> Placement:
    return Placement(tuple(int(d) for d in device_of))
