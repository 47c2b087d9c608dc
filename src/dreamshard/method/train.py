"""DreamShard's training loop (METHOD.md section 4), top to bottom.

Each iteration:

1. collect  - sample placements of random training tasks with the current policy and
              measure them on the cost backend (the only hardware use);
2. fit      - train the cost network on every measurement so far;
3. improve  - train the policy with REINFORCE on the estimated MDP (no hardware).

After every iteration the model and the full training state are checkpointed, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamshard.data.features import FeatureNormalizer
from dreamshard.errors import InputError
from dreamshard.fileio import write_json
from dreamshard.method.checkpoint import CheckpointError, DreamShardModel
from dreamshard.method.costnet import CostTargets, PlacementBatch
from dreamshard.method.mdp import TaskTensors, rollout, task_tensors
from dreamshard.runtime import one_thread
from dreamshard.types import CostBackend, Placement, PlacementCost, StageCosts, Task

TRAIN_STATE_FILE = "train_state.pt"


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

    def __post_init__(self) -> None:
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
    """

    iteration: int
    measurements: int
    measured_mean_cost_ms: float
    new_cost_mape: float | None
    cost_loss: float
    policy_predicted_cost_ms: float
    wall_s: float


@dataclass
class _State:
    """Everything that changes during training (checkpointed after each iteration)."""

    iteration: int = 0
    buffer: list[Measurement] = field(default_factory=list)
    history: list[IterationReport] = field(default_factory=list)


class Trainer:
    """Trains a DreamShard model on training tasks with one cost backend."""

    def __init__(
        self,
        config: TrainConfig,
        tasks: Sequence[Task],
        backend: CostBackend,
        out_dir: str | Path,
        on_iteration: Callable[[IterationReport], None] | None = None,
    ) -> None:
        if not tasks:
            raise InputError("training needs at least one training task")
        self.config = config
        self.tasks = list(tasks)
        self.backend = backend
        self.out_dir = Path(out_dir)
        self.on_iteration = on_iteration
        torch.manual_seed(config.seed)
        self.model = DreamShardModel(
            normalizer=FeatureNormalizer.fit([t for task in self.tasks for t in task.tables]),
            config=asdict(config),
            info={"backend": backend.name, "train_tasks": len(self.tasks)},
        )
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self._make_optimizers()
        self.state = _State()
        self._features: dict[str, np.ndarray] = {}

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
        while self.state.iteration < self.config.iterations:
            t0 = time.perf_counter()
            new = self.collect()
            new_mape = self.cost_mape(new) if self.state.iteration > 0 else None
            self.state.buffer.extend(new)
            cost_loss = self.fit_cost_model()
            predicted = self.improve_policy()
            self.state.iteration += 1
            report = IterationReport(
                iteration=self.state.iteration,
                measurements=len(self.state.buffer),
                measured_mean_cost_ms=float(np.mean([m.cost.cost_ms for m in new])),
                new_cost_mape=new_mape,
                cost_loss=cost_loss,
                policy_predicted_cost_ms=predicted,
                wall_s=time.perf_counter() - t0,
            )
            self.state.history.append(report)
            self.model.info.update(
                {
                    "iterations_done": self.state.iteration,
                    "measurements": len(self.state.buffer),
                    "train_wall_s": sum(r.wall_s for r in self.state.history),
                }
            )
            self.save_checkpoint()
            if self.on_iteration is not None:
                self.on_iteration(report)
        return self.model

    # -- 1. collect: measure placements sampled from the current policy -------------------

    def collect(self) -> list[Measurement]:
        """Sample placements of random training tasks and measure them on the backend."""
        picks: dict[int, list[Placement]] = {}
        for _ in range(self.config.measurements_per_iteration):
            k = int(self.rng.integers(len(self.tasks)))
            picks.setdefault(k, []).append(self.sample_placement(self.tasks[k]))
        out: list[Measurement] = []
        # All placements of one task are measured in one call, so hardware backends
        # interleave their repetitions.
        for k, placements in picks.items():
            costs = self.backend.measure(self.tasks[k], placements)
            out.extend(
                Measurement(self.tasks[k], p, c) for p, c in zip(placements, costs, strict=True)
            )
        return out

    def sample_placement(self, task: Task, attempts: int = 8) -> Placement:
        """One feasible placement sampled from the current policy.

        Tries ``attempts`` episodes, then four times as many up to 16 rounds' worth: on
        tight memory a policy mid-training can dead-end often (the first round alone keeps
        the random stream of runs that never needed more).
        """
        tt = self.task_tensors(task)
        tried = 0
        batch = attempts
        while tried < 16 * attempts:
            with torch.no_grad():
                result = rollout(
                    self.model.policy, self.model.costnet, tt, batch, False, self.generator
                )
            tried += batch
            feasible = torch.nonzero(result.feasible).flatten()
            if len(feasible):
                return Placement(tuple(int(d) for d in result.device_of[int(feasible[0])]))
            batch = min(4 * batch, 16 * attempts - tried) or 1
        raise InputError(
            f"task {task.name!r}: the policy found no placement that fits memory in "
            f"{tried} tries (is the task feasible?)"
        )

    # -- 2. fit: train the cost network on all measurements so far -------------------------

    def fit_cost_model(self) -> float:
        """``cost_steps`` steps of MSE on random batches of the buffer; mean loss."""
        costnet = self.model.costnet
        if self.state.iteration == 0:
            # Costs enter the networks in units of the first measurements' mean.
            costnet.cost_scale_ms = float(np.mean([m.cost.cost_ms for m in self.state.buffer]))
        costnet.train()
        losses = []
        for _ in range(self.config.cost_steps):
            idx = self.rng.integers(len(self.state.buffer), size=self.config.cost_batch_size)
            batch, targets = self.cost_batch([self.state.buffer[i] for i in idx])
            loss = costnet.loss(batch, targets)
            self.cost_opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            self.cost_opt.step()
            self.cost_sched.step()
            losses.append(loss.item())
        costnet.eval()
        return float(np.mean(losses))

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
            self.policy_opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            self.policy_opt.step()
            self.policy_sched.step()
            predicted_ms = float(result.predicted_cost.mean()) * self.model.costnet.cost_scale_ms
        policy.eval()
        return predicted_ms

    # -- helpers -------------------------------------------------------------------------

    def features(self, task: Task) -> np.ndarray:
        if task.name not in self._features:
            self._features[task.name] = self.model.normalizer.transform(task.tables)
        return self._features[task.name]

    def task_tensors(self, task: Task) -> TaskTensors:
        # Not cached: the table order depends on the cost network, which keeps learning.
        return task_tensors(task, self.model.normalizer, self.model.costnet)

    # -- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Model (for placing) and full training state (for resuming), atomically."""
        self.model.save(self.out_dir)
        state = {
            "iteration": self.state.iteration,
            "config": asdict(self.config),
            "task_names": [t.name for t in self.tasks],
            "buffer": [_measurement_record(m) for m in self.state.buffer],
            "history": [asdict(r) for r in self.state.history],
            "cost_opt": self.cost_opt.state_dict(),
            "policy_opt": self.policy_opt.state_dict(),
            "cost_sched": self.cost_sched.state_dict(),
            "policy_sched": self.policy_sched.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        tmp = self.out_dir / f".{TRAIN_STATE_FILE}.tmp"
        torch.save(state, tmp)
        tmp.replace(self.out_dir / TRAIN_STATE_FILE)
        write_json(self.out_dir / "history.json", [asdict(r) for r in self.state.history])

    def resume(self) -> bool:
        """Continue from ``out_dir``'s checkpoint if there is one; returns whether it did."""
        path = self.out_dir / TRAIN_STATE_FILE
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
            raise CheckpointError(f"{path}: cannot read training state ({err})") from None
        saved = {k: v for k, v in state["config"].items() if k != "iterations"}
        current = {k: v for k, v in asdict(self.config).items() if k != "iterations"}
        if saved != current:
            raise CheckpointError(
                f"{path}: saved with another training config; only --iterations may change "
                "when resuming"
            )
        by_name = {t.name: t for t in self.tasks}
        if state["task_names"] != [t.name for t in self.tasks]:
            raise CheckpointError(f"{path}: saved with other training tasks")
        self.model = DreamShardModel.load(self.out_dir)
        self.model.config = asdict(self.config)
        self.model.costnet.train()
        self._make_optimizers()
        self.cost_opt.load_state_dict(state["cost_opt"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.cost_sched.load_state_dict(state["cost_sched"])
        self.policy_sched.load_state_dict(state["policy_sched"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.generator.set_state(state["torch_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.state = _State(
            iteration=state["iteration"],
            buffer=[_measurement_from_record(r, by_name) for r in state["buffer"]],
            history=[IterationReport(**r) for r in state["history"]],
        )
        return True


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
