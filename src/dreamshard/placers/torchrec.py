"""TorchRec's own planner as a placer (placer names ``torchrec`` and ``torchrec-all``), and
the adapters that describe a task to TorchRec: an ``EmbeddingBagCollection`` on the meta
device, a ``Topology`` of the task's devices and per-table ``ParameterConstraints``.

:class:`TorchRecPlacer` runs TorchRec's ``EmbeddingShardingPlanner`` restricted to
table-wise sharding and the fused kernel, under the same per-device memory, and turns its
plan back into a placement, so every comparison includes what users would otherwise pick.
:class:`TorchRecAllPlacer` lets the planner also split tables column-wise and row-wise
(and table-row-wise, on a task of two hosts or more) and turns its shards back into a
split placement (:func:`placement_from_torchrec_plan`).

TorchRec is imported lazily, inside these classes and functions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dreamshard.constants import DEFAULT_BATCH_SIZE, DEVICE_TYPES
from dreamshard.data.constraints import ConstraintSpec
from dreamshard.errors import InfeasiblePlacementError, InputError, InvalidPlacementError
from dreamshard.types import Placement, TableSplit, Task

if TYPE_CHECKING:
    from torch import nn

#: TorchRec's names of the sharding types DreamShard plans use: a whole table on one rank,
#: column shards on chosen ranks, row blocks over every rank, row blocks over the ranks of
#: one host (the last only for tasks of two hosts or more).
TABLE_WISE = "table_wise"
COLUMN_WISE = "column_wise"
ROW_WISE = "row_wise"
TABLE_ROW_WISE = "table_row_wise"
SHARDING_TYPES: tuple[str, ...] = (TABLE_WISE, COLUMN_WISE, ROW_WISE, TABLE_ROW_WISE)

log = logging.getLogger(__name__)

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
    (``cpu``), the task's hosts (``local_world_size``; one host unless the task has two or
    more)."""
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig

    if compute_device not in DEVICE_TYPES:
        raise InputError(f"compute device {compute_device!r}: use one of {DEVICE_TYPES}")
    memory = [d.memory_bytes for d in task.devices]
    key = "hbm_cap_bytes" if compute_device == "cuda" else "ddr_cap_bytes"
    hosts = {"local_world_size": task.host_size} if task.num_hosts >= 2 else {}
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=task.num_devices, **{key: max(memory)}, **hosts),
        kernel_config=KernelConfig(compute_device=compute_device),
    )
    for device, cap in zip(topology.devices, memory, strict=True):  # heterogeneous memory
        if compute_device == "cuda":
            device.storage.hbm = cap
        else:
            device.storage.ddr = cap
    return topology


def torchrec_constraints(
    task: Task, table_wise_only: bool = True, sharding_types: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per-table ``ParameterConstraints``: pooling factors, and (by default) table-wise
    sharding with the fused kernel only; ``sharding_types`` (with the fused kernel)
    instead where given; TorchRec's own choice of both with ``table_wise_only=False``."""
    from torchrec.distributed.planner.types import ParameterConstraints

    if sharding_types is not None or table_wise_only:
        return {
            t.name: ParameterConstraints(
                sharding_types=list(sharding_types or (TABLE_WISE,)),
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
    sharding_types: Sequence[str] | None = None,
) -> Any:
    """TorchRec's ``EmbeddingShardingPlanner`` for ``task``: the same per-device memory,
    no reserved share of it, ``batch_size`` global samples (TorchRec's batch is per rank),
    the sharding types of :func:`torchrec_constraints`."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.storage_reservations import (
        FixedPercentageStorageReservation,
    )

    topology = torchrec_topology(task, compute_device)
    return EmbeddingShardingPlanner(
        topology=topology,
        batch_size=max(1, batch_size // task.num_devices),
        constraints=torchrec_constraints(task, table_wise_only, sharding_types),
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
    #: The sharding types the planner may choose.
    sharding_types: tuple[str, ...] = (TABLE_WISE,)

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
                f"placer {self.name!r} cannot honour constraints (TorchRec's planner has no "
                "per-rank pinning; see torchrec issue #2642)"
            )
        self.compute_device = compute_device
        self.batch_size = batch_size

    def place(self, task: Task) -> Placement:
        from torchrec.distributed.planner.types import PlannerError

        types = self.sharding_types_for(task)
        planner = torchrec_planner(task, self.compute_device, self.batch_size, sharding_types=types)
        try:
            plan = planner.plan(task_module(task), sharders())
        except PlannerError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise TorchRecPlannerError(f"TorchRec's planner found no plan: {first}") from None
        return placement_from_torchrec_plan(task, plan.plan.get("", {}), types)

    def sharding_types_for(self, task: Task) -> tuple[str, ...]:
        """The sharding types the planner may choose for ``task``: table-row-wise only
        where the task has two hosts or more (on one host it is row-wise, which a
        placement says as a ``row`` split)."""
        if task.num_hosts >= 2:
            return self.sharding_types
        return tuple(t for t in self.sharding_types if t != TABLE_ROW_WISE)


class TorchRecAllPlacer(TorchRecPlacer):
    """TorchRec's ``EmbeddingShardingPlanner`` free to shard tables table-wise,
    column-wise, row-wise or, on a task of two hosts or more, table-row-wise (fused
    kernel) as a placer: its plan becomes a split placement, so comparisons include
    TorchRec splitting tables as it would by default (without data-parallel sharding,
    which placements cannot express).

    On ``compute_device="cpu"`` TorchRec 1.8's ``EmbeddingBagCollectionSharder`` offers
    no row-wise or table-row-wise sharding (only on ``cuda``), and its column-wise shards
    are at least 128 columns wide (``MIN_CW_DIM``), so there only tables of dim 256 and
    more can be split. Arguments as :class:`TorchRecPlacer`.
    """

    name = "torchrec-all"
    sharding_types = SHARDING_TYPES


def placement_from_torchrec_plan(
    task: Task, module_plan: Mapping[str, Any], sharding_types: Sequence[str] = SHARDING_TYPES
) -> Placement:
    """The placement of ``task`` a TorchRec module plan (table name -> ``ParameterSharding``)
    describes, checked with :meth:`Placement.validate`.

    ``table_wise`` tables stay whole on their rank; ``column_wise`` ones become column
    splits (shards in column order, each on its rank; a single shard is the whole table,
    logged); ``row_wise`` ones row splits, which must be TorchRec's blocks
    (:func:`dreamshard.types.row_split_sizes`) on ranks ``0, 1, ...``; ``table_row_wise``
    ones table-row splits on the host of their first rank, which must be TorchRec's blocks
    over the task's devices per host on that host's ranks in order.

    Raises:
        InvalidPlacementError: a table with no sharding or one not in ``sharding_types``,
            or shards a placement cannot express (a column shard whose dim is not a
            multiple of 4, an empty row block, table-row blocks on a task of one host),
            naming the table.
    """
    device_of: list[int] = []
    splits: list[TableSplit] = []
    for i, t in enumerate(task.tables):
        sharding = module_plan.get(t.name)
        if sharding is None:
            raise InvalidPlacementError(f"TorchRec's plan gives table {t.name!r} no sharding")
        kind = sharding.sharding_type
        if kind not in sharding_types:
            raise InvalidPlacementError(
                f"TorchRec's plan gives table {t.name!r} {kind} sharding; this placer takes "
                f"{', '.join(sharding_types)}"
            )
        ranks = [int(r) for r in sharding.ranks]
        if kind == TABLE_WISE:
            (rank,) = ranks
            device_of.append(rank)
            continue
        axis = 1 if kind == COLUMN_WISE else 0
        shards = sorted(
            zip(sharding.sharding_spec.shards, ranks, strict=True),
            key=lambda shard_rank: shard_rank[0].shard_offsets[axis],
        )
        sizes = tuple(int(shard.shard_sizes[axis]) for shard, _ in shards)
        shard_ranks = [rank for _, rank in shards]
        if kind == COLUMN_WISE and len(shards) == 1:
            log.info(
                "TorchRec's plan shards table %r column-wise in one shard: the whole table "
                "on rank %d (table-wise)",
                t.name,
                shard_ranks[0],
            )
            device_of.append(shard_ranks[0])
            continue
        split = _split_of(i, kind, sizes, shard_ranks, task)
        try:
            split.check(task)
        except InvalidPlacementError as err:
            raise InvalidPlacementError(
                f"TorchRec's plan shards table {t.name!r} {kind} in a way a placement cannot "
                f"express: {err}"
            ) from None
        # (check() has refused blocks other than TorchRec's; their ranks must be 0, 1, ...)
        if kind == ROW_WISE and shard_ranks != list(range(task.num_devices)):
            raise InvalidPlacementError(
                f"TorchRec's plan shards table {t.name!r} row-wise in blocks of "
                f"{list(sizes)} rows on ranks {shard_ranks}; placements take block j on "
                f"rank j (ranks 0..{task.num_devices - 1})"
            )
        first = split.host * task.host_size
        if kind == TABLE_ROW_WISE and shard_ranks != list(range(first, first + len(sizes))):
            raise InvalidPlacementError(
                f"TorchRec's plan shards table {t.name!r} table-row-wise in blocks of "
                f"{list(sizes)} rows on ranks {shard_ranks}; placements take block j on "
                f"rank j of the host (ranks {first}..{first + task.host_size - 1})"
            )
        splits.append(split)
        device_of.extend(shard_ranks)
    placement = Placement(tuple(device_of), tuple(splits))
    placement.validate(task)
    return placement


def _split_of(
    table: int, kind: str, sizes: tuple[int, ...], ranks: Sequence[int], task: Task
) -> TableSplit:
    """The split of a column-, row- or table-row-wise TorchRec sharding (unchecked); a
    table-row split's host is its first rank's."""
    if kind == COLUMN_WISE:
        return TableSplit(table, "column", sizes)
    if kind == ROW_WISE:
        return TableSplit(table, "row", sizes)
    return TableSplit(table, "table_row", sizes, host=ranks[0] // task.host_size)
