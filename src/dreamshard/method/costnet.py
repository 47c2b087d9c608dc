"""The cost network (METHOD.md section 3): fused-operator and placement cost from features.

A shared table encoder maps each table's normalised features to a 32-vector; a device is
the SUM of its tables' encodings (any number of tables); three heads predict the
device's forward computation, backward computation and communication (both stages)
costs; an overall head reads the MAX over the device representations (any number of
devices) and predicts the placement's cost.

Beyond the paper, the device heads also read a *task context*: the MEAN over devices of
the device representations (the task's total encoding over its number of devices, the
same for every placement of the task) and ``log`` of the number of devices. A device's
all-to-all time depends on the other devices' widths and on how many there are, which a
head seeing one device cannot know otherwise; with it, one network fits tasks of 2 to
1,024 devices. A device's computation (its fused kernel) depends on its own tables only,
so the computation heads can be built without the context (``compute_context=False``):
then they are functions of one device's tables, and single-device shard measurements
(:meth:`CostNet.compute_loss`) train them directly. All costs are in units of
``cost_scale_ms`` so the losses are well conditioned whatever the hardware's speed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dreamshard.data.features import NETWORK_FEATURE_NAMES
from dreamshard.runtime import TORCH_ELEMENTWISE_MIN, add_into, relu_
from dreamshard.types import Placement, PlacementCost

#: Per-device heads, in output order.
DEVICE_HEADS: tuple[str, ...] = ("fwd_comp", "bwd_comp", "comm")
#: The computation heads among them (the first ones).
COMPUTE_HEADS = 2

#: What a device's error in the cost network's loss is divided by (:meth:`CostNet.loss`):
#: its placement's measured cost, or the device's own.
DEVICE_ERRORS: tuple[str, ...] = ("placement", "device")
#: With ``device_error="device"``: the least a device's own cost counts as, a share of its
#: placement's (an empty or nearly empty device's error would otherwise be divided by ~0).
DEVICE_ERROR_FLOOR = 0.05
#: With ``device_error="device"``: the weight of the device terms beside the overall one
#: (errors relative to a device's own, smaller cost are larger: at weight 1 they swamp
#: the overall and pairwise terms). Set once and not tuned (the only value tried, as is
#: the floor); the stage trained with it was validated with ``benchmarks/select_model.py``
#: (docs/results.md).
DEVICE_ERROR_WEIGHT = 0.1


def mlp(sizes: Sequence[int], final_relu: bool) -> nn.Sequential:
    """Linear layers with ReLU between them (and after the last if ``final_relu``)."""
    layers: list[nn.Module] = []
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if k < len(sizes) - 2 or final_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TableEncoder(nn.Module):
    """Features -> non-negative embedding (21 -> 128 -> 32); sums of them stay meaningful.

    The final ReLU keeps every encoding >= 0, so a device without tables (all zeros) never
    wins a MAX over devices, and padding devices with zeros is harmless.
    """

    def __init__(self, hidden: int = 128, embed: int = 32) -> None:
        super().__init__()
        self.embed = embed
        self.net = mlp([len(NETWORK_FEATURE_NAMES), hidden, embed], final_relu=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)  # type: ignore[no-any-return]


def device_sums(encodings: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """SUM of table encodings per segment (one segment = one device of one placement).

    Args:
        encodings: [N, E] encodings of N tables (ragged over placements and devices).
        segment: [N] segment index of each table, in ``0..num_segments-1``.
        num_segments: Number of segments (placements x padded devices).

    Returns:
        [num_segments, E]; empty segments are zero.
    """
    out = encodings.new_zeros(num_segments, encodings.shape[1])
    return out.index_add(0, segment, encodings)


@dataclass
class PlacementBatch:
    """Several placements (of possibly different tasks) packed for one forward pass.

    Attributes:
        features: [N, F] normalised features of every table of every placement.
        segment: [N] index ``p * max_devices + d`` of the device holding each table.
        num_placements: P.
        max_devices: Devices per placement after padding.
        device_mask: [P, max_devices] True for real devices.
    """

    features: torch.Tensor
    segment: torch.Tensor
    num_placements: int
    max_devices: int
    device_mask: torch.Tensor

    @classmethod
    def build(
        cls,
        features: Sequence[np.ndarray],
        placements: Sequence[Placement],
        num_devices: Sequence[int],
    ) -> PlacementBatch:
        """Pack placements; ``features[p]`` are the [T_p, F] normalised table features."""
        max_devices = max(num_devices)
        segments = [
            p * max_devices + np.asarray(placement.device_of, dtype=np.int64)
            for p, placement in enumerate(placements)
        ]
        mask = torch.zeros(len(placements), max_devices, dtype=torch.bool)
        for p, d in enumerate(num_devices):
            mask[p, :d] = True
        return cls(
            features=torch.from_numpy(np.concatenate(features).astype(np.float32)),
            segment=torch.from_numpy(np.concatenate(segments)),
            num_placements=len(placements),
            max_devices=max_devices,
            device_mask=mask,
        )


@dataclass
class CostTargets:
    """Measured costs of a batch, in units of ``cost_scale_ms``.

    Attributes:
        device: [P, max_devices, 3] fwd_comp, bwd_comp, comm (fwd + bwd) per device.
        overall: [P] placement cost.
    """

    device: torch.Tensor
    overall: torch.Tensor

    @classmethod
    def build(
        cls, costs: Sequence[PlacementCost], max_devices: int, cost_scale_ms: float
    ) -> CostTargets:
        device = torch.zeros(len(costs), max_devices, len(DEVICE_HEADS))
        for p, cost in enumerate(costs):
            slowest_fwd = max(stage.fwd_comp_ms for stage in cost.per_device)
            for d, stage in enumerate(cost.per_device):
                device[p, d, 0] = stage.fwd_comp_ms
                device[p, d, 1] = stage.bwd_comp_ms
                # The communication head learns BOTH stages (the original code trained it
                # on the backward column only; METHOD.md section 4), without the time the
                # device waited for slower devices' forward computation: that wait
                # depends on the other devices, which a per-device head cannot see.
                wait = slowest_fwd - stage.fwd_comp_ms
                device[p, d, 2] = stage.fwd_comm_ms + stage.bwd_comm_ms - wait
        overall = torch.tensor([c.cost_ms for c in costs], dtype=torch.float32)
        return cls(device=device / cost_scale_ms, overall=overall / cost_scale_ms)


class CostNet(nn.Module):
    """DreamShard's cost network (METHOD.md section 3).

    Args:
        structured_overall: How the placement cost is predicted. False: the paper's
            overall head over the MAX of the device representations. True (default):
            the cost's own definition applied to the per-device predictions,
            ``max_d fwd + max_d bwd + max_d comm`` (METHOD.md section 1), which every
            per-device measurement trains and which the policy cannot exploit as easily.
            The paper's head is trained either way.
        task_context: The device heads read the task context (module docstring).
        compute_context: With ``task_context``, the computation heads read it too (the
            layout of models made before single-device shards were used); False (and
            always without ``task_context``): they do not, and are functions of one
            device's tables (:meth:`compute_loss` trains them).

    Attributes:
        cost_scale_ms: Milliseconds per output unit (set from the first measurements).
    """

    def __init__(
        self,
        hidden: int = 128,
        embed: int = 32,
        head_hidden: int = 64,
        structured_overall: bool = True,
        task_context: bool = True,
        compute_context: bool = True,
    ) -> None:
        super().__init__()
        self.structured_overall = structured_overall
        self.task_context = task_context
        # Without any task context the computation heads read none either.
        self.compute_context = compute_context and task_context
        self.encoder = TableEncoder(hidden, embed)
        head_in = 2 * embed + 1 if task_context else embed
        self.device_heads = nn.ModuleList(
            [mlp([head_in, head_hidden, 1], final_relu=False) for _ in DEVICE_HEADS]
        )
        self.overall_head = mlp([embed, head_hidden, 1], final_relu=False)
        self._cost_scale_ms: torch.Tensor
        self.register_buffer("_cost_scale_ms", torch.tensor(1.0))

    @property
    def cost_scale_ms(self) -> float:
        return float(self._cost_scale_ms.item())

    @cost_scale_ms.setter
    def cost_scale_ms(self, value: float) -> None:
        self._cost_scale_ms.fill_(value)

    def context(
        self, total_encoding: torch.Tensor, num_devices: torch.Tensor | int
    ) -> torch.Tensor:
        """[..., E + 1] task context from the sum of all table encodings of a task [..., E]
        and its number of devices (a number or [...])."""
        n = torch.as_tensor(num_devices, dtype=total_encoding.dtype)
        n = n.expand(total_encoding.shape[:-1]).unsqueeze(-1)
        return torch.cat([total_encoding / n, torch.log(n)], dim=-1)

    def heads(self, device_repr: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """[..., E] device representations -> [..., 3] fwd_comp, bwd_comp, comm.

        ``context`` (:meth:`context`) broadcasts against the leading axes of
        ``device_repr``; it is required with ``task_context`` and ignored without.

        The three heads (Linear-ReLU-Linear each) run as one wide layer and one batched
        dot product: the same function as calling them in turn, with 2 kernel launches
        instead of 6 (the MDP calls this at every step of every episode).
        """
        w1, b1, w2, b2 = self.fused_heads()
        embed = device_repr.shape[-1]
        if self.task_context:
            if context is None:
                raise ValueError("this cost network's heads need the task context")
            # The context's part of the first layer is one bias per task, computed once
            # instead of concatenating the context to every device.
            bias = nn.functional.linear(context, w1[:, embed:], b1)
            while bias.dim() < device_repr.dim():
                bias = bias.unsqueeze(-2)
            pre = nn.functional.linear(device_repr, w1[:, :embed]) + bias
        else:
            pre = nn.functional.linear(device_repr, w1, b1)
        hidden = torch.relu(pre)  # [..., 3 * H]
        hidden = hidden.reshape(*hidden.shape[:-1], len(DEVICE_HEADS), -1)  # [..., 3, H]
        out: torch.Tensor = (hidden * w2).sum(dim=-1) + b2
        return out

    def _head_layers(self) -> list[list[nn.Linear]]:
        """Each device head's two linear layers."""
        return [[m for m in h.modules() if isinstance(m, nn.Linear)] for h in self.device_heads]

    def fused_heads(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three heads' layers stacked: ([3H, in], [3H], [3, H], [3]).

        Without ``compute_context`` the computation heads' context weights are read as
        zero (so no gradient reaches them either): every user of the heads (training,
        the MDP, the searches) goes through here.

        Cached in eval mode without gradients (inference calls this at every step);
        switching modes or loading weights drops the cache, so weights changed by
        training (in train mode) are always seen.
        """
        cached: tuple[torch.Tensor, ...] | None = self.__dict__.get("_fused_cache")
        use_cache = not self.training and not torch.is_grad_enabled()
        if use_cache and cached is not None:
            return cached  # type: ignore[return-value]
        layers = self._head_layers()
        firsts = [first.weight for first, _ in layers]
        if self.task_context and not self.compute_context:
            embed = self.encoder.embed
            firsts[:COMPUTE_HEADS] = [
                torch.cat([w[:, :embed], torch.zeros_like(w[:, embed:])], dim=1)
                for w in firsts[:COMPUTE_HEADS]
            ]
        fused = (
            torch.cat(firsts),
            torch.cat([first.bias for first, _ in layers]),
            torch.cat([second.weight for _, second in layers]),
            torch.cat([second.bias for _, second in layers]),
        )
        if use_cache:
            self.__dict__["_fused_cache"] = fused
        return fused

    def drop_compute_context(self) -> None:
        """Make the computation heads independent of the task context (``compute_context
        = False``), their context weights zeroed: a model of the older layout becomes one
        that single-device shards can train. Its computation predictions change (each
        task's context was a bias of those heads) until it is trained again."""
        if self.compute_context:
            embed = self.encoder.embed
            with torch.no_grad():
                for first, _ in self._head_layers()[:COMPUTE_HEADS]:
                    first.weight[:, embed:] = 0.0
            self.compute_context = False
            self.__dict__.pop("_fused_cache", None)

    def train(self, mode: bool = True) -> CostNet:
        self.__dict__.pop("_fused_cache", None)
        return super().train(mode)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self.__dict__.pop("_fused_cache", None)
        return super().load_state_dict(*args, **kwargs)

    def paper_overall(self, device_repr: torch.Tensor) -> torch.Tensor:
        """[P, D, E] -> [P]: the paper's overall head on the MAX over devices.

        Padding devices must be zero vectors; encodings are >= 0, so they never win.
        """
        pooled = device_repr.max(dim=1).values
        return self.overall_head(pooled).squeeze(-1)  # type: ignore[no-any-return]

    def predict(
        self, device_repr: torch.Tensor, device_mask: torch.Tensor, occupied: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Device costs and placement cost from device representations.

        Args:
            device_repr: [P, D, E] sums of table encodings (zero for padding).
            device_mask: [P, D] True for real devices.
            occupied: [P, D] True for devices holding at least one table.

        Returns:
            ([P, D, 3] device costs, [P] placement cost), scaled units; a device without
            tables computes nothing, so its fwd/bwd are 0.
        """
        context = None
        if self.task_context:
            # Padding devices are zero: the sum over all devices is the task's total.
            context = self.context(device_repr.sum(dim=1), device_mask.sum(dim=1))
        device = self.heads(device_repr, context)
        compute = device[..., :2] * occupied.unsqueeze(-1)
        device = torch.cat([compute, device[..., 2:]], dim=-1)
        if not self.structured_overall:
            return device, self.paper_overall(device_repr)
        lowest = torch.finfo(device.dtype).min
        per_stage_max = device.masked_fill(~device_mask.unsqueeze(-1), lowest).max(dim=1).values
        return device, per_stage_max.sum(dim=-1)

    def represent(self, batch: PlacementBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """([P, D, E] device representations, [P, D] occupied) of a batch."""
        enc = self.encoder(batch.features)
        size = batch.num_placements * batch.max_devices
        sums = device_sums(enc, batch.segment, size)
        counts = torch.zeros(size).index_add(0, batch.segment, torch.ones(len(batch.segment)))
        shape = (batch.num_placements, batch.max_devices)
        return sums.view(*shape, -1), counts.view(shape) > 0

    def forward(self, batch: PlacementBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted ([P, D, 3] device costs, [P] overall cost) in scaled units."""
        device_repr, occupied = self.represent(batch)
        return self.predict(device_repr, batch.device_mask, occupied)

    def loss(
        self,
        batch: PlacementBatch,
        targets: CostTargets,
        groups: torch.Tensor | None = None,
        pairwise_weight: float = 0.0,
        relative: bool = False,
        device_error: str = "placement",
    ) -> torch.Tensor:
        """Sum of the mean squared errors of the device heads and the overall cost
        (METHOD.md section 3), real devices only; the paper's overall head is trained too.

        Beyond the paper:

        - ``groups`` ([P] task of each placement) and a positive ``pairwise_weight``: plus
          that weight times the mean squared error of the DIFFERENCES of predicted
          overall costs over pairs of placements of the same task (what ranking needs);
        - ``relative``: every error of a placement is divided by its measured overall
          cost (a pair's by the mean of the two), so tasks of 2 and of 200 ms weigh the
          same; in absolute units the largest tasks would decide the whole fit;
        - ``device_error="device"``: each device's error is divided by that device's own
          measured cost (floored at :data:`DEVICE_ERROR_FLOOR` of its placement's) instead,
          and the device terms weigh :data:`DEVICE_ERROR_WEIGHT`: every device's costs are
          fitted to the same relative precision, where with ``"placement"`` a device
          far from the slowest barely counts (a search moves tables between exactly
          such devices).
        """
        if device_error not in DEVICE_ERRORS:
            raise ValueError(f"device_error must be one of {DEVICE_ERRORS}, got {device_error!r}")
        device_repr, occupied = self.represent(batch)
        device_pred, overall_pred = self.predict(device_repr, batch.device_mask, occupied)
        scale = targets.overall if relative else torch.ones_like(targets.overall)
        weight = 1.0
        if device_error == "device":
            floor = DEVICE_ERROR_FLOOR * targets.overall[:, None, None]
            device_scale = torch.maximum(targets.device, floor)
            weight = DEVICE_ERROR_WEIGHT
        else:
            device_scale = scale[:, None, None]
        device_err = (device_pred - targets.device) / device_scale
        device_loss = (device_err**2)[batch.device_mask].mean(dim=0)
        loss = weight * device_loss.sum() + (((overall_pred - targets.overall) / scale) ** 2).mean()
        if self.structured_overall:
            paper = self.paper_overall(device_repr)
            loss = loss + (((paper - targets.overall) / scale) ** 2).mean()
        if groups is not None and pairwise_weight > 0:
            pairs = torch.triu(groups[:, None] == groups[None, :], diagonal=1)
            if bool(pairs.any()):
                predicted = overall_pred[:, None] - overall_pred[None, :]
                measured = targets.overall[:, None] - targets.overall[None, :]
                pair_scale = (scale[:, None] + scale[None, :]) / 2
                err = (predicted - measured) / pair_scale
                loss = loss + pairwise_weight * (err[pairs] ** 2).mean()
        return loss

    def compute_costs(self, batch: PlacementBatch) -> torch.Tensor:
        """[S, 2] predicted forward and backward computation (scaled units) of single-device
        shards packed as one-device placements (``max_devices == 1``).

        Raises:
            ValueError: The computation heads read the task context (a shard has no
                task), or the batch is not of single-device shards.
        """
        if self.compute_context:
            raise ValueError("shard costs need computation heads without the task context")
        if batch.max_devices != 1:
            raise ValueError(f"shards are single-device, got {batch.max_devices} devices")
        device_repr, _ = self.represent(batch)
        context = None
        if self.task_context:  # read by the communication head only, left out below
            context = self.context(device_repr.sum(dim=1), 1)
        return self.heads(device_repr, context)[:, 0, :COMPUTE_HEADS]

    def compute_loss(self, batch: PlacementBatch, targets: torch.Tensor) -> torch.Tensor:
        """Squared relative errors of the computation heads on single-device shards
        (:meth:`compute_costs`), against ``targets`` [S, 2], their measured forward and
        backward computation in scaled units (positive: a shard holds a table).

        Returns:
            The mean over shards of each head's squared error relative to the shard's
            own cost, summed over the two heads: every shard, small or large, is fitted
            to the same relative precision.
        """
        return (((self.compute_costs(batch) - targets) / targets) ** 2).mean(dim=0).sum()


class CostNetStageModel:
    """The cost network's predicted cost of one task's placements as a
    :class:`~dreamshard.types.StageCostModel` (searches score placements with it).

    A device's stage costs are the three heads on the sum of its tables' encodings (with
    the task context), forward and backward zero on an empty device, in ms.
    ``sum over stages of max over devices`` is the structured overall cost
    :meth:`CostNet.predict` gives.

    The heads' first layer is linear, so the layer of a sum is the sum of the layer of
    each table: a table's vector here is its encoding through that layer (``[3H]``),
    and a device's stage costs cost only the activation and the second layer, with no
    matrix product on the sums (half the time of a search step).

    Args:
        costnet: The cost network (read only).
        features: [T, F] the task's normalised table features.
        num_devices: The task's devices.
    """

    def __init__(self, costnet: CostNet, features: torch.Tensor, num_devices: int) -> None:
        with torch.no_grad():
            encodings = costnet.encoder(features)
        total = encodings.sum(dim=0)
        encodings64 = encodings.double().numpy()
        self._init(costnet, self.project(costnet, encodings64), total, num_devices)

    @staticmethod
    def project(costnet: CostNet, encodings: np.ndarray) -> np.ndarray:
        """``[T, 3H]`` the tables' vectors: their encodings (``[T, E]``, float64) through
        the heads' first layer (the task context's part left out)."""
        with torch.no_grad():
            w1 = costnet.fused_heads()[0].double().numpy()
        out: np.ndarray = encodings @ w1[:, : encodings.shape[1]].T
        return out

    @classmethod
    def from_vectors(
        cls, costnet: CostNet, vectors: np.ndarray, total: torch.Tensor, num_devices: int
    ) -> CostNetStageModel:
        """The stage model of a task whose tables' vectors (:meth:`project`) and sum of
        float32 encodings ``total`` (``[E]``, for the task context) are known: the split
        search scores many plans sharing most of their tables."""
        out = cls.__new__(cls)
        out._init(costnet, vectors, total, num_devices)
        return out

    def _init(
        self, costnet: CostNet, vectors: np.ndarray, total: torch.Tensor, num_devices: int
    ) -> None:
        with torch.no_grad():
            _, b1, w2, b2 = (t.double() for t in costnet.fused_heads())
            if costnet.task_context:
                w1 = costnet.fused_heads()[0].double()
                context = costnet.context(total, num_devices)
                b1 = b1 + w1[:, len(total) :] @ context.double()
        # The heads in float64 numpy: a search calls them thousands of times on a few
        # rows, where numpy's per-call overhead is a fraction of torch's.
        self._vectors: np.ndarray = vectors  # [T, 3H]
        self._b1 = b1.numpy()
        heads, hidden = w2.shape
        second = np.zeros((heads * hidden, heads))  # block diagonal: head s reads block s
        for s in range(heads):
            second[s * hidden : (s + 1) * hidden, s] = w2[s].numpy()
        self._w2 = second
        self._b2 = b2.numpy()
        self._scale = costnet.cost_scale_ms
        self._buffer = np.empty(0)

    @property
    def table_vectors(self) -> np.ndarray:
        return self._vectors

    def stage_costs(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        sums = np.asarray(sums)
        if sums.size >= TORCH_ELEMENTWISE_MIN:
            # Into a kept buffer: a fresh [1024, 192] array per call costs more in page
            # faults than the arithmetic (the greedy calls this per table).
            hidden = relu_(add_into(self._scratch(sums.shape), sums, self._b1))
        else:  # a few rows (the local search's moves): numpy's per-call cost is lowest
            hidden = sums + self._b1
            np.maximum(hidden, 0.0, out=hidden)
        costs: np.ndarray = hidden @ self._w2
        costs += self._b2
        costs *= self._scale
        costs[..., :2] *= np.asarray(counts)[..., None] > 0
        return costs

    def _scratch(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float64 buffer of ``shape`` (its contents undefined), kept for the next call
        of the same or a smaller size."""
        size = math.prod(shape)
        if self._buffer.size < size:
            self._buffer = np.empty(max(size, 2 * self._buffer.size))
        return self._buffer[:size].reshape(shape)
