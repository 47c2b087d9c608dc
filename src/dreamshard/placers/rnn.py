"""The RNN baseline (Mirhoseini et al., ICML 2017; METHOD.md section 6).

"Device Placement Optimization with Reinforcement Learning" places the operations of a
graph with a sequence-to-sequence model: an LSTM encoder reads the operations in a
fixed order, an attentional LSTM decoder emits one device per operation, and the model
is trained with REINFORCE on measured run times of the placements it samples. It learns
one task at a time and does not generalise: every new task costs a fresh training run
on the hardware.

Here the operations are embedding tables (largest memory first, so the memory mask
rarely dead-ends), the run time is the cost backend's measured placement cost, and:

- devices without room for the table, or that the user's constraints forbid (pins,
  together and apart groups; :class:`dreamshard.data.constraints.ConstraintTracker`,
  which reserves a together group's memory when its first table is placed), are masked
  (the one masked-sampling helper, :func:`dreamshard.method.policy.choose`); a sample
  that runs out of legal devices is finished ignoring the mask, never measured, and
  penalised;
- the REINFORCE baseline is a moving average of the measured costs, advantages are
  relative to it (scale-free), plus an entropy bonus;
- the budget counts backend measurements; the best measured placement is returned.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dreamshard.constants import DEFAULT_SEED
from dreamshard.data.constraints import (
    ConstrainedInfeasibleError,
    Constraints,
    ConstraintSpec,
    ConstraintTracker,
    constraints_for,
)
from dreamshard.data.features import log_transform, network_features
from dreamshard.errors import InfeasiblePlacementError, InputError
from dreamshard.method.policy import choose
from dreamshard.runtime import one_thread
from dreamshard.types import CostBackend, Placement, Task

#: Backend measurements per task by default (a few seconds per task on ``sim``).
DEFAULT_RNN_BUDGET = 500


@dataclass(frozen=True)
class RnnConfig:
    """Settings of the per-task REINFORCE search.

    Attributes:
        budget: Backend measurements per task (placements measured).
        samples_per_update: Placements sampled (and measured together) per update.
        hidden: LSTM hidden size.
        learning_rate: Adam learning rate.
        baseline_decay: Weight of the old value in the moving-average baseline.
        entropy_weight: Weight of the entropy bonus.
        infeasible_penalty: A sample that runs out of memory counts as this many times
            the worst cost measured so far.
    """

    budget: int = DEFAULT_RNN_BUDGET
    samples_per_update: int = 10
    hidden: int = 64
    learning_rate: float = 0.01
    baseline_decay: float = 0.9
    entropy_weight: float = 0.01
    infeasible_penalty: float = 2.0

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise InputError(f"rnn: budget must be at least 1 measurement, got {self.budget}")
        if self.samples_per_update < 2:
            raise InputError("rnn: samples_per_update must be at least 2")
        if self.hidden < 1 or not self.learning_rate > 0:
            raise InputError("rnn: hidden must be >= 1 and learning_rate > 0")
        if not 0 <= self.baseline_decay < 1:
            raise InputError("rnn: baseline_decay must be in [0, 1)")


class Seq2SeqPolicy(nn.Module):
    """LSTM encoder over the tables, attentional LSTM decoder over devices.

    Args:
        num_features: Width of a table's feature vector.
        num_devices: Devices of the task (the output layer is task-specific).
        hidden: Hidden size of both LSTMs.
    """

    def __init__(self, num_features: int, num_devices: int, hidden: int) -> None:
        super().__init__()
        self.num_devices = num_devices
        self.embed = nn.Linear(num_features, hidden)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        # Index num_devices is the start token (no previous choice).
        self.device_embed = nn.Embedding(num_devices + 1, hidden)
        self.decoder = nn.LSTMCell(2 * hidden, hidden)
        self.out = nn.Linear(2 * hidden, num_devices)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """[T, F] features in placement order -> [T, H] encoder outputs."""
        encoded, _ = self.encoder(torch.tanh(self.embed(features)).unsqueeze(0))
        return encoded.squeeze(0)  # type: ignore[no-any-return]

    def step(
        self,
        encoded: torch.Tensor,
        t: int,
        previous: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits [B, D] for the table at position ``t`` of the order.

        Args:
            encoded: [T, H] encoder outputs.
            t: Position in the order.
            previous: [B] previous device (``num_devices`` before the first step).
            state: Decoder (h, c), each [B, H].
        """
        batch = previous.shape[0]
        inputs = torch.cat([encoded[t].expand(batch, -1), self.device_embed(previous)], dim=-1)
        h, c = self.decoder(inputs, state)
        # Dot-product attention over all tables' encodings.
        weights = torch.softmax(h @ encoded.T, dim=-1)  # [B, T]
        context = weights @ encoded  # [B, H]
        return self.out(torch.cat([h, context], dim=-1)), (h, c)


@dataclass(frozen=True)
class _Samples:
    device_of: np.ndarray  # [B, T] int, device of each table (task order)
    log_prob: torch.Tensor  # [B]
    entropy: torch.Tensor  # [B] mean over steps
    feasible: np.ndarray  # [B] bool
    stuck_table: np.ndarray  # [B] first table with no room, -1 where feasible


def task_features(task: Task) -> np.ndarray:
    """Per-task standardised, log-transformed network features ``[T, F]`` plus each
    table's share of the mean device memory (the model is per task, so per-task
    statistics are what it needs)."""
    logged = log_transform(network_features(task.tables))
    std = logged.std(axis=0)
    scaled = (logged - logged.mean(axis=0)) / np.where(std > 1e-9, std, 1.0)
    memory = np.array([task.table_memory_bytes(t) for t in task.tables], dtype=np.float64)
    share = memory / np.mean([d.memory_bytes for d in task.devices])
    return np.column_stack([scaled, share]).astype(np.float32)


class RnnPlacer:
    """Per-task REINFORCE search with a sequence-to-sequence policy, on backend costs.

    Args:
        backend: Where the costs come from (every sample is measured on it).
        config: Search settings.
        seed: Seed of the initial weights and the sampling (combined with the task name,
            so a task gets the same placement whatever was placed before it).
        constraints: User constraints, resolved against each task placed; samples only
            take devices they allow.
    """

    name = "rnn"

    def __init__(
        self,
        backend: CostBackend,
        config: RnnConfig | None = None,
        seed: int = DEFAULT_SEED,
        constraints: ConstraintSpec | None = None,
    ) -> None:
        self.backend = backend
        self.config = config or RnnConfig()
        self.seed = seed
        self.constraints = constraints
        #: Measurements spent on the last task placed, and on all tasks so far.
        self.last_measurements = 0
        self.total_measurements = 0

    def place(self, task: Task) -> Placement:
        with one_thread():
            return self._place(task)

    def _place(self, task: Task) -> Placement:
        cfg = self.config
        constraints = constraints_for(self.constraints, task)
        task_seed = [self.seed, zlib.crc32(task.name.encode())]
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence(task_seed).generate_state(1)[0])
        )
        memory = np.array([task.table_memory_bytes(t) for t in task.tables], dtype=np.int64)
        # Largest first, stable: equal sizes keep table order.
        order = sorted(range(task.num_tables), key=lambda i: -int(memory[i]))
        features = torch.from_numpy(task_features(task)[order])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(generator.initial_seed()))
            policy = Seq2SeqPolicy(features.shape[1], task.num_devices, cfg.hidden)
        optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)

        best: tuple[float, tuple[int, ...]] | None = None
        baseline: float | None = None
        worst = 0.0
        measured = 0
        stuck_counts = np.zeros(task.num_tables, dtype=np.int64)
        # Samples that run out of room are not measured; cap them so a (nearly)
        # infeasible task still ends.
        max_samples = 4 * cfg.budget
        drawn = 0
        while measured < cfg.budget and drawn < max_samples:
            batch = min(cfg.samples_per_update, max(2, cfg.budget - measured))
            samples = self._sample(policy, features, order, task, constraints, batch, generator)
            drawn += batch
            ok = np.flatnonzero(samples.feasible)
            for i in samples.stuck_table[~samples.feasible]:
                stuck_counts[i] += 1
            ok = ok[: cfg.budget - measured]
            if len(ok) == 0:
                continue
            placements = [Placement(tuple(int(d) for d in samples.device_of[k])) for k in ok]
            costs = [c.cost_ms for c in self.backend.measure(task, placements)]
            measured += len(ok)
            for cost, placement in zip(costs, placements, strict=True):
                if best is None or cost < best[0]:
                    best = (cost, placement.device_of)
            worst = max(worst, *costs)
            reward_cost = np.full(batch, cfg.infeasible_penalty * worst)
            reward_cost[ok] = costs
            use = np.ones(batch, dtype=bool)
            use[np.flatnonzero(samples.feasible)[len(ok) :]] = False  # over budget: unused
            mean_cost = float(np.mean(costs))
            baseline = mean_cost if baseline is None else baseline
            # REINFORCE with a moving-average baseline; advantage relative to it.
            advantage = torch.from_numpy((baseline - reward_cost[use]) / baseline).float()
            loss = -(advantage * samples.log_prob[torch.from_numpy(use)]).mean()
            loss = loss - cfg.entropy_weight * samples.entropy.mean()
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            baseline = cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * mean_cost
        self.last_measurements = measured
        self.total_measurements += measured
        if best is None:
            stuck = int(np.argmax(stuck_counts))
            if constraints.is_empty:
                raise InfeasiblePlacementError(
                    task.tables[stuck].name,
                    int(memory[stuck]),
                    [d.memory_bytes for d in task.devices],
                )
            name = task.tables[stuck].name
            raise ConstrainedInfeasibleError(
                name,
                constraints.reserved_bytes(task, stuck),
                [d.memory_bytes for d in task.devices],
                f"table {name!r} cannot be placed: in {drawn} sampled placements it found no "
                f"device that its constraints allow with room for it",
            )
        return Placement(best[1])

    def _sample(
        self,
        policy: Seq2SeqPolicy,
        features: torch.Tensor,
        order: list[int],
        task: Task,
        constraints: Constraints,
        batch: int,
        generator: torch.Generator,
    ) -> _Samples:
        """``batch`` placements sampled from the policy, with the memory and constraint mask."""
        num_devices = task.num_devices
        tracker = ConstraintTracker(task, constraints, batch)
        feasible = torch.ones(batch, dtype=torch.bool)
        stuck_table = torch.full((batch,), -1, dtype=torch.int64)
        encoded = policy.encode(features)
        hidden = encoded.shape[1]
        state = (encoded.new_zeros(batch, hidden), encoded.new_zeros(batch, hidden))
        previous = torch.full((batch,), num_devices, dtype=torch.int64)
        log_prob = encoded.new_zeros(batch)
        entropy = encoded.new_zeros(batch)
        for t, table in enumerate(order):
            legal = torch.from_numpy(tracker.legal(table))
            stuck = ~legal.any(dim=1)
            if bool(stuck.any()):
                stuck_table[stuck & feasible] = table
                feasible &= ~stuck
                legal = legal | stuck.unsqueeze(1)  # finish ignoring memory; never measured
            logits, state = policy.step(encoded, t, previous, state)
            choice = choose(logits, legal, greedy=False, generator=generator)
            tracker.place(table, choice.actions.numpy())
            log_prob = log_prob + choice.log_prob
            entropy = entropy + choice.entropy
            previous = choice.actions
        return _Samples(
            device_of=tracker.device_of,
            log_prob=log_prob,
            entropy=entropy / max(1, len(order)),
            feasible=feasible.numpy(),
            stuck_table=stuck_table.numpy(),
        )
