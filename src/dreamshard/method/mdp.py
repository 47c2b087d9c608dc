"""The estimated MDP (METHOD.md section 4): placing tables one by one, costs from the
cost network, no hardware.

An episode for one task visits the tables in order of their predicted single-table cost,
largest first; each step puts the next table on a device with room; the reward is 0
until the last step and then minus the cost network's predicted placement cost.

:func:`rollout` runs a batch of episodes of one task in parallel (training and
inference); :class:`EstimatedMDP` exposes the same transitions one step at a time with a
Gymnasium interface, for checking and reuse. Both share :class:`EpisodeBatch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from dreamshard.data.constraints import NO_CONSTRAINTS, Constraints, ConstraintTracker
from dreamshard.data.features import FeatureNormalizer
from dreamshard.errors import InputError
from dreamshard.method.costnet import CostNet
from dreamshard.method.policy import GREEDY_TIE_TOLERANCE, NonFiniteError, PolicyNet, choose
from dreamshard.runtime import add_into, relu_
from dreamshard.types import Task

#: An episode that runs out of room (no device can take the next table) is finished
#: ignoring memory and its predicted cost is scaled by (1 + this), so the policy learns
#: to avoid dead ends; inference never returns such a placement.
INFEASIBLE_PENALTY = 1.0

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class TaskTensors:
    """What the MDP needs of one task, computed once.

    Attributes:
        task: The task.
        features: [T, F] normalised table features.
        order: Table indices by predicted single-table cost, largest first.
        constraints: User constraints the episodes honour (legal devices).
    """

    task: Task
    features: torch.Tensor
    order: tuple[int, ...]
    constraints: Constraints = NO_CONSTRAINTS


def task_tensors(
    task: Task,
    normalizer: FeatureNormalizer,
    costnet: CostNet,
    constraints: Constraints = NO_CONSTRAINTS,
) -> TaskTensors:
    """Tensors of a task and its table order (METHOD.md section 4).

    Memory is counted by the episodes' :class:`~dreamshard.data.constraints.ConstraintTracker`
    (which also clamps device memory to what the tables need, so counts stay in int64).

    Raises:
        InputError: The task's tables together need more bytes than int64 can count, or
            a table's normalised features are not finite.
    """
    total = sum(task.table_memory_bytes(t) for t in task.tables)
    if total > _INT64_MAX:
        raise InputError(
            f"task {task.name!r}: its tables need {total:,} bytes in all, more than {_INT64_MAX:,}"
        )
    normalised = normalizer.transform(task.tables)
    finite = np.isfinite(normalised).all(axis=1)
    if not finite.all():
        # Inf or NaN would reach the policy's scores and make every choice meaningless.
        name = task.tables[int(np.argmin(finite))].name
        raise InputError(
            f"task {task.name!r}: table {name!r}: its features are not finite (a size or "
            "pooling factor too large to compute with)"
        )
    features = torch.from_numpy(normalised)
    with torch.no_grad():
        encodings = costnet.encoder(features)
        context = costnet.context(encodings.sum(dim=0), task.num_devices)
        alone = costnet.heads(encodings, context).sum(dim=-1)  # [T] table alone
    # Stable sort on the negated cost: ties keep table order, so episodes are reproducible.
    order = sorted(range(task.num_tables), key=lambda i: -float(alone[i]))
    return TaskTensors(
        task=task,
        features=features,
        order=tuple(order),
        constraints=constraints,
    )


class EpisodeBatch:
    """B parallel episodes of one task: the MDP's state and transitions."""

    def __init__(self, tt: TaskTensors, costnet: CostNet, num_episodes: int) -> None:
        self.tt = tt
        self.costnet = costnet
        with torch.no_grad():
            self.table_enc = costnet.encoder(tt.features)  # [T, E]
            self.context = costnet.context(self.table_enc.sum(dim=0), tt.task.num_devices)
        num_devices = tt.task.num_devices
        self.device_sums = torch.zeros(num_episodes, num_devices, self.table_enc.shape[1])
        self.table_counts = torch.zeros(num_episodes, num_devices, dtype=torch.int64)
        self.device_of = torch.full((num_episodes, tt.task.num_tables), -1, dtype=torch.int64)
        self.infeasible = torch.zeros(num_episodes, dtype=torch.bool)
        #: First table that found no room, per episode (-1: none).
        self.stuck_table = torch.full((num_episodes,), -1, dtype=torch.int64)
        self.step_index = 0
        self.tracker = ConstraintTracker(tt.task, tt.constraints, num_episodes)

    @property
    def done(self) -> bool:
        return self.step_index >= len(self.tt.order)

    @property
    def table(self) -> int:
        """Index of the table placed at this step."""
        return self.tt.order[self.step_index]

    def legal(self) -> torch.Tensor:
        """[B, D] devices with room for the current table that its constraints allow."""
        return torch.from_numpy(self.tracker.legal(self.table))

    def occupied(self) -> torch.Tensor:
        """[B, D] devices holding at least one table."""
        return self.table_counts > 0

    def cost_features(self) -> torch.Tensor:
        """[B, D, 9] predicted costs now, if the table joined, and the largest now."""
        with torch.no_grad():
            # Costs now and if the table joined, in one pass: [2, B, D, 3].
            now, joined = self.costnet.heads(
                torch.stack([self.device_sums, self.device_sums + self.table_enc[self.table]]),
                self.context,
            )
            # A device without tables computes nothing yet: zero its fwd/bwd.
            now[..., :2] *= self.occupied().unsqueeze(-1)
            largest = now.max(dim=1, keepdim=True).values.expand_as(now)
            return torch.cat([now, joined, largest], dim=-1)

    def place(self, actions: torch.Tensor) -> None:
        """Put the current table on ``actions[b]`` in every episode b."""
        i = self.table
        rows = torch.arange(actions.shape[0])
        self.device_sums[rows, actions] += self.table_enc[i]
        self.table_counts[rows, actions] += 1
        self.device_of[:, i] = actions
        self.tracker.place(i, actions.numpy())
        self.step_index += 1

    def predicted_cost(self) -> torch.Tensor:
        """[B] the cost network's placement cost, in scaled units (penalised if infeasible)."""
        with torch.no_grad():
            real = torch.ones(self.table_counts.shape, dtype=torch.bool)
            _, cost = self.costnet.predict(self.device_sums, real, self.occupied())
        return cost * (1.0 + INFEASIBLE_PENALTY * self.infeasible.float())


@dataclass
class Rollout:
    """Finished episodes.

    Attributes:
        device_of: [B, T] device of each table.
        log_prob: [B] sum over steps of the action log-probabilities (with gradient).
        entropy: [B] mean over steps of the policy's entropy (with gradient).
        predicted_cost: [B] cost network's placement cost (scaled units, penalised).
        feasible: [B] whether every table found room.
        stuck_table: [B] first table that found no room (-1 where feasible).
    """

    device_of: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor
    predicted_cost: torch.Tensor
    feasible: torch.Tensor
    stuck_table: torch.Tensor


def rollout(
    policy: PolicyNet,
    costnet: CostNet,
    tt: TaskTensors,
    num_episodes: int,
    greedy: bool,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Run ``num_episodes`` episodes of one task through the estimated MDP.

    Gradients flow into the policy (call under ``torch.no_grad()`` for inference); the
    cost network is only read.
    """
    batch = EpisodeBatch(tt, costnet, num_episodes)
    policy_enc = policy.encoder(tt.features)  # [T, E]
    policy_sums = policy_enc.new_zeros(num_episodes, tt.task.num_devices, policy_enc.shape[1])
    log_prob = policy_enc.new_zeros(num_episodes)
    entropy = policy_enc.new_zeros(num_episodes)
    while not batch.done:
        legal = batch.legal()
        stuck = ~legal.any(dim=1)
        if stuck.any():
            batch.stuck_table[stuck & ~batch.infeasible] = batch.table
            batch.infeasible |= stuck
            legal = legal | stuck.unsqueeze(1)  # finish the episode ignoring memory
        i = batch.table
        logits = policy.logits(policy_sums, batch.cost_features(), policy_enc[i])
        choice = choose(logits, legal, greedy, generator)
        onehot = torch.nn.functional.one_hot(choice.actions, tt.task.num_devices).to(policy_enc)
        policy_sums = policy_sums + onehot.unsqueeze(-1) * policy_enc[i]
        log_prob = log_prob + choice.log_prob
        entropy = entropy + choice.entropy
        batch.place(choice.actions)
    return Rollout(
        device_of=batch.device_of,
        log_prob=log_prob,
        entropy=entropy / max(1, len(tt.order)),
        predicted_cost=batch.predicted_cost(),
        feasible=~batch.infeasible,
        stuck_table=batch.stuck_table,
    )


def _linears(net: torch.nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight.T, bias) of each Linear of ``net`` in order, as float64 arrays."""
    return [
        (m.weight.detach().float().numpy().T.copy(), m.bias.detach().float().numpy())
        for m in net.modules()
        if isinstance(m, torch.nn.Linear)
    ]


def greedy_rollout(policy: PolicyNet, costnet: CostNet, tt: TaskTensors) -> Rollout:
    """The greedy episode of :func:`rollout` (``num_episodes=1, greedy=True``), computed
    in float32 numpy: inference places one table per step, where torch's per-call
    overhead is most of the time (0.2 vs 0.9 s on 1,000 tables x 128 devices).

    The same function of the same weights; only rounding differs (the cost heads' first
    layer is summed per device here, applied to the summed encodings there), which can
    decide between devices whose logits differ by less than the greedy tie tolerance's
    order only. ``log_prob`` and ``entropy`` are not computed (zeros): use
    :func:`rollout` to train.
    """
    task = tt.task
    num_devices = task.num_devices
    with torch.no_grad():
        table_enc = costnet.encoder(tt.features).numpy()  # [T, E]
        policy_enc = policy.encoder(tt.features).numpy()  # [T, E]
        w1, b1, w2, b2 = (t.float().numpy() for t in costnet.fused_heads())
    embed = table_enc.shape[1]
    if costnet.task_context:
        n = float(num_devices)
        context = np.concatenate([table_enc.sum(axis=0) / n, [np.log(n)]]).astype(np.float32)
        b1 = b1 + w1[:, embed:] @ context
        w1 = w1[:, :embed]
    (c1w, c1b), (c2w, c2b) = _linears(policy.cost_encoder)
    (h1w, h1b), (h2w, h2b) = _linears(policy.head)
    # The head's first layer on [policy sums | cost encoding | table], split by part.
    h_sums, h_cost, h_table = h1w[:embed], h1w[embed : 2 * embed], h1w[2 * embed :]
    # The cost heads' first layer is linear: a device's pre-activation is the sum of its
    # tables' (``table_pre``), so a step adds vectors instead of multiplying matrices;
    # the second layer is one product with the block-diagonal [3H, 3] matrix.
    table_pre = table_enc @ w1.T  # [T, 3H]
    heads_n, hidden_n = w2.shape
    second = np.zeros((heads_n * hidden_n, heads_n), dtype=np.float32)
    for k in range(heads_n):
        second[k * hidden_n : (k + 1) * hidden_n, k] = w2[k]

    def heads(pre: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.maximum(pre + b1, 0.0) @ second + b2
        return out

    sums = np.zeros((num_devices, embed), dtype=np.float32)
    pre_sums = np.zeros((num_devices, table_pre.shape[1]), dtype=np.float32)
    counts = np.zeros(num_devices, dtype=np.int64)
    policy_part = np.zeros((num_devices, h_sums.shape[1]), dtype=np.float32)
    now = heads(pre_sums)
    now[:, :2] = 0.0  # empty devices compute nothing
    device_of = np.full(task.num_tables, -1, dtype=np.int64)
    tracker = ConstraintTracker(task, tt.constraints)
    stuck = -1
    # Every step's arrays in kept buffers (fresh [D, 3H] arrays per step cost more in
    # page faults than the arithmetic), the elementwise steps by ``add_into`` and
    # ``relu_`` (torch's kernels on large arrays, 2-6x faster than numpy's; each
    # element is rounded exactly either way) and the products by numpy: the same
    # operations in the same order as ``heads`` and the policy's layers, so the same
    # floats.
    f32 = np.float32
    hidden = np.empty_like(pre_sums)
    features = np.empty((num_devices, 3 * heads_n), dtype=f32)  # [now | joined | largest]
    joined = np.empty((num_devices, heads_n), dtype=f32)
    cost_hidden = np.empty((num_devices, c1w.shape[1]), dtype=f32)
    cost = np.empty((num_devices, c2w.shape[1]), dtype=f32)
    pre = np.empty((num_devices, h_cost.shape[1]), dtype=f32)
    logits2 = np.empty((num_devices, h2w.shape[1]), dtype=f32)
    for i in tt.order:
        legal = tracker.legal(i)[0]
        everywhere = bool(legal.all())
        if not everywhere and not legal.any():
            stuck = i if stuck < 0 else stuck
            legal = np.ones(num_devices, dtype=np.bool_)
            everywhere = True
        relu_(add_into(hidden, add_into(hidden, pre_sums, table_pre[i]), b1))
        np.matmul(hidden, second, out=joined)
        joined += b2
        features[:, :heads_n] = now
        features[:, heads_n : 2 * heads_n] = joined
        features[:, 2 * heads_n :] = now.max(axis=0)
        np.matmul(features, c1w, out=cost_hidden)
        relu_(add_into(cost_hidden, cost_hidden, c1b))
        np.matmul(cost_hidden, c2w, out=cost)
        relu_(add_into(cost, cost, c2b))
        np.matmul(cost, h_cost, out=pre)
        add_into(pre, policy_part, pre)
        relu_(add_into(pre, pre, policy_enc[i] @ h_table + h1b))
        np.matmul(pre, h2w, out=logits2)
        logits2 += h2b
        logits = logits2[:, 0]
        if everywhere:
            if not np.isfinite(logits).all():
                raise NonFiniteError("the policy's scores of the devices are not finite")
            masked = logits
        else:
            if not np.isfinite(logits[legal]).all():
                raise NonFiniteError("the policy's scores of the devices are not finite")
            masked = np.where(legal, logits, -np.inf)
        best = masked.max()
        d = int(np.flatnonzero(masked >= best - GREEDY_TIE_TOLERANCE * (1.0 + abs(best)))[0])
        sums[d] += table_enc[i]
        pre_sums[d] += table_pre[i]
        counts[d] += 1
        policy_part[d] += policy_enc[i] @ h_sums
        now[d] = heads(pre_sums[d])
        device_of[i] = d
        tracker.place(i, [d])
    zero = torch.zeros(1)
    with torch.no_grad():
        real = torch.ones(1, num_devices, dtype=torch.bool)
        device_sums = torch.from_numpy(sums).float().unsqueeze(0)
        occupied = torch.from_numpy(counts > 0).unsqueeze(0)
        _, predicted = costnet.predict(device_sums, real, occupied)
    infeasible = stuck >= 0
    return Rollout(
        device_of=torch.from_numpy(device_of).unsqueeze(0),
        log_prob=zero,
        entropy=zero,
        predicted_cost=predicted * (1.0 + INFEASIBLE_PENALTY * float(infeasible)),
        feasible=torch.tensor([not infeasible]),
        stuck_table=torch.tensor([stuck]),
    )


class EstimatedMDP(gym.Env[dict[str, Any], np.int64]):
    """One task's estimated MDP with a Gymnasium interface.

    Observation (a dict): ``device_of`` [T] device of each placed table (-1 if not yet
    placed), ``table`` the index of the table to place next (T once the episode is
    over), ``action_mask`` [D] devices with room for it. Action: a device index; an
    action outside the mask raises ValueError. Reward: 0, and at the last step minus
    the predicted placement cost in milliseconds.
    """

    def __init__(self, task: Task, normalizer: FeatureNormalizer, costnet: CostNet) -> None:
        self.metadata = {"render_modes": []}
        self.tt = task_tensors(task, normalizer, costnet)
        self.costnet = costnet
        num_tables, num_devices = task.num_tables, task.num_devices
        self.observation_space = spaces.Dict(
            {
                "device_of": spaces.Box(-1, num_devices - 1, (num_tables,), dtype=np.int64),
                "table": spaces.Discrete(num_tables + 1),
                "action_mask": spaces.MultiBinary(num_devices),
            }
        )
        self.action_space = spaces.Discrete(num_devices)
        self._batch = EpisodeBatch(self.tt, costnet, 1)

    def _observation(self) -> dict[str, Any]:
        done = self._batch.done
        mask = (
            np.zeros(self.tt.task.num_devices, dtype=np.int8)
            if done
            else self._batch.legal()[0].numpy().astype(np.int8)
        )
        return {
            "device_of": self._batch.device_of[0].numpy().copy(),
            "table": self.tt.task.num_tables if done else self._batch.table,
            "action_mask": mask,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self._batch = EpisodeBatch(self.tt, self.costnet, 1)
        return self._observation(), {}

    def step(
        self, action: np.int64 | int
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._batch.done:
            raise RuntimeError("step() after the episode ended; call reset()")
        legal = self._batch.legal()[0]
        if not 0 <= int(action) < self.tt.task.num_devices or not bool(legal[int(action)]):
            raise ValueError(
                f"device {int(action)} is not a legal action for table "
                f"{self.tt.task.tables[self._batch.table].name!r} (legal: "
                f"{[d for d in range(len(legal)) if legal[d]]})"
            )
        self._batch.place(torch.tensor([int(action)]))
        terminated = self._batch.done or not bool(self._batch.legal()[0].any())
        reward = 0.0
        info: dict[str, Any] = {}
        if terminated:
            if not self._batch.done:
                info["infeasible"] = True
                self._batch.infeasible[0] = True
            cost = float(self._batch.predicted_cost()[0]) * self.costnet.cost_scale_ms
            reward = -cost
            info["predicted_cost_ms"] = cost
        return self._observation(), reward, terminated, False, info
