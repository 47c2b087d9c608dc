"""DreamShard inside TorchRec: :class:`DreamShardPlanner` drops in where a TorchRec user
calls ``EmbeddingShardingPlanner(topology=...).plan(model, sharders)``: it reads the
model's ``EmbeddingBagCollection`` tables, combines them with per-table statistics, places
them with a trained DreamShard model and returns a ``ShardingPlan`` (tables whole or
split as the placement has them; row blocks over one host's ranks where the topology
has two hosts or more).

(TorchRec's planner inside DreamShard is the placer ``torchrec``, in
``dreamshard.placers.torchrec``; TorchRec's estimates of placements are in
``dreamshard.evaluation.torchrec_estimates``.)

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
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from dreamshard.constants import DEFAULT_SEED, DEVICE_TYPES
from dreamshard.data.constraints import ConstraintSpec, parse_constraints
from dreamshard.data.tables import (
    DEFAULT_POOLING_FACTOR,
    DEFAULT_ZIPF_SKEW,
    default_access_histograms,
    table_from_record,
)
from dreamshard.data.tasks import make_task
from dreamshard.data.topology import load_topology
from dreamshard.errors import InputError
from dreamshard.torchrec.plan import (
    ModelTable,
    PlanSpec,
    build_sharding_plan,
    model_tables,
    module_paths,
    planned_tables,
)
from dreamshard.types import Device, Placement, TableSpec, Task, divides_into_hosts

if TYPE_CHECKING:
    import torch.distributed as dist
    from torch import nn
    from torchrec.distributed.types import ModuleSharder, ShardingPlan

    from dreamshard.method.checkpoint import DreamShardModel

logger = logging.getLogger(__name__)

# The defaults for a table without statistics are those of table files
# (dreamshard.data.tables: DEFAULT_POOLING_FACTOR, TorchRec's own planner default, and a
# Zipf(DEFAULT_ZIPF_SKEW) access histogram), so a table means the same in both.


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
    from dreamshard.data.features import table_from_ids

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
        hist = list(default_access_histograms([table.rows], [pooling])[0])
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
    """Devices to plan for, each with its own memory.

    Attributes:
        memory_bytes: Memory each rank has for embedding tables (weights and optimizer
            state), one entry per rank (a list is accepted).
        compute_device: ``"cuda"`` or ``"cpu"``: where the tables will live.
        local_world_size: Ranks per host (default: all on one host).
        names: A name per rank (default ``rank0``, ``rank1``, ...), as a topology file
            gives them.
    """

    memory_bytes: tuple[int, ...]
    compute_device: str = "cuda"
    local_world_size: int | None = None
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.names is not None:
            object.__setattr__(self, "names", tuple(self.names))
        if not self.memory_bytes:
            raise InputError("topology: needs at least one rank")
        for k, m in enumerate(self.memory_bytes):
            if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m <= 0:
                raise InputError(
                    f"topology: rank {k}: memory must be a positive integer, got {m!r}"
                )
        # A list, or numpy integers, become the tuple of ints the field promises.
        object.__setattr__(self, "memory_bytes", tuple(int(m) for m in self.memory_bytes))
        if self.compute_device not in DEVICE_TYPES:
            raise InputError(
                f"topology: compute device {self.compute_device!r}, use one of "
                f"{', '.join(DEVICE_TYPES)}"
            )
        if self.names is not None:
            if len(self.names) != len(self.memory_bytes):
                raise InputError(
                    f"topology: {len(self.names)} names for {len(self.memory_bytes)} ranks"
                )
            twice = [n for k, n in enumerate(self.names) if n in self.names[:k]]
            if twice:
                raise InputError(f"topology: rank name {twice[0]!r} is given twice")

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
    def from_devices(
        cls,
        devices: Sequence[Device],
        compute_device: str = "cuda",
        local_world_size: int | None = None,
    ) -> PlannerTopology:
        """One rank per device, in order, with its memory and name."""
        return cls(
            tuple(d.memory_bytes for d in devices),
            compute_device,
            local_world_size,
            tuple(d.name for d in devices),
        )

    @classmethod
    def from_file(
        cls, path: str | Path, compute_device: str = "cuda", local_world_size: int | None = None
    ) -> PlannerTopology:
        """From a topology file (:func:`dreamshard.data.topology.load_topology`)."""
        return cls.from_devices(load_topology(path), compute_device, local_world_size)

    @classmethod
    def from_torchrec(cls, topology: Any) -> PlannerTopology:
        """From a TorchRec ``Topology``: each device's own HBM on ``cuda``, DDR on ``cpu``."""
        device = str(topology.compute_device)
        if device not in DEVICE_TYPES:
            raise InputError(f"topology: compute device {device!r} is not supported")
        memory = tuple(
            int(d.storage.hbm if device == "cuda" else d.storage.ddr) for d in topology.devices
        )
        return cls(memory, device, int(topology.local_world_size))

    @property
    def devices_per_host(self) -> int | None:
        """Ranks per host for the task (``local_world_size`` where it splits the ranks
        into two hosts or more, evenly); None: one host."""
        local = self.local_world_size
        if local is None or local >= self.world_size:
            return None
        return local if divides_into_hosts(local, self.world_size) else None

    def devices(self) -> tuple[Device, ...]:
        names = self.names or tuple(f"rank{k}" for k in range(self.world_size))
        return tuple(Device(n, m) for n, m in zip(names, self.memory_bytes, strict=True))


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
    from dreamshard.torchrec.plan import embedding_bag_collections

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
        spec: The plan, ready for :func:`dreamshard.torchrec.plan.save_plan`.
        defaulted: Table name -> statistics that fell back to defaults.
    """

    task: Task
    placement: Placement
    spec: PlanSpec
    defaulted: dict[str, list[str]] = field(default_factory=dict)


class DreamShardPlanner:
    """A trained DreamShard model as a TorchRec sharding planner.

    Use it where ``EmbeddingShardingPlanner`` would be used::

        planner = DreamShardPlanner(topology, table_stats=stats)  # the packaged model
        plan = planner.collective_plan(model, sharders)   # or planner.plan(model)
        model = DistributedModelParallel(model, plan=plan, ...)

    Args:
        topology: A :class:`PlannerTopology` or a TorchRec ``Topology`` (world size and
            per-rank memory: HBM on ``cuda``, DDR on ``cpu``).
        model: A trained model folder (``dreamshard train``), a loaded model, or
            ``"packaged"`` (default): the pretrained model packaged for ``profile``.
        table_stats: Table name -> :class:`TableStats`. ``None``: every table gets the
            defaults (one warning). Given: every table of the model must appear, and no
            other name, unless ``allow_missing_stats`` (then missing ones get defaults).
        optimizer: ``"sgd"`` or ``"rowwise_adagrad"`` to force the optimizer counted in
            memory; ``None`` detects it (:func:`detect_fused_optimizer`).
        samples: Extra placements sampled from the policy and rated by the cost network.
        seed: Seed of that sampling and of the search.
        allow_missing_stats: Accept ``table_stats`` that miss some tables.
        constraints: Tables to pin to ranks, keep together or apart: a
            :class:`~dreamshard.data.constraints.ConstraintSpec`, or the same as a
            constraints file's JSON (``{"pin": {"user_id": 0}, "together": [...],
            "apart": [...]}``; devices by rank or by ``PlannerTopology`` name).
        search: ``"none"`` (the paper's greedy policy), ``"greedy"`` or ``"local"``
            (default; ``placers/dreamshard.py``).
        time_budget_ms: Cap on the search time (None: bounded by effort only).
        profile: Hardware profile whose packaged model ``model="packaged"`` means.
        sharding: ``"auto"`` (default: split a table where that lowers the predicted
            cost or is needed to fit), ``"column"``, ``"row"`` or ``"table"`` (whole
            tables only).
    """

    def __init__(
        self,
        topology: PlannerTopology | Any,
        model: str | Path | DreamShardModel = "packaged",
        table_stats: Mapping[str, TableStats] | None = None,
        optimizer: str | None = None,
        samples: int = 0,
        seed: int = DEFAULT_SEED,
        allow_missing_stats: bool = False,
        constraints: ConstraintSpec | Mapping[str, Any] | None = None,
        search: str = "local",
        time_budget_ms: float | None = None,
        profile: str = "cpu-zen4",
        sharding: str = "auto",
    ) -> None:
        from dreamshard.method.checkpoint import DreamShardModel, resolve_model_dir
        from dreamshard.placers.dreamshard import DreamShardPlacer

        self.topology = (
            topology
            if isinstance(topology, PlannerTopology)
            else PlannerTopology.from_torchrec(topology)
        )
        loaded = (
            model
            if isinstance(model, DreamShardModel)
            else DreamShardModel.load(resolve_model_dir(model, profile))
        )
        if samples < 0:
            raise InputError(f"samples must be >= 0, got {samples}")
        spec = (
            constraints
            if constraints is None or isinstance(constraints, ConstraintSpec)
            else parse_constraints(constraints, "constraints")
        )
        self._placer = DreamShardPlacer(
            loaded,
            samples=samples,
            seed=seed,
            constraints=spec,
            search=search,
            time_budget_ms=time_budget_ms,
            sharding=sharding,
        )
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
        task = make_task(
            "model", specs, self.topology.devices(), optimizer, self.topology.devices_per_host
        )
        placement = self._placer.place(task)
        # Planned tables come in the task's table order, which is the model's.
        planned = planned_tables(task, placement)
        modules = {
            path: tuple(p for t, p in zip(tables, planned, strict=True) if t.module_path == path)
            for path in module_paths(tables)
        }
        spec = PlanSpec(
            world_size=self.topology.world_size,
            modules=modules,
            source={"planner": "dreamshard", "optimizer": optimizer},
            local_world_size=task.devices_per_host,
        )
        self.last = PlanResult(task, placement, spec, defaulted)
        return self.last

    def plan(
        self, module: nn.Module, sharders: Sequence[ModuleSharder[Any]] | None = None
    ) -> ShardingPlan:
        """A fused-kernel ``ShardingPlan`` for every collection in ``module``: table-wise,
        column-wise, row-wise or table-row-wise per table as the placement splits it
        (built by :func:`dreamshard.torchrec.plan.build_sharding_plan`).

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
