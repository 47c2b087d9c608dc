"""DreamShard's training loop (METHOD.md section 4), top to bottom.

Each iteration:

1. collect  - choose placements of random training tasks and measure them on the cost
              backend (the only hardware use);
2. fit      - train the cost network on every measurement so far;
3. improve  - train the policy with REINFORCE on the estimated MDP (no hardware).

Beyond the paper (which measures only the current policy's samples, so its cost network
is accurate only on placements like them and cannot rank the balanced placements that
matter), each iteration measures a MIX (``TrainConfig.mix_*``, shares of
``measurements_per_iteration``):

- ``policy``: samples of the current policy (the paper's data);
- ``search``: what the current placer would output (``method.propose`` with search),
  so the network is corrected exactly where the placer relies on it (active learning);
- ``perturbed``: those with 1-3 random moves or swaps, the neighbourhood a search walks;
- ``reference``: the placements of reference placers (the expert rules; each measured
  once per task), the alternatives the placer must beat. Without reference placers
  their share goes to ``perturbed``.

Optionally (``TrainConfig.shard_measurements``) each iteration also measures random
single-device shards (a subset of a training task's tables fused on one device, of about
a device's share of the task): a device's computation depends on its own tables only, so
the cost network's computation heads (made context-free for it,
:meth:`~dreamshard.method.costnet.CostNet.drop_compute_context`) are fitted on them
directly, each to its own cost's relative precision. Whole placements weigh a device
by its placement's cost, where a device far from the slowest barely counts.

The cost network's loss adds, beside the paper's MSE, a pairwise term on the
differences of the predicted costs of placements of the SAME task (batches hold a few
placements of each of several tasks): ranking placements of one task is what a search
asks of it. A run may start from a trained model (``init``: fine-tuning a pretrained one).

After every iteration the model and the full training state are checkpointed, so an
interrupted run resumes where it stopped.

The checkpoint is one unit however the process dies: ``train_state.pt`` holds the model
too (and a hash of the ``model.pt`` written with it), it is replaced before ``model.pt``
is, and resuming takes the model from it and rewrites a ``model.pt`` that does not match.
A run holds the folder's lock (:func:`training_lock`) so two runs never write one folder,
and it resumes only onto the same tasks: names and content (a fingerprint per task).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamshard import __version__
from dreamshard.data.features import FeatureNormalizer, log_transform, network_features
from dreamshard.data.tables import table_to_record
from dreamshard.data.tasks import first_fit_decreasing
from dreamshard.errors import InfeasiblePlacementError, InputError
from dreamshard.fileio import write_json
from dreamshard.method.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    CheckpointError,
    DreamShardModel,
    remove_stale_temp_files,
    save_torch_atomic,
    write_temp_torch,
)
from dreamshard.method.costnet import DEVICE_ERRORS, CostTargets, PlacementBatch
from dreamshard.method.mdp import TaskTensors, rollout, task_tensors
from dreamshard.method.policy import NonFiniteError
from dreamshard.method.propose import SearchSettings, episode_cap, propose
from dreamshard.method.search import greedy_placement, local_search, perturb
from dreamshard.runtime import one_thread
from dreamshard.types import (
    CostBackend,
    Device,
    Placement,
    PlacementCost,
    Placer,
    StageCosts,
    StageModelBackend,
    Task,
)

log = logging.getLogger(__name__)

TRAIN_STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"
#: Held (``flock``) by the process training the folder; holds its pid.
LOCK_FILE = ".train.lock"
TRAIN_STATE_FORMAT = "dreamshard-train-state"
#: Version of the training-state layout; bump when an older state would resume wrongly.
TRAIN_STATE_VERSION = 3

#: Kinds of training measurements, in the order each iteration draws them.
MIX_KINDS: tuple[str, ...] = ("policy", "search", "perturbed", "reference")

#: The search whose outputs training measures: cheaper than the placer's default, as
#: it runs for many tasks per iteration.
TRAINING_SEARCH = SearchSettings(search="local", max_passes=2, max_evaluations=50_000)

#: Random moves of the warm-up's perturbed placements (one placement per entry and seed).
WARMUP_MOVES: tuple[int, ...] = (1, 2, 4, 8, 16)

#: A single-device shard holds a device's share of its task (tables / devices) times
#: ``exp(u)``, ``u`` uniform in +-this (1 to all tables): a third to three times a share.
SHARD_SIZE_SPREAD = 1.1


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; defaults are the paper's (METHOD.md section 4).

    Attributes:
        iterations: Collect / fit / improve rounds.
        measurements_per_iteration: Placements measured on the backend per round.
        cost_steps: Cost-network gradient steps per round.
        cost_batch_size: Measured placements per cost-network step.
        policy_batches: Policy updates per round.
        episodes_per_batch: Episodes (of one random training task) per policy update.
        learning_rate: Adam learning rate of both networks, decayed linearly to 0.
        entropy_weight: Weight of the entropy bonus in the policy loss.
        seed: Seed of everything random in training.
        mix_policy: Share of each iteration's measurements that are policy samples.
        mix_search: Share that are the search's outputs.
        mix_perturbed: Share that are perturbed search outputs.
        mix_reference: Share that are reference placers' placements.
        pairwise_weight: Weight of the pairwise (same-task difference) cost loss.
        relative_loss: Cost-network errors relative to each placement's measured cost
            (tasks of every size weigh the same), instead of in absolute units.
        device_error: What each device's error in the cost network's loss is divided by:
            ``"placement"`` (its placement's measured cost) or ``"device"`` (its own;
            :meth:`~dreamshard.method.costnet.CostNet.loss`).
        shard_measurements: Single-device shards measured per iteration (module
            docstring); 0: none. With any, the cost network's computation heads do not
            read the task context.
        shard_weight: Weight of the shards' loss beside the placements'.
        placements_per_task: Placements of one task per cost-network batch group.
        warmup_tasks: Training tasks measured densely before the first iteration
            (:meth:`Trainer.warmup`: up to 4 + 2 x len(:data:`WARMUP_MOVES`) placements
            each plus the reference placers', near-optimal ones included where the
            backend has a stage model); 0: none.

    ``mix_policy=1`` (others 0), ``pairwise_weight=0`` and ``relative_loss=False`` is
    the paper's training.
    """

    iterations: int = 10
    measurements_per_iteration: int = 10
    cost_steps: int = 300
    cost_batch_size: int = 64
    policy_batches: int = 10
    episodes_per_batch: int = 10
    learning_rate: float = 5e-4
    entropy_weight: float = 1e-3
    seed: int = 0
    mix_policy: float = 0.4
    mix_search: float = 0.3
    mix_perturbed: float = 0.2
    mix_reference: float = 0.1
    pairwise_weight: float = 1.0
    relative_loss: bool = True
    device_error: str = "placement"
    shard_measurements: int = 0
    shard_weight: float = 1.0
    placements_per_task: int = 4
    warmup_tasks: int = 0

    @property
    def mix(self) -> dict[str, float]:
        """The measurement mix by kind (see the module docstring)."""
        return {kind: getattr(self, f"mix_{kind}") for kind in MIX_KINDS}

    def __post_init__(self) -> None:
        shares = [getattr(self, f"mix_{kind}") for kind in MIX_KINDS]
        if not all(math.isfinite(x) and x >= 0 for x in shares) or not sum(shares) > 0:
            raise InputError("training config: the mix shares must be >= 0, not all 0")
        if not (math.isfinite(self.pairwise_weight) and self.pairwise_weight >= 0):
            raise InputError("training config: pairwise_weight must be >= 0")
        if self.warmup_tasks < 0:
            raise InputError("training config: warmup_tasks must be >= 0")
        if self.shard_measurements < 0:
            raise InputError("training config: shard_measurements must be >= 0")
        if not (math.isfinite(self.shard_weight) and self.shard_weight >= 0):
            raise InputError("training config: shard_weight must be >= 0")
        if self.device_error not in DEVICE_ERRORS:
            raise InputError(
                f"training config: device_error must be one of {', '.join(DEVICE_ERRORS)}, "
                f"got {self.device_error!r}"
            )
        if self.placements_per_task < 1:
            raise InputError("training config: placements_per_task must be at least 1")
        for name in ("learning_rate", "entropy_weight"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise InputError(f"training config: {name} must be finite, got {value}")
        for name in (
            "iterations",
            "measurements_per_iteration",
            "cost_steps",
            "cost_batch_size",
            "policy_batches",
            "episodes_per_batch",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"training config: {name} must be at least 1")
        if self.episodes_per_batch < 2:
            raise InputError("training config: episodes_per_batch must be at least 2")
        if not self.learning_rate > 0:
            raise InputError("training config: learning_rate must be positive")
        if self.entropy_weight < 0:
            raise InputError("training config: entropy_weight must be >= 0")


@dataclass(frozen=True)
class Measurement:
    """One measured placement of a training task."""

    task: Task
    placement: Placement
    cost: PlacementCost


@dataclass(frozen=True)
class ShardMeasurement:
    """One measured single-device shard: some tables of a training task fused on one
    device, and its computation."""

    task: Task
    tables: tuple[int, ...]
    fwd_comp_ms: float
    bwd_comp_ms: float


@dataclass(frozen=True)
class IterationReport:
    """What one training iteration did (printed and saved in ``history.json``).

    Attributes:
        iteration: 1-based index.
        measurements: Hardware measurements spent so far, in total.
        measured_mean_cost_ms: Mean measured cost of this iteration's placements.
        new_cost_mape: Cost network's error on this iteration's measurements before it
            was trained on them (held out), in percent; None in the first iteration.
        cost_loss: Mean cost-network loss over this iteration's steps.
        policy_predicted_cost_ms: Mean predicted cost of the last policy batch.
        wall_s: Wall time of the iteration.
        shard_measurements: Single-device shards measured so far, in total.
        new_shard_mape: The computation heads' error on this iteration's shards before
            they were trained on them (mean over forward and backward), in percent; None
            without shards or in the first iteration.
    """

    iteration: int
    measurements: int
    measured_mean_cost_ms: float
    new_cost_mape: float | None
    cost_loss: float
    policy_predicted_cost_ms: float
    wall_s: float
    shard_measurements: int = 0
    new_shard_mape: float | None = None


@dataclass
class _State:
    """Everything that changes during training (checkpointed after each iteration)."""

    iteration: int = 0
    buffer: list[Measurement] = field(default_factory=list)
    shards: list[ShardMeasurement] = field(default_factory=list)
    history: list[IterationReport] = field(default_factory=list)


class Trainer:
    """Trains a DreamShard model on training tasks with one cost backend.

    Args:
        config: Training settings.
        tasks: Training tasks.
        backend: Where measurements come from.
        out_dir: Model folder (checkpoints).
        on_iteration: Called with each iteration's report.
        reference_placers: Placers whose placements the ``reference`` share measures.
        init: A trained model to start from (its normaliser, weights and cost scale;
            fine-tuning), instead of fresh networks.
        init_source: What ``init`` is, recorded in the model's info.
        on_note: Called with a progress line of long steps (the warm-up).
    """

    def __init__(
        self,
        config: TrainConfig,
        tasks: Sequence[Task],
        backend: CostBackend,
        out_dir: str | Path,
        on_iteration: Callable[[IterationReport], None] | None = None,
        reference_placers: Sequence[Placer] = (),
        init: DreamShardModel | None = None,
        init_source: str | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        if not tasks:
            raise InputError("training needs at least one training task")
        self.config = config
        self.tasks = list(tasks)
        self.backend = backend
        self.out_dir = Path(out_dir)
        self.on_iteration = on_iteration
        self.on_note = on_note
        self.reference_placers = list(reference_placers)
        torch.manual_seed(config.seed)
        info: dict[str, Any] = {"backend": backend.name, "train_tasks": len(self.tasks)}
        if init is not None:
            self.model = DreamShardModel.from_state(init.state(), init_source or "initial model")
            self.model.config = asdict(config)
            self.model.info = {**info, "init": init_source, "init_info": dict(init.info)}
            self.model.costnet.train()
        else:
            normalizer = FeatureNormalizer.fit([t for task in self.tasks for t in task.tables])
            if not np.isfinite([*normalizer.mean, *normalizer.std]).all():
                raise _table_beyond_features(self.tasks)
            self.model = DreamShardModel(normalizer=normalizer, config=asdict(config), info=info)
        self.initialised = init is not None
        if config.shard_measurements and self.model.costnet.compute_context:
            # Shards have no task: the computation heads must not read one.
            self.model.costnet.drop_compute_context()
            self.model.info["compute_context_dropped"] = True
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self._make_optimizers()
        self.state = _State()
        #: Training measurements that were first-fit-decreasing packings because the
        #: policy dead-ended on their task (in total, this process).
        self.fallback_placements = 0
        self._features: dict[str, np.ndarray] = {}
        #: Reference placements of each task (computed once).
        self._references: dict[int, list[Placement]] = {}

    def _make_optimizers(self) -> None:
        """Adam for both networks, learning rates decayed linearly to 0 over the whole run
        (METHOD.md section 4)."""
        cfg = self.config
        cost_steps = cfg.iterations * cfg.cost_steps
        policy_steps = cfg.iterations * cfg.policy_batches
        self.cost_opt = torch.optim.Adam(self.model.costnet.parameters(), lr=cfg.learning_rate)
        self.policy_opt = torch.optim.Adam(self.model.policy.parameters(), lr=cfg.learning_rate)
        self.cost_sched = torch.optim.lr_scheduler.LambdaLR(
            self.cost_opt, lambda step: max(0.0, 1.0 - step / cost_steps)
        )
        self.policy_sched = torch.optim.lr_scheduler.LambdaLR(
            self.policy_opt, lambda step: max(0.0, 1.0 - step / policy_steps)
        )

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> DreamShardModel:
        """Train until ``config.iterations`` are done (resumed runs continue)."""
        with one_thread():
            return self._run()

    def _run(self) -> DreamShardModel:
        if self.state.iteration == 0 and not self.state.buffer and self.config.warmup_tasks:
            self.state.buffer.extend(self.warmup())
        while self.state.iteration < self.config.iterations:
            t0 = time.perf_counter()
            try:
                new = self.collect()
                new_mape = self.cost_mape(new) if self.state.iteration > 0 else None
                self.state.buffer.extend(new)
                new_shards = self.collect_shards()
                shard_mape = None
                if new_shards and self.state.iteration > 0:
                    shard_mape = self.shard_mape(new_shards)
                self.state.shards.extend(new_shards)
                cost_loss = self.fit_cost_model()
                predicted = self.improve_policy()
            except NonFiniteError as err:
                raise self._diverged(str(err)) from None
            bad = self.model.non_finite_weight()
            if bad is not None:
                raise self._diverged(f"weight {bad} is not finite")
            self.state.iteration += 1
            report = IterationReport(
                iteration=self.state.iteration,
                measurements=len(self.state.buffer),
                measured_mean_cost_ms=float(np.mean([m.cost.cost_ms for m in new])),
                new_cost_mape=new_mape,
                cost_loss=cost_loss,
                policy_predicted_cost_ms=predicted,
                wall_s=time.perf_counter() - t0,
                shard_measurements=len(self.state.shards),
                new_shard_mape=shard_mape,
            )
            self.state.history.append(report)
            self.model.info.update(
                {
                    "iterations_done": self.state.iteration,
                    "measurements": len(self.state.buffer),
                    "shard_measurements": len(self.state.shards),
                    "train_wall_s": sum(r.wall_s for r in self.state.history),
                }
            )
            self.save_checkpoint()
            if self.on_iteration is not None:
                self.on_iteration(report)
        return self.model

    # -- 1. collect: measure placements sampled from the current policy -------------------

    def collect(self) -> list[Measurement]:
        """Choose this iteration's mix of placements of random training tasks and
        measure them on the backend (module docstring)."""
        cfg = self.config
        counts = _split(cfg.measurements_per_iteration, cfg.mix)
        if not self.reference_placers:
            counts["perturbed"] += counts.pop("reference")
        picks: dict[int, list[Placement]] = {}
        fallbacks_before = self.fallback_placements
        searched: dict[int, Placement] = {}  # the search's output per task, this iteration
        for kind, count in counts.items():
            for _ in range(count):
                k = int(self.rng.integers(len(self.tasks)))
                task = self.tasks[k]
                if kind == "policy":
                    placement = self.sample_placement(task)
                elif kind == "reference":
                    placement = self._next_reference(k, picks) or self._search(k, searched)
                else:
                    placement = self._search(k, searched)
                    if kind == "perturbed":
                        moves = int(self.rng.integers(1, 4))
                        placement = perturb(task, placement, moves, self.rng)
                picks.setdefault(k, []).append(placement)
        if self.fallback_placements > fallbacks_before:
            log.warning(
                "iteration %d: the policy found no placement within memory for %d of %d "
                "sampled tasks; measured their first-fit-decreasing packings instead",
                self.state.iteration + 1,
                self.fallback_placements - fallbacks_before,
                counts["policy"],
            )
        out: list[Measurement] = []
        # All placements of one task are measured in one call, so hardware backends
        # interleave their repetitions.
        for k, placements in picks.items():
            costs = self.backend.measure(self.tasks[k], placements)
            out.extend(
                Measurement(self.tasks[k], p, c) for p, c in zip(placements, costs, strict=True)
            )
        return out

    def collect_shards(self) -> list[ShardMeasurement]:
        """Measure ``config.shard_measurements`` random single-device shards of random
        training tasks (module docstring), each as a one-device task of its tables."""
        out: list[ShardMeasurement] = []
        for _ in range(self.config.shard_measurements):
            task = self.tasks[int(self.rng.integers(len(self.tasks)))]
            share = task.num_tables / task.num_devices
            size = share * math.exp(self.rng.uniform(-SHARD_SIZE_SPREAD, SHARD_SIZE_SPREAD))
            size = min(task.num_tables, max(1, round(size)))
            chosen = tuple(sorted(int(i) for i in self.rng.choice(task.num_tables, size, False)))
            cost = self.backend.measure(shard_task(task, chosen), [Placement((0,) * size)])[0]
            stage = cost.per_device[0]
            out.append(ShardMeasurement(task, chosen, stage.fwd_comp_ms, stage.bwd_comp_ms))
        return out

    def warmup(self) -> list[Measurement]:
        """Dense measurements of ``config.warmup_tasks`` random training tasks, before the
        first iteration (beyond the paper; cheap on the simulator, where it is meant for
        pretraining).

        Per task: where the backend exposes its cost as a stage model (the simulator),
        the greedy on that TRUE cost and a local search from it (near-optimal
        placements, the ones a placer must rank first and that policy samples never
        reach); the current placer's output and a policy sample; the
        reference placers' placements; and perturbations of 1-16 random moves of the
        two searches' outputs (:data:`WARMUP_MOVES`). A task's placements are measured
        in one call. The iterations then fit the cost network on these and their own.
        """
        cfg = self.config
        chosen = self.rng.permutation(len(self.tasks))[: cfg.warmup_tasks]
        out: list[Measurement] = []
        t0 = time.perf_counter()
        for n, k in enumerate(sorted(int(k) for k in chosen), start=1):
            task = self.tasks[k]
            found: list[Placement] = []
            seeds: list[Placement] = []
            if isinstance(self.backend, StageModelBackend):
                model = self.backend.stage_model(task)
                start = greedy_placement(task, model)
                if start is not None:
                    best, _ = local_search(
                        task, model, start, max_passes=TRAINING_SEARCH.max_passes,
                        max_evaluations=TRAINING_SEARCH.max_evaluations,
                    )  # fmt: skip
                    found += [start, best]
                    seeds.append(best)
            searched = self._search(k, {})
            found += [searched, self.sample_placement(task)]
            seeds.append(searched)
            found += self._reference_placements(k)
            for seed in seeds:
                found += [perturb(task, seed, moves, self.rng) for moves in WARMUP_MOVES]
            placements = list(dict.fromkeys(found))
            costs = self.backend.measure(task, placements)
            out.extend(Measurement(task, p, c) for p, c in zip(placements, costs, strict=True))
            if self.on_note is not None and (n % 50 == 0 or n == len(chosen)):
                self.on_note(
                    f"warm-up: {n}/{len(chosen)} tasks, {len(out)} measurements, "
                    f"{time.perf_counter() - t0:.0f} s"
                )
        return out

    def _search(self, k: int, searched: dict[int, Placement]) -> Placement:
        """What the current placer (with search) outputs for task k (once per iteration);
        a memory packing where it finds nothing."""
        if k not in searched:
            task = self.tasks[k]
            settings = replace(TRAINING_SEARCH, seed=self.config.seed + self.state.iteration)
            with torch.no_grad():
                proposals = propose(self.model, task, settings)
            if proposals.scored:
                searched[k] = proposals.scored[0][1]
            else:
                searched[k] = self.sample_placement(task)
        return searched[k]

    def _reference_placements(self, k: int) -> list[Placement]:
        """The reference placers' distinct placements of task k (computed once)."""
        if k not in self._references:
            found: list[Placement] = []
            for placer in self.reference_placers:
                try:
                    placement = placer.place(self.tasks[k])
                except (InputError, InfeasiblePlacementError):
                    continue  # a rule that cannot place this task: nothing to learn from
                if placement not in found:
                    found.append(placement)
            self._references[k] = found
        return self._references[k]

    def _next_reference(self, k: int, picks: dict[int, list[Placement]]) -> Placement | None:
        """A reference placement of task k not measured yet (None when all were)."""
        measured = {m.placement for m in self.state.buffer if m.task is self.tasks[k]}
        measured.update(picks.get(k, []))
        return next((p for p in self._reference_placements(k) if p not in measured), None)

    def sample_placement(self, task: Task, attempts: int = 8) -> Placement:
        """One feasible placement sampled from the current policy.

        Tries ``attempts`` episodes, then four times as many up to 16 rounds' worth (fewer
        on a task whose episodes :func:`~dreamshard.method.propose.episode_cap` caps): on
        tight memory a policy mid-training can dead-end often (the first round alone keeps
        the random stream of runs that never needed more). If all dead-end, the task's
        first-fit-decreasing packing is measured instead (counted in
        ``fallback_placements`` and logged once per iteration).
        """
        tt = self.task_tensors(task)
        tried = 0
        # On thousands of tables over many devices an episode is costly: fewer tries.
        cap = episode_cap(task)
        most = min(16 * attempts, max(attempts, cap))
        batch = min(attempts, cap)
        while tried < most:
            with torch.no_grad():
                result = rollout(
                    self.model.policy, self.model.costnet, tt, batch, False, self.generator
                )
            tried += batch
            feasible = torch.nonzero(result.feasible).flatten()
            if len(feasible):
                return Placement(tuple(int(d) for d in result.device_of[int(feasible[0])]))
            batch = min(4 * batch, most - tried) or 1
        # A policy mid-training can dead-end on a task with a table that nearly fills a
        # device; measure a memory packing of it instead rather than stop training.
        fallback = first_fit_decreasing(task)
        if fallback is None:
            raise InputError(
                f"task {task.name!r}: no placement fits memory: the policy found none in "
                f"{tried} tries, nor did first-fit decreasing (is the task feasible?)"
            )
        self.fallback_placements += 1
        return fallback

    # -- 2. fit: train the cost network on all measurements so far -------------------------

    def fit_cost_model(self) -> float:
        """``cost_steps`` steps of MSE on random batches of the buffer; mean loss."""
        costnet = self.model.costnet
        if self.state.iteration == 0 and not self.initialised:
            # Costs enter the networks in units of the first measurements' mean.
            costnet.cost_scale_ms = float(np.mean([m.cost.cost_ms for m in self.state.buffer]))
        costnet.train()
        losses = []
        by_task: dict[str, list[int]] = {}
        for i, m in enumerate(self.state.buffer):
            by_task.setdefault(m.task.name, []).append(i)
        names = sorted(by_task)
        per_task = self.config.placements_per_task
        groups_per_batch = max(1, self.config.cost_batch_size // per_task)
        for _ in range(self.config.cost_steps):
            # A few placements of each of several tasks: the pairwise term compares
            # placements of one task.
            chosen = self.rng.integers(len(names), size=groups_per_batch)
            idx = [
                int(i) for g in chosen for i in self.rng.choice(by_task[names[g]], size=per_task)
            ]
            group = torch.tensor([g for g in chosen for _ in range(per_task)])
            batch, targets = self.cost_batch([self.state.buffer[i] for i in idx])
            loss = costnet.loss(
                batch,
                targets,
                group,
                self.config.pairwise_weight,
                self.config.relative_loss,
                self.config.device_error,
            )
            if self.state.shards and self.config.shard_weight > 0:
                picked = self.rng.integers(len(self.state.shards), size=self.config.cost_batch_size)
                shards, shard_targets = self.shard_batch([self.state.shards[i] for i in picked])
                loss = loss + self.config.shard_weight * costnet.compute_loss(shards, shard_targets)
            if not math.isfinite(loss.item()):
                raise self._diverged("the cost network's loss is not finite")
            self.cost_opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            self.cost_opt.step()
            self.cost_sched.step()
            losses.append(loss.item())
        costnet.eval()
        return float(np.mean(losses))

    def shard_batch(
        self, shards: Sequence[ShardMeasurement]
    ) -> tuple[PlacementBatch, torch.Tensor]:
        """Shards as one-device placements, and their [S, 2] computation in scaled units."""
        batch = PlacementBatch.build(
            [self.features(s.task)[list(s.tables)] for s in shards],
            [Placement((0,) * len(s.tables)) for s in shards],
            [1] * len(shards),
        )
        targets = torch.tensor([[s.fwd_comp_ms, s.bwd_comp_ms] for s in shards])
        return batch, targets / self.model.costnet.cost_scale_ms

    def shard_mape(self, shards: Sequence[ShardMeasurement]) -> float:
        """Mean absolute percentage error (%) of the computation heads on ``shards``,
        over forward and backward."""
        batch, targets = self.shard_batch(shards)
        with torch.no_grad():
            predicted = self.model.costnet.compute_costs(batch)
        return float(((predicted - targets).abs() / targets).mean()) * 100

    def cost_batch(self, measurements: Sequence[Measurement]) -> tuple[PlacementBatch, CostTargets]:
        batch = PlacementBatch.build(
            [self.features(m.task) for m in measurements],
            [m.placement for m in measurements],
            [m.task.num_devices for m in measurements],
        )
        targets = CostTargets.build(
            [m.cost for m in measurements], batch.max_devices, self.model.costnet.cost_scale_ms
        )
        return batch, targets

    def cost_mape(self, measurements: Sequence[Measurement]) -> float:
        """Mean absolute percentage error of the predicted overall cost, in percent
        (:meth:`DreamShardModel.cost_mape`)."""
        return self.model.cost_mape(
            [m.task for m in measurements],
            [m.placement for m in measurements],
            [m.cost.cost_ms for m in measurements],
        )

    # -- 3. improve: REINFORCE on the estimated MDP ----------------------------------------

    def improve_policy(self) -> float:
        """``policy_batches`` REINFORCE updates; mean predicted cost (ms) of the last batch."""
        policy = self.model.policy
        policy.train()
        predicted_ms = float("nan")
        for _ in range(self.config.policy_batches):
            task = self.tasks[int(self.rng.integers(len(self.tasks)))]
            result = rollout(
                policy,
                self.model.costnet,
                self.task_tensors(task),
                self.config.episodes_per_batch,
                greedy=False,
                generator=self.generator,
            )
            # Terminal reward = -predicted cost, standardised within the batch (one task).
            reward = -result.predicted_cost
            advantage = (reward - reward.mean()) / (reward.std() + 1e-8)
            loss = -(advantage.detach() * result.log_prob).mean()
            loss = loss - self.config.entropy_weight * result.entropy.mean()
            if not math.isfinite(loss.item()):
                raise self._diverged("the policy's loss is not finite")
            self.policy_opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            self.policy_opt.step()
            self.policy_sched.step()
            predicted_ms = float(result.predicted_cost.mean()) * self.model.costnet.cost_scale_ms
        policy.eval()
        return predicted_ms

    # -- helpers -------------------------------------------------------------------------

    def _diverged(self, why: str) -> InputError:
        """The error that stops a run whose numbers left the finite range (nothing of the
        iteration is saved: the last checkpoint stays the last good one)."""
        return InputError(
            f"training diverged in iteration {self.state.iteration + 1} ({why}): lower the "
            f"learning rate (now {self.config.learning_rate:g})"
        )

    def features(self, task: Task) -> np.ndarray:
        if task.name not in self._features:
            self._features[task.name] = self.model.normalizer.transform(task.tables)
        return self._features[task.name]

    def task_tensors(self, task: Task) -> TaskTensors:
        # Not cached: the table order depends on the cost network, which keeps learning.
        return task_tensors(task, self.model.normalizer, self.model.costnet)

    # -- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Model (for placing) and full training state (for resuming), as one unit.

        ``model.pt`` is written to a temporary file first; the training state, which
        holds the same model and the hash of that file, replaces ``train_state.pt``;
        only then does the temporary file replace ``model.pt``. Killed at any point, the
        folder has a whole training state, and a ``model.pt`` that is either its model
        or the previous iteration's (which :meth:`resume` detects and rewrites).
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        model_state = self.model.state()
        model_path = self.out_dir / MODEL_FILE
        model_tmp = write_temp_torch(model_state, model_path)
        try:
            state = {
                "format": TRAIN_STATE_FORMAT,
                "version": TRAIN_STATE_VERSION,
                "package_version": __version__,
                "iteration": self.state.iteration,
                "config": asdict(self.config),
                "tasks": [{"name": t.name, "fingerprint": task_fingerprint(t)} for t in self.tasks],
                "model": model_state,
                "model_sha256": _sha256(model_tmp),
                "buffer": [_measurement_record(m) for m in self.state.buffer],
                "shards": [_shard_record(s) for s in self.state.shards],
                "history": [asdict(r) for r in self.state.history],
                "cost_opt": self.cost_opt.state_dict(),
                "policy_opt": self.policy_opt.state_dict(),
                "cost_sched": self.cost_sched.state_dict(),
                "policy_sched": self.policy_sched.state_dict(),
                "numpy_rng": self.rng.bit_generator.state,
                "torch_generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
            }
            save_torch_atomic(state, self.out_dir / TRAIN_STATE_FILE)
            os.replace(model_tmp, model_path)
        except BaseException:
            model_tmp.unlink(missing_ok=True)
            raise
        self.model.save_config(self.out_dir)
        write_json(self.out_dir / HISTORY_FILE, [asdict(r) for r in self.state.history])

    def resume(self) -> bool:
        """Continue from ``out_dir``'s checkpoint if there is one; returns whether it did.

        Raises:
            CheckpointError: The folder holds a model but no training state (training
                would overwrite the model), or the training state is unreadable, not one,
                of an older or newer layout, damaged, or saved with another config
                (beyond ``iterations``) or other tasks (names or content); one line naming
                it.
        """
        path = self.out_dir / TRAIN_STATE_FILE
        if not path.is_file():
            if (self.out_dir / MODEL_FILE).is_file():
                # Training writes its state before its model, so this model came from
                # elsewhere: training from scratch would overwrite it.
                raise CheckpointError(
                    f"{self.out_dir}: holds a {MODEL_FILE} but no {TRAIN_STATE_FILE} to resume "
                    "from: train into another --out, or pass --no-resume to train over it"
                )
            return False
        state = _read_train_state(path)
        try:
            self._restore(state, path)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
            detail = f"no {err.args[0]!r}" if isinstance(err, KeyError) else _one_line(err)
            raise CheckpointError(f"{path}: damaged training state ({detail})") from None
        return True

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        """Check ``state`` against this run, then take it over (see :meth:`resume`)."""
        # Settings added since a state was saved took their defaults in that run.
        saved = {**asdict(TrainConfig()), **state["config"]}
        saved.pop("iterations")
        current = {k: v for k, v in asdict(self.config).items() if k != "iterations"}
        if saved != current:
            raise CheckpointError(
                f"{path}: saved with another training config; only --iterations may change "
                "when resuming"
            )
        saved_tasks = [(t["name"], t["fingerprint"]) for t in state["tasks"]]
        if [name for name, _ in saved_tasks] != [t.name for t in self.tasks]:
            raise CheckpointError(f"{path}: saved with other training tasks")
        for task, (_, fingerprint) in zip(self.tasks, saved_tasks, strict=True):
            if task_fingerprint(task) != fingerprint:
                raise CheckpointError(
                    f"{path}: task {task.name!r} is not the one it was trained on (its "
                    "tables, devices or optimizer changed): train into another --out, or "
                    "pass --no-resume to start over"
                )
        by_name = {t.name: t for t in self.tasks}
        model = DreamShardModel.from_state(state["model"], f"{path} (its model)")
        buffer = [_measurement_from_record(r, by_name) for r in state["buffer"]]
        # States saved before shards existed have none.
        shards = [_shard_from_record(r, by_name) for r in state.get("shards", [])]
        history = [IterationReport(**r) for r in state["history"]]
        model.config = asdict(self.config)
        model.costnet.train()
        self.model = model
        self._make_optimizers()
        self.cost_opt.load_state_dict(state["cost_opt"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.cost_sched.load_state_dict(state["cost_sched"])
        self.policy_sched.load_state_dict(state["policy_sched"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.generator.set_state(state["torch_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.state = _State(
            iteration=int(state["iteration"]), buffer=buffer, shards=shards, history=history
        )
        model_path = self.out_dir / MODEL_FILE
        if not model_path.is_file() or _sha256(model_path) != state["model_sha256"]:
            # Killed between the two writes: model.pt is the previous iteration's (or
            # gone); the state's own copy is the one that goes with it.
            save_torch_atomic(state["model"], model_path)
            model.save_config(self.out_dir)


def shard_task(task: Task, tables: Sequence[int]) -> Task:
    """The one-device task of some of ``task``'s tables (indices; a shard's measurement):
    its device holds exactly their memory, under the same optimizer."""
    chosen = [task.tables[i] for i in tables]
    memory = sum(task.table_memory_bytes(t) for t in chosen)
    return Task(
        name=f"{task.name}/shard",
        tables=tuple(chosen),
        devices=(Device("shard", memory),),
        optimizer=task.optimizer,
    )


def task_fingerprint(task: Task) -> str:
    """A stable hash of what a task's measurements depend on: its tables' records in
    order (the source file's path left out, so a moved data folder still resumes; the
    statistics taken from it are in), its devices' memory in order and its optimizer."""
    tables = [
        {k: v for k, v in table_to_record(t).items() if k not in ("source_file", "source_table")}
        for t in task.tables
    ]
    record = {
        "tables": tables,
        "device_memory_bytes": [d.memory_bytes for d in task.devices],
        "optimizer": task.optimizer,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


@contextmanager
def training_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s training lock while the block runs (created if need be).

    The lock is an ``flock`` on ``folder/.train.lock``, so the kernel releases it when
    the holder exits however it ends (a kill included). Holding it, stale temporary
    files of killed runs are removed: no one else writes the folder.

    Raises:
        InputError: Another process holds the lock (naming its pid), or the folder
            cannot be created or written.
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Append mode: opening must not erase the holder's pid before we hold the lock.
        handle = (out / LOCK_FILE).open("a+", encoding="utf-8")
    except OSError as err:
        raise InputError(f"{out}: cannot write the model folder ({err.strerror})") from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            raise InputError(f"{out} is being trained by another process (pid {pid})") from None
        except OSError as err:
            # A file system without locks (some network mounts): no way to keep a second
            # run out, so refuse rather than risk two writers.
            raise InputError(f"{out}: cannot lock the model folder ({err.strerror})") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        remove_stale_temp_files(out, (MODEL_FILE, TRAIN_STATE_FILE, CONFIG_FILE, HISTORY_FILE))
        yield


def _read_train_state(path: Path) -> dict[str, Any]:
    """``path``'s training state, checked to be one of this layout."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        # Unpickling a file that is not ours can fail in any way (a module that cannot
        # be imported, a class that changed, ...): each means the file cannot be read.
        raise CheckpointError(f"{path}: cannot read training state ({_one_line(err)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a DreamShard training state")
    fmt = state.get("format")
    if fmt is None and "task_names" in state and "iteration" in state:
        # Written before states had a format: no task fingerprints to check the tasks
        # against and no model of their own, so resuming could silently go wrong.
        raise CheckpointError(
            f"{path}: written by an older dreamshard, whose training state cannot be checked "
            "against the tasks: train into another --out, or pass --no-resume to start over"
        )
    if fmt != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path}: not a DreamShard training state")
    version = state.get("version")
    if version != TRAIN_STATE_VERSION:
        raise CheckpointError(
            f"{path}: training state version {version!r} (written by dreamshard "
            f"{state.get('package_version', '?')}); this dreamshard {__version__} resumes "
            f"version {TRAIN_STATE_VERSION}: train into another --out, or pass --no-resume"
        )
    return state


def _table_beyond_features(tasks: Sequence[Task]) -> InputError:
    """The error naming the table that broke the feature statistics: the one with the
    largest (or a non-finite) transformed feature, whose square overflowed the spread."""
    pairs = [(task, table) for task in tasks for table in task.tables]
    logged = np.abs(log_transform(network_features([table for _, table in pairs])))
    task, table = pairs[int(np.argmax(np.nan_to_num(logged, nan=np.inf).max(axis=1)))]
    return InputError(
        f"task {task.name!r}: table {table.name!r}: its features are too large to compute "
        "with (its size or pooling factor)"
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (torch's often span several)."""
    return " ".join(str(err).split())


def _measurement_record(m: Measurement) -> dict[str, Any]:
    return {
        "task": m.task.name,
        "device_of": list(m.placement.device_of),
        "backend": m.cost.backend,
        "per_device": [asdict(s) for s in m.cost.per_device],
        "rel_spread": m.cost.rel_spread,
    }


def _measurement_from_record(record: dict[str, Any], tasks: dict[str, Task]) -> Measurement:
    return Measurement(
        task=tasks[record["task"]],
        placement=Placement(tuple(record["device_of"])),
        cost=PlacementCost(
            per_device=tuple(StageCosts(**s) for s in record["per_device"]),
            backend=record["backend"],
            rel_spread=record["rel_spread"],
        ),
    )


def _shard_record(s: ShardMeasurement) -> dict[str, Any]:
    return {
        "task": s.task.name,
        "tables": list(s.tables),
        "fwd_comp_ms": s.fwd_comp_ms,
        "bwd_comp_ms": s.bwd_comp_ms,
    }


def _shard_from_record(record: dict[str, Any], tasks: dict[str, Task]) -> ShardMeasurement:
    return ShardMeasurement(
        task=tasks[record["task"]],
        tables=tuple(record["tables"]),
        fwd_comp_ms=record["fwd_comp_ms"],
        bwd_comp_ms=record["bwd_comp_ms"],
    )


def _split(total: int, shares: dict[str, float]) -> dict[str, int]:
    """``total`` split by ``shares`` (largest remainder; ties in the given order)."""
    weight = sum(shares.values())
    exact = {k: total * v / weight for k, v in shares.items()}
    counts = {k: math.floor(x) for k, x in exact.items()}
    left = total - sum(counts.values())
    for k in sorted(exact, key=lambda k: -(exact[k] - counts[k]))[:left]:
        counts[k] += 1
    return counts
