"""DreamShard inside TorchRec, and TorchRec's planner inside DreamShard.

- :class:`DreamShardPlanner` drops in where a TorchRec user calls
  ``EmbeddingShardingPlanner(topology=...).plan(model, sharders)``: it reads the model's
  ``EmbeddingBagCollection`` tables, combines them with per-table statistics, places
  them with a trained DreamShard model and returns a table-wise ``ShardingPlan``.
- :class:`TorchRecPlacer` (placer name ``torchrec``) runs TorchRec's
  ``EmbeddingShardingPlanner`` restricted to table-wise sharding and the fused kernel,
  under the same per-device memory, and turns its plan back into a placement, so every
  comparison includes what users would otherwise pick.
- :func:`torchrec_estimate` rates any placement with TorchRec's own cost and memory
  estimators (``EmbeddingPerfEstimator``, ``EmbeddingStorageEstimator``), for reports
  that show TorchRec's estimate beside measured costs.

Memory accounting of the planner (what "fits" means): a table takes its weights,
``rows x dim x bytes per element`` (FP32: 4, FP16: 2), plus the state TorchRec's fused
optimizer keeps for it in FBGEMM's TBE: none for SGD (``EXACT_SGD``), one FP32 per row
for row-wise Adagrad (``EXACT_ROWWISE_ADAGRAD``). Other fused optimizers (Adam, ...)
are rejected rather than mis-counted. Not counted: the lookup's input and output
buffers, the all-to-all buffers and the dense model; give the planner the memory left
for embedding tables (TorchRec's own planner also counts the buffers, so on the same
memory it can reject placements this planner accepts).

TorchRec is imported lazily, inside these classes and functions.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED
from dreamshard.errors import InfeasiblePlacementError, InputError, InvalidPlacementError
from dreamshard.tables import table_from_record
from dreamshard.tasks import make_task
from dreamshard.torchrec_plan import (
    DEVICE_TYPES,
    FUSED_KERNEL,
    ModelTable,
    PlannedTable,
    PlanSpec,
    build_sharding_plan,
    model_tables,
    module_paths,
)
from dreamshard.types import Device, Placement, StageCosts, TableSpec, Task

if TYPE_CHECKING:
    import torch.distributed as dist
    from torch import nn
    from torchrec.distributed.types import ModuleSharder, ShardingPlan

    from dreamshard.evaluate import Evaluation
    from dreamshard.model import DreamShardModel

logger = logging.getLogger(__name__)

#: Pooling factor assumed for a table without statistics: TorchRec's own planner default
#: (``torchrec.distributed.planner.constants.POOLING_FACTOR``), so both planners assume
#: the same when told nothing.
DEFAULT_POOLING_FACTOR = 1.0

#: Zipf exponent of the access histogram assumed for a table without one: the middle of
#: the synthetic pools' range (``dreamshard.synthetic.SKEW_RANGE``, 0 to 1.2).
DEFAULT_ZIPF_SKEW = 0.6

#: Sharding type and kernel DreamShard plans use (a whole table on one rank, fused TBE).
TABLE_WISE = "table_wise"


# -- statistics -------------------------------------------------------------------------


@dataclass(frozen=True)
class TableStats:
    """What is known about how one table is accessed.

    Give any of these; what is missing gets a documented default (with a warning):
    pooling factor :data:`DEFAULT_POOLING_FACTOR`, histogram the expected one of Zipf
    ids with exponent :data:`DEFAULT_ZIPF_SKEW` (``synthetic.expected_access_histograms``).

    Attributes:
        pooling_factor: Mean ids per sample (bag length).
        access_hist: 17-bin reuse histogram of one batch (METHOD.md section 2).
        ids: A sample of one batch of ids, ``(indices, offsets)`` in FBGEMM layout; gives
            the pooling factor and histogram where those are not given (ideally a batch
            of the planner's global batch size, since histograms depend on it).
    """

    pooling_factor: float | None = None
    access_hist: Sequence[float] | None = None
    ids: tuple[npt.ArrayLike, npt.ArrayLike] | None = None


def table_spec(table: ModelTable, stats: TableStats | None) -> tuple[TableSpec, list[str]]:
    """A model table's :class:`TableSpec` from its statistics.

    Returns:
        The spec, and the names of the statistics that fell back to defaults.

    Raises:
        InputError: naming the table and the statistic, for malformed statistics.
    """
    from dreamshard.features import table_from_ids
    from dreamshard.synthetic import expected_access_histograms

    stats = stats or TableStats()
    pooling = stats.pooling_factor
    hist = None if stats.access_hist is None else list(stats.access_hist)
    if stats.ids is not None and (pooling is None or hist is None):
        indices, offsets = stats.ids
        try:
            from_ids = table_from_ids(
                table.name, indices, offsets, rows=table.rows, dim=table.dim, dtype=table.dtype
            )
        except ValueError as err:
            raise InputError(f"statistics of table {table.name!r}: ids: {err}") from None
        pooling = from_ids.pooling_factor if pooling is None else pooling
        hist = list(from_ids.access_hist) if hist is None else hist
    defaulted = []
    if pooling is None:
        pooling = DEFAULT_POOLING_FACTOR
        defaulted.append("pooling_factor")
    if hist is None:
        if pooling <= 0:
            raise InputError(
                f"statistics of table {table.name!r}: field 'pooling_factor' must be "
                f"positive, got {pooling}"
            )
        expected = expected_access_histograms([table.rows], [pooling], [DEFAULT_ZIPF_SKEW])
        hist = [float(x) for x in expected[0]]
        defaulted.append("access_hist")
    record = {
        "name": table.name,
        "rows": table.rows,
        "dim": table.dim,
        "pooling_factor": pooling,
        "dtype": table.dtype,
        "access_hist": hist,
    }
    return table_from_record(record, "statistics"), defaulted


# -- topology ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannerTopology:
    """Devices to plan for.

    Attributes:
        memory_bytes: Memory each rank has for embedding tables (weights and optimizer
            state), one entry per rank.
        compute_device: ``"cuda"`` or ``"cpu"``: where the tables will live.
        local_world_size: Ranks per host (default: all on one host).
    """

    memory_bytes: tuple[int, ...]
    compute_device: str = "cuda"
    local_world_size: int | None = None

    def __post_init__(self) -> None:
        if not self.memory_bytes:
            raise InputError("topology: needs at least one rank")
        if any(m <= 0 for m in self.memory_bytes):
            raise InputError("topology: every rank's memory must be positive")
        if self.compute_device not in DEVICE_TYPES:
            raise InputError(
                f"topology: compute device {self.compute_device!r}, use one of "
                f"{', '.join(DEVICE_TYPES)}"
            )

    @property
    def world_size(self) -> int:
        return len(self.memory_bytes)

    @classmethod
    def uniform(
        cls, world_size: int, memory_bytes: int, compute_device: str = "cuda"
    ) -> PlannerTopology:
        """``world_size`` ranks with ``memory_bytes`` each."""
        if world_size < 1:
            raise InputError(f"topology: world size must be at least 1, got {world_size}")
        return cls((memory_bytes,) * world_size, compute_device)

    @classmethod
    def from_torchrec(cls, topology: Any) -> PlannerTopology:
        """From a TorchRec ``Topology``: HBM per device on ``cuda``, DDR on ``cpu``."""
        device = str(topology.compute_device)
        if device not in DEVICE_TYPES:
            raise InputError(f"topology: compute device {device!r} is not supported")
        memory = tuple(
            int(d.storage.hbm if device == "cuda" else d.storage.ddr) for d in topology.devices
        )
        return cls(memory, device, int(topology.local_world_size))

    def devices(self) -> tuple[Device, ...]:
        return tuple(Device(f"rank{k}", m) for k, m in enumerate(self.memory_bytes))


# -- fused optimizer --------------------------------------------------------------------


def _optimizer_from_class(cls: type) -> str | None:
    import torch
    from torchrec import optim as trec_optim

    if cls in (torch.optim.SGD, trec_optim.SGD):
        return "sgd"
    if cls is trec_optim.RowWiseAdagrad:
        return "rowwise_adagrad"
    return None


def _optimizer_from_fused(optimizer: Any) -> str | None:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    names = {
        EmbOptimType.EXACT_SGD: "sgd",
        EmbOptimType.SGD: "sgd",
        EmbOptimType.EXACT_ROWWISE_ADAGRAD: "rowwise_adagrad",
        EmbOptimType.ROWWISE_ADAGRAD: "rowwise_adagrad",
    }
    return names.get(optimizer)


def detect_fused_optimizer(
    model: nn.Module, sharders: Sequence[ModuleSharder[Any]] | None = None
) -> str:
    """The fused optimizer TorchRec will use for the model's tables, as a dreamshard name.

    Looks at ``apply_optimizer_in_backward`` on the tables' weights, then at the
    sharders' ``fused_params["optimizer"]``; with neither, TorchRec's fused kernel
    defaults to ``EXACT_SGD`` (``"sgd"``, no optimizer state).

    Raises:
        InputError: for a fused optimizer whose state is not accounted for (Adam, ...).
    """
    from dreamshard.torchrec_plan import embedding_bag_collections

    for path, ebc in embedding_bag_collections(model).items():
        for name, param in ebc.named_parameters():
            classes = getattr(param, "_optimizer_classes", None)
            if classes:
                found = _optimizer_from_class(classes[0])
                if found is None:
                    raise InputError(
                        f"module {path!r}: parameter {name!r} uses optimizer "
                        f"{classes[0].__name__}, whose state the planner does not count "
                        f"(supported: SGD, RowWiseAdagrad)"
                    )
                return found
    for sharder in sharders or ():
        fused = getattr(sharder, "fused_params", None) or {}
        if "optimizer" in fused:
            found = _optimizer_from_fused(fused["optimizer"])
            if found is None:
                raise InputError(
                    f"sharder {type(sharder).__name__}: fused optimizer {fused['optimizer']} "
                    f"is not supported (supported: EXACT_SGD, EXACT_ROWWISE_ADAGRAD)"
                )
            return found
    return "sgd"


# -- the drop-in planner ----------------------------------------------------------------


@dataclass
class PlanResult:
    """What the last :meth:`DreamShardPlanner.plan` call decided (for inspection).

    Attributes:
        task: The tables (with statistics) and devices, as DreamShard saw them.
        placement: The placement; device ``k`` is rank ``k``.
        spec: The plan, ready for :func:`dreamshard.torchrec_plan.save_plan`.
        defaulted: Table name -> statistics that fell back to defaults.
    """

    task: Task
    placement: Placement
    spec: PlanSpec
    defaulted: dict[str, list[str]] = field(default_factory=dict)


class DreamShardPlanner:
    """A trained DreamShard model as a TorchRec sharding planner.

    Use it where ``EmbeddingShardingPlanner`` would be used::

        planner = DreamShardPlanner(topology, "runs/demo/model", table_stats=stats)
        plan = planner.collective_plan(model, sharders)   # or planner.plan(model)
        model = DistributedModelParallel(model, plan=plan, ...)

    Args:
        topology: A :class:`PlannerTopology` or a TorchRec ``Topology`` (world size and
            per-rank memory: HBM on ``cuda``, DDR on ``cpu``).
        model: A trained model folder (``dreamshard train``) or a loaded model.
        table_stats: Table name -> :class:`TableStats`. ``None``: every table gets the
            defaults (one warning). Given: every table of the model must appear, and no
            other name, unless ``allow_missing_stats`` (then missing ones get defaults).
        optimizer: ``"sgd"`` or ``"rowwise_adagrad"`` to force the optimizer counted in
            memory; ``None`` detects it (:func:`detect_fused_optimizer`).
        samples: Extra placements sampled from the policy and rated by the cost network.
        seed: Seed of that sampling.
        allow_missing_stats: Accept ``table_stats`` that miss some tables.
    """

    def __init__(
        self,
        topology: PlannerTopology | Any,
        model: str | Path | DreamShardModel,
        table_stats: Mapping[str, TableStats] | None = None,
        optimizer: str | None = None,
        samples: int = 0,
        seed: int = DEFAULT_SEED,
        allow_missing_stats: bool = False,
    ) -> None:
        from dreamshard.model import DreamShardModel
        from dreamshard.search import DreamShardPlacer

        self.topology = (
            topology
            if isinstance(topology, PlannerTopology)
            else PlannerTopology.from_torchrec(topology)
        )
        loaded = model if isinstance(model, DreamShardModel) else DreamShardModel.load(model)
        if samples < 0:
            raise InputError(f"samples must be >= 0, got {samples}")
        self._placer = DreamShardPlacer(loaded, samples=samples, seed=seed)
        self.table_stats = dict(table_stats) if table_stats is not None else None
        self.optimizer = optimizer
        self.allow_missing_stats = allow_missing_stats
        self.last: PlanResult | None = None

    def place(
        self, model: nn.Module, sharders: Sequence[ModuleSharder[Any]] | None = None
    ) -> PlanResult:
        """Place the model's tables; returns the task, placement and plan spec.

        Raises:
            InputError: statistics that do not match the model, an unsupported optimizer,
                a table larger than every rank.
            InfeasiblePlacementError: the tables do not fit in the ranks' memory.
        """
        tables = model_tables(model)
        specs, defaulted = self._specs(tables)
        optimizer = self.optimizer or detect_fused_optimizer(model, sharders)
        task = make_task("model", specs, self.topology.devices(), optimizer)
        placement = self._placer.place(task)
        modules = {
            path: tuple(
                PlannedTable(t.name, d, t.rows, t.dim)
                for t, d in zip(tables, placement.device_of, strict=True)
                if t.module_path == path
            )
            for path in module_paths(tables)
        }
        spec = PlanSpec(
            world_size=self.topology.world_size,
            modules=modules,
            source={"planner": "dreamshard", "optimizer": optimizer},
        )
        self.last = PlanResult(task, placement, spec, defaulted)
        return self.last

    def plan(
        self, module: nn.Module, sharders: Sequence[ModuleSharder[Any]] | None = None
    ) -> ShardingPlan:
        """A table-wise, fused-kernel ``ShardingPlan`` for every collection in ``module``.

        Raises:
            InputError: as :meth:`place`, or a job whose world size is not the topology's.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            self._check_world_size(dist.get_world_size())
        result = self.place(module, sharders)
        return build_sharding_plan(
            result.spec,
            module,
            local_world_size=self.topology.local_world_size,
            device_type=self.topology.compute_device,
        )

    def collective_plan(
        self,
        module: nn.Module,
        sharders: Sequence[ModuleSharder[Any]] | None = None,
        pg: dist.ProcessGroup | None = None,
    ) -> ShardingPlan:
        """Plan on rank 0 and broadcast the plan, as TorchRec's planner does."""
        import torch.distributed as dist
        from torchrec.distributed.collective_utils import invoke_on_rank_and_broadcast_result

        group = pg if pg is not None else dist.GroupMember.WORLD
        self._check_world_size(dist.get_world_size(group))
        plan: ShardingPlan = invoke_on_rank_and_broadcast_result(
            group, 0, self.plan, module, sharders
        )
        return plan

    def _check_world_size(self, world_size: int) -> None:
        if world_size != self.topology.world_size:
            raise InputError(
                f"topology: world size {self.topology.world_size}, but the job runs on "
                f"{world_size} ranks"
            )

    def _specs(self, tables: Sequence[ModelTable]) -> tuple[list[TableSpec], dict[str, list[str]]]:
        stats = self.table_stats
        if stats is not None:
            names = {t.name for t in tables}
            unknown = sorted(set(stats) - names)
            if unknown:
                raise InputError(
                    f"statistics: table {unknown[0]!r} is not in the model (its tables: "
                    f"{', '.join(sorted(names)[:8])}{', ...' if len(names) > 8 else ''})"
                )
            missing = [t.name for t in tables if t.name not in stats]
            if missing and not self.allow_missing_stats:
                raise InputError(
                    f"statistics: the model's table {missing[0]!r} has no statistics "
                    f"({len(missing)} tables lack them; pass allow_missing_stats=True to use "
                    f"defaults)"
                )
        specs, defaulted = [], {}
        for t in tables:
            spec, missing_fields = table_spec(t, stats.get(t.name) if stats else None)
            specs.append(spec)
            if missing_fields:
                defaulted[t.name] = missing_fields
        if defaulted:
            fields = sorted({f for fs in defaulted.values() for f in fs})
            warnings.warn(
                f"DreamShardPlanner: {len(defaulted)} of {len(tables)} tables lack statistics "
                f"({', '.join(fields)}); assumed pooling factor {DEFAULT_POOLING_FACTOR} and a "
                f"Zipf({DEFAULT_ZIPF_SKEW}) access histogram where missing "
                f"(first: {next(iter(defaulted))!r})",
                stacklevel=3,
            )
        return specs, defaulted


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


def _sharders() -> list[Any]:
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    return [EmbeddingBagCollectionSharder()]


class TorchRecPlacer:
    """TorchRec's ``EmbeddingShardingPlanner`` (table-wise, fused kernel) as a placer.

    Args:
        compute_device: ``"cpu"`` (default; the package's measuring backends run on CPU)
            or ``"cuda"``: which hardware TorchRec's estimators assume.
        batch_size: Global batch size TorchRec's estimators assume.
    """

    name = "torchrec"

    def __init__(self, compute_device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if compute_device not in DEVICE_TYPES:
            raise InputError(f"compute device {compute_device!r}: use one of {DEVICE_TYPES}")
        self.compute_device = compute_device
        self.batch_size = batch_size

    def place(self, task: Task) -> Placement:
        from torchrec.distributed.planner.types import PlannerError

        planner = torchrec_planner(task, self.compute_device, self.batch_size)
        try:
            plan = planner.plan(task_module(task), _sharders())
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


# -- TorchRec's estimate of any placement -----------------------------------------------


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
    options = {o.name: o for o in enumerator.enumerate(task_module(task), _sharders())}
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
        JSON-ready: ``per_task`` (placer -> task -> TorchRec's estimated cost in ms),
        ``mean_estimate_ms`` and ``mean_measured_ms`` (placer -> mean over the tasks every
        placer placed), ``compute_device`` and ``batch_size``.
    """
    by_name = {t.name: t for t in tasks}
    per_task: dict[str, dict[str, float]] = {p: {} for p in evaluation.placers}
    for r in evaluation.results:
        if r.placement is not None:
            estimate = torchrec_estimate(by_name[r.task], r.placement, compute_device, batch_size)
            per_task[r.placer][r.task] = estimate.cost_ms
    common = evaluation.common_tasks()
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
