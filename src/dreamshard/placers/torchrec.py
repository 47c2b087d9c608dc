"""TorchRec's own planner as a placer (placer name ``torchrec``), and the adapters that
describe a task to TorchRec: an ``EmbeddingBagCollection`` on the meta device, a
``Topology`` of the task's devices and per-table ``ParameterConstraints``.

:class:`TorchRecPlacer` runs TorchRec's ``EmbeddingShardingPlanner`` restricted to
table-wise sharding and the fused kernel, under the same per-device memory, and turns its
plan back into a placement, so every comparison includes what users would otherwise pick.

TorchRec is imported lazily, inside these classes and functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dreamshard.constants import DEFAULT_BATCH_SIZE, DEVICE_TYPES
from dreamshard.data.constraints import ConstraintSpec
from dreamshard.errors import InfeasiblePlacementError, InputError, InvalidPlacementError
from dreamshard.types import Placement, Task

if TYPE_CHECKING:
    from torch import nn

#: TorchRec's name of the sharding type DreamShard plans use (a whole table on one rank).
TABLE_WISE = "table_wise"

#: TorchRec compute kernel of every table DreamShard plans: FBGEMM's fused TBE, optimizer
#: fused into the backward pass (TorchRec's ``EmbeddingComputeKernel.FUSED``).
FUSED_KERNEL = "fused"


# -- TorchRec's planner as a placer -----------------------------------------------------


class TorchRecPlannerError(InfeasiblePlacementError):
    """TorchRec's planner found no plan within the memory (its message is kept)."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.table = ""
        self.needed_bytes = 0
        self.free_bytes = []


def task_module(task: Task) -> nn.Module:
    """An ``EmbeddingBagCollection`` on the meta device with the task's tables (one
    feature per table), the fused optimizer of the task applied, for TorchRec's planner."""
    import torch
    from torchrec import optim as trec_optim
    from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    dtypes = {"fp32": DataType.FP32, "fp16": DataType.FP16}
    configs = [
        EmbeddingBagConfig(
            name=t.name,
            embedding_dim=t.dim,
            num_embeddings=t.rows,
            feature_names=[f"{t.name}__ids"],
            data_type=dtypes[t.dtype],
        )
        for t in task.tables
    ]
    ebc: nn.Module = EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
    optimizer: type = torch.optim.SGD if task.optimizer == "sgd" else trec_optim.RowWiseAdagrad
    apply_optimizer_in_backward(optimizer, ebc.parameters(), {"lr": 0.01})
    return ebc


def torchrec_topology(task: Task, compute_device: str = "cpu") -> Any:
    """TorchRec ``Topology`` of the task's devices: their memory as HBM (``cuda``) or DDR
    (``cpu``), one host."""
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig

    if compute_device not in DEVICE_TYPES:
        raise InputError(f"compute device {compute_device!r}: use one of {DEVICE_TYPES}")
    memory = [d.memory_bytes for d in task.devices]
    key = "hbm_cap_bytes" if compute_device == "cuda" else "ddr_cap_bytes"
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=task.num_devices, **{key: max(memory)}),
        kernel_config=KernelConfig(compute_device=compute_device),
    )
    for device, cap in zip(topology.devices, memory, strict=True):  # heterogeneous memory
        if compute_device == "cuda":
            device.storage.hbm = cap
        else:
            device.storage.ddr = cap
    return topology


def torchrec_constraints(task: Task, table_wise_only: bool = True) -> dict[str, Any]:
    """Per-table ``ParameterConstraints``: pooling factors, and (by default) table-wise
    sharding with the fused kernel only."""
    from torchrec.distributed.planner.types import ParameterConstraints

    if table_wise_only:
        return {
            t.name: ParameterConstraints(
                sharding_types=[TABLE_WISE],
                compute_kernels=[FUSED_KERNEL],
                pooling_factors=[t.pooling_factor],
            )
            for t in task.tables
        }
    return {t.name: ParameterConstraints(pooling_factors=[t.pooling_factor]) for t in task.tables}


def torchrec_planner(
    task: Task,
    compute_device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    table_wise_only: bool = True,
    timeout_s: int | None = None,
) -> Any:
    """TorchRec's ``EmbeddingShardingPlanner`` for ``task``: the same per-device memory,
    no reserved share of it, ``batch_size`` global samples (TorchRec's batch is per rank)."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.storage_reservations import (
        FixedPercentageStorageReservation,
    )

    topology = torchrec_topology(task, compute_device)
    return EmbeddingShardingPlanner(
        topology=topology,
        batch_size=max(1, batch_size // task.num_devices),
        constraints=torchrec_constraints(task, table_wise_only),
        storage_reservation=FixedPercentageStorageReservation(0.0),
        debug=False,
        timeout_seconds=timeout_s,
    )


def sharders() -> list[Any]:
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    return [EmbeddingBagCollectionSharder()]


class TorchRecPlacer:
    """TorchRec's ``EmbeddingShardingPlanner`` (table-wise, fused kernel) as a placer.

    Args:
        compute_device: ``"cpu"`` (default; the package's measuring backends run on CPU)
            or ``"cuda"``: which hardware TorchRec's estimators assume.
        batch_size: Global batch size TorchRec's estimators assume.
        constraints: User constraints; any non-empty ones are refused, since TorchRec's
            ``ParameterConstraints`` cannot put a table on a given rank (torchrec issue
            #2642), keep tables together or apart.

    Raises:
        InputError: for non-empty ``constraints``.
    """

    name = "torchrec"

    def __init__(
        self,
        compute_device: str = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        constraints: ConstraintSpec | None = None,
    ) -> None:
        if compute_device not in DEVICE_TYPES:
            raise InputError(f"compute device {compute_device!r}: use one of {DEVICE_TYPES}")
        if constraints is not None and not constraints.is_empty:
            raise InputError(
                "placer 'torchrec' cannot honour constraints (TorchRec's planner has no "
                "per-rank pinning; see torchrec issue #2642)"
            )
        self.compute_device = compute_device
        self.batch_size = batch_size

    def place(self, task: Task) -> Placement:
        from torchrec.distributed.planner.types import PlannerError

        planner = torchrec_planner(task, self.compute_device, self.batch_size)
        try:
            plan = planner.plan(task_module(task), sharders())
        except PlannerError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise TorchRecPlannerError(f"TorchRec's planner found no plan: {first}") from None
        module_plan = plan.plan.get("", {})
        device_of = []
        for t in task.tables:
            sharding = module_plan.get(t.name)
            if sharding is None or sharding.sharding_type != TABLE_WISE:
                raise InvalidPlacementError(
                    f"TorchRec's plan gives table {t.name!r} no table-wise sharding"
                )
            (rank,) = sharding.ranks
            device_of.append(int(rank))
        placement = Placement(tuple(device_of))
        placement.validate(task)
        return placement
