"""Export: a placement as a TorchRec ``ShardingPlan``, and the plan file format.

A placement puts each table on one device; in TorchRec terms that is *table-wise*
sharding with the *fused* kernel (FBGEMM's TBE with the optimizer fused into backward),
each table on the rank of its device (device ``k`` of a task is rank ``k``). The plan is
built with TorchRec's public helpers ``construct_module_sharding_plan`` and
``table_wise(rank=...)``, so what ``DistributedModelParallel`` receives is exactly what
TorchRec's own planner would hand it.

Plan file (JSON), written by :func:`save_plan` and ``dreamshard export``::

    {
      "format": "dreamshard-torchrec-plan", "version": 1,
      "world_size": 4,
      "modules": {
        "sparse.ebc": {"tables": [{"name": "t0", "rank": 2, "rows": 1000, "dim": 16}, ...]}
      },
      "source": {...}                       # optional: where the placement came from
    }

Module paths are the fully qualified names of the ``EmbeddingBagCollection`` modules in
the model handed to ``DistributedModelParallel`` (``""`` when the model *is* the
collection). Rows and dims are kept so a plan for another model is detected on loading.

TorchRec is imported only inside the functions that build plans, so reading and writing
plan files (and the CLI's start-up) stay light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamshard.constants import DEVICE_TYPES
from dreamshard.errors import InputError, InvalidPlacementError
from dreamshard.evaluation.placement_file import read_placement_file
from dreamshard.fileio import read_json, write_json
from dreamshard.placers.torchrec import FUSED_KERNEL
from dreamshard.types import Placement, Task

if TYPE_CHECKING:
    from torch import nn
    from torchrec.distributed.types import ShardingPlan

PLAN_FORMAT = "dreamshard-torchrec-plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class PlannedTable:
    """One table of a plan: its rank and the shape it was planned for.

    Attributes:
        name: Table name (the ``EmbeddingBagConfig`` name).
        rank: Rank (device index) holding the whole table.
        rows: Rows the table had when planned (``num_embeddings``).
        dim: Embedding dimension it had when planned.
    """

    name: str
    rank: int
    rows: int
    dim: int


@dataclass(frozen=True)
class PlanSpec:
    """A table-wise plan for one or more embedding-bag collections of one model.

    Attributes:
        world_size: Number of ranks the plan is for.
        modules: Module path -> the tables of that collection, in model order.
        source: Free-form facts about where the plan came from (placer, task, files).
    """

    world_size: int
    modules: Mapping[str, tuple[PlannedTable, ...]]
    source: Mapping[str, Any]

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise InputError(f"plan: world_size must be at least 1, got {self.world_size}")
        for path, tables in self.modules.items():
            seen: set[str] = set()
            for t in tables:
                if t.name in seen:
                    raise InputError(f"plan: module {path!r}: table {t.name!r} appears twice")
                seen.add(t.name)
                if not 0 <= t.rank < self.world_size:
                    raise InputError(
                        f"plan: module {path!r}: table {t.name!r} is on rank {t.rank}, the "
                        f"plan has ranks 0..{self.world_size - 1}"
                    )

    def ranks(self, module_path: str) -> dict[str, int]:
        """Table name -> rank for one module."""
        return {t.name: t.rank for t in self.modules[module_path]}


def plan_from_placement(
    task: Task,
    placement: Placement,
    module_path: str = "",
    source: Mapping[str, Any] | None = None,
) -> PlanSpec:
    """The plan that puts each table of ``task`` on the rank of its device.

    Args:
        task: The task the placement is for; device ``k`` becomes rank ``k``.
        placement: A valid placement of ``task`` (checked).
        module_path: Path of the ``EmbeddingBagCollection`` in the user's model.
        source: Facts to record in the plan file.

    Raises:
        InvalidPlacementError: if the placement does not fit the task.
    """
    placement.validate(task)
    tables = tuple(
        PlannedTable(name=t.name, rank=d, rows=t.rows, dim=t.dim)
        for t, d in zip(task.tables, placement.device_of, strict=True)
    )
    return PlanSpec(
        world_size=task.num_devices, modules={module_path: tables}, source=dict(source or {})
    )


def plan_from_placement_file(
    path: str | Path, tables_path: str | Path | None = None, module_path: str = ""
) -> PlanSpec:
    """The plan of a placement file written by ``dreamshard place --out``.

    Args:
        path: The placement file (read with
            :func:`dreamshard.evaluation.placement_file.read_placement_file`; its
            ``placement``, ``devices`` and ``tables_file`` fields are used).
        tables_path: The table file the placement was made for; default: the file the
            placement names in ``tables_file`` (as written, else relative to the
            placement file's folder).
        module_path: Path of the ``EmbeddingBagCollection`` in the user's model.

    Raises:
        InputError: a bad file, or a placement that does not match the tables, naming
            the file and the table or field.
    """
    from dreamshard.data.tables import load_tables
    from dreamshard.data.tasks import make_task

    where = str(path)
    record = read_placement_file(path)
    names = record.placement
    devices = list(record.devices)
    if tables_path is None:
        named = record.tables_file
        if named is None:
            raise InputError(f"{where}: no field 'tables_file': pass the table file (--tables)")
        tables_path = _named_tables_file(named, Path(path), where)
    tables = load_tables(tables_path)
    known = {t.name for t in tables}
    for name in names:
        if name not in known:
            raise InputError(f"{where}: table {name!r} is placed but not in {tables_path}")
    rank_of = {d.name: k for k, d in enumerate(devices)}
    device_of = []
    for t in tables:
        if t.name not in names:
            raise InputError(f"{where}: table {t.name!r} of {tables_path} is not placed")
        if names[t.name] not in rank_of:
            raise InputError(
                f"{where}: table {t.name!r} is on device {names[t.name]!r}, which is not in "
                f"'devices'"
            )
        device_of.append(rank_of[names[t.name]])
    task = make_task(
        record.task if record.task is not None else Path(tables_path).stem, tables, devices
    )
    source = {
        "placement_file": where,
        "tables_file": str(tables_path),
        "placer": record.placer,
        "task": task.name,
    }
    try:
        return plan_from_placement(task, Placement(tuple(device_of)), module_path, source)
    except InvalidPlacementError as err:
        raise InputError(f"{where}: {err}") from None


def _named_tables_file(named: str, placement_path: Path, where: str) -> Path:
    """The table file a placement file names: as written (absolute, or relative to the
    working folder, as files before absolute names have it), else relative to the
    placement file's folder (files moved together with their tables)."""
    candidates = [Path(named), placement_path.parent / named]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(
        f"{where}: field 'tables_file': {named}: file not found (also looked in "
        f"{placement_path.parent}); pass the table file with --tables"
    )


# -- plan files -------------------------------------------------------------------------


def plan_to_json(spec: PlanSpec) -> dict[str, Any]:
    """The JSON payload of a plan file."""
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "world_size": spec.world_size,
        "compute_kernel": FUSED_KERNEL,
        "sharding_type": "table_wise",
        "modules": {
            path: {"tables": [vars(t) for t in tables]} for path, tables in spec.modules.items()
        },
        "source": dict(spec.source),
    }


def save_plan(path: str | Path, spec: PlanSpec) -> None:
    """Write a plan file (JSON), atomically."""
    write_json(path, plan_to_json(spec))


def load_plan_spec(path: str | Path) -> PlanSpec:
    """Read and validate a plan file written by :func:`save_plan`.

    Raises:
        InputError: naming the file and the bad field, module or table.
    """
    where = str(path)
    payload = read_json(path)
    if not isinstance(payload, dict) or payload.get("format") != PLAN_FORMAT:
        raise InputError(f"{where}: not a plan file (field 'format' must be {PLAN_FORMAT!r})")
    if payload.get("version") != PLAN_VERSION:
        raise InputError(
            f"{where}: plan file version {payload.get('version')!r}, this program reads "
            f"version {PLAN_VERSION}"
        )
    world_size = _int_field(payload, "world_size", where)
    modules_raw = payload.get("modules")
    if not isinstance(modules_raw, dict) or not modules_raw:
        raise InputError(f"{where}: field 'modules' must be a non-empty object")
    modules: dict[str, tuple[PlannedTable, ...]] = {}
    for module_path, module in modules_raw.items():
        loc = f"{where}: modules[{module_path!r}]"
        records = module.get("tables") if isinstance(module, dict) else None
        if not isinstance(records, list) or not records:
            raise InputError(f"{loc}: field 'tables' must be a non-empty list")
        tables = []
        for i, record in enumerate(records):
            if not isinstance(record, dict) or not isinstance(record.get("name"), str):
                raise InputError(f"{loc}: tables[{i}]: field 'name' is missing")
            tloc = f"{loc}: table {record['name']!r}"
            tables.append(
                PlannedTable(
                    name=record["name"],
                    rank=_int_field(record, "rank", tloc, minimum=0),
                    rows=_int_field(record, "rows", tloc),
                    dim=_int_field(record, "dim", tloc),
                )
            )
        modules[str(module_path)] = tuple(tables)
    source = payload.get("source", {})
    try:
        return PlanSpec(
            world_size=world_size,
            modules=modules,
            source=source if isinstance(source, dict) else {},
        )
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


def _int_field(record: Mapping[str, Any], field: str, where: str, minimum: int = 1) -> int:
    value = record.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{where}: field {field!r} must be an integer, got {value!r}")
    if value < minimum:
        raise InputError(f"{where}: field {field!r} must be >= {minimum}, got {value}")
    return value


# -- building TorchRec plans ------------------------------------------------------------


@dataclass(frozen=True)
class ModelTable:
    """One table of an ``EmbeddingBagCollection`` in a user's model.

    Attributes:
        module_path: Path of its collection in the model.
        name: Table name.
        rows: ``num_embeddings``.
        dim: ``embedding_dim``.
        dtype: ``"fp32"`` or ``"fp16"`` (from the config's ``data_type``).
        feature_names: The features (id lists) that look up this table.
    """

    module_path: str
    name: str
    rows: int
    dim: int
    dtype: str
    feature_names: tuple[str, ...]


def embedding_bag_collections(model: nn.Module) -> dict[str, nn.Module]:
    """Module path -> every ``EmbeddingBagCollection`` in ``model`` (the model itself: ``""``).

    Raises:
        InputError: if there is none.
    """
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    found = {
        path: module
        for path, module in model.named_modules()
        if isinstance(module, EmbeddingBagCollection)
    }
    if not found:
        raise InputError(
            f"the model ({type(model).__name__}) holds no EmbeddingBagCollection to shard"
        )
    return found


def model_tables(model: nn.Module) -> list[ModelTable]:
    """The tables of every ``EmbeddingBagCollection`` in ``model``, in model order.

    Raises:
        InputError: no collection, a table name used twice, or an unsupported data type.
    """
    from torchrec.modules.embedding_configs import DataType

    dtypes = {DataType.FP32: "fp32", DataType.FP16: "fp16"}
    out: list[ModelTable] = []
    seen: dict[str, str] = {}
    for path, ebc in embedding_bag_collections(model).items():
        for config in ebc.embedding_bag_configs():  # type: ignore[operator]
            if config.name in seen:
                raise InputError(
                    f"table {config.name!r} appears in modules {seen[config.name]!r} and "
                    f"{path!r}: table names must be unique in the model"
                )
            seen[config.name] = path
            if config.data_type not in dtypes:
                raise InputError(
                    f"table {config.name!r}: data type {config.data_type} is not supported "
                    f"(use FP32 or FP16)"
                )
            out.append(
                ModelTable(
                    module_path=path,
                    name=config.name,
                    rows=int(config.num_embeddings),
                    dim=int(config.embedding_dim),
                    dtype=dtypes[config.data_type],
                    feature_names=tuple(config.feature_names),
                )
            )
    return out


def check_plan_fits_model(spec: PlanSpec, model: nn.Module, world_size: int | None) -> None:
    """Raise InputError unless ``spec`` is a plan for exactly this model and world size.

    Checks: the world size; every collection of the model is in the plan and the plan
    names no other module; each collection's tables are exactly the plan's tables, with
    the rows and dims they were planned for.
    """
    if world_size is not None and world_size != spec.world_size:
        raise InputError(
            f"plan: field 'world_size' is {spec.world_size} but the job runs on {world_size} ranks"
        )
    tables = model_tables(model)
    paths = {t.module_path for t in tables}
    for path in spec.modules:
        if path not in paths:
            raise InputError(
                f"plan: module {path!r} is not an EmbeddingBagCollection of the model "
                f"(the model has {sorted(paths)})"
            )
    for path in sorted(paths):
        if path not in spec.modules:
            raise InputError(f"plan: the model's EmbeddingBagCollection {path!r} is not planned")
        planned = {t.name: t for t in spec.modules[path]}
        mine = {t.name: t for t in tables if t.module_path == path}
        for name, table in mine.items():
            if name not in planned:
                raise InputError(
                    f"plan: module {path!r}: the model's table {name!r} is not in the plan "
                    f"(a plan for another model?)"
                )
            p = planned[name]
            if (p.rows, p.dim) != (table.rows, table.dim):
                raise InputError(
                    f"plan: module {path!r}: table {name!r} was planned with {p.rows} rows x "
                    f"dim {p.dim}, the model has {table.rows} x {table.dim} (a plan for another "
                    f"model?)"
                )
        for name in planned:
            if name not in mine:
                raise InputError(
                    f"plan: module {path!r}: table {name!r} is planned but not in the model"
                )


def build_sharding_plan(
    spec: PlanSpec,
    model: nn.Module,
    world_size: int | None = None,
    local_world_size: int | None = None,
    device_type: str = "cpu",
) -> ShardingPlan:
    """The TorchRec ``ShardingPlan`` of ``spec`` for ``model`` (validated first).

    Each table gets ``table_wise(rank=..., compute_kernel="fused")``, assembled per
    collection by ``construct_module_sharding_plan``.

    Args:
        spec: The plan.
        model: The model that will be wrapped in ``DistributedModelParallel``.
        world_size: Ranks of the job, checked against the plan (None: not checked).
        local_world_size: Ranks per host (decides ``cuda:<local rank>``); default: all
            ranks on one host.
        device_type: ``"cpu"`` or ``"cuda"``.

    Raises:
        InputError: the plan does not fit the model or the world size, or a bad option.
    """
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
    from torchrec.distributed.types import ShardingPlan

    if device_type not in DEVICE_TYPES:
        raise InputError(f"device type {device_type!r}: use one of {', '.join(DEVICE_TYPES)}")
    local = local_world_size if local_world_size is not None else spec.world_size
    if not 1 <= local <= spec.world_size or spec.world_size % local:
        raise InputError(
            f"local world size {local} must divide the plan's world size {spec.world_size}"
        )
    check_plan_fits_model(spec, model, world_size)
    collections = embedding_bag_collections(model)
    plan: dict[str, Any] = {}
    for path, tables in spec.modules.items():
        plan[path] = construct_module_sharding_plan(
            collections[path],
            {t.name: table_wise(rank=t.rank, compute_kernel=FUSED_KERNEL) for t in tables},
            local_size=local,
            world_size=spec.world_size,
            device_type=device_type,
        )
    return ShardingPlan(plan=plan)


def load_sharding_plan(
    path: str | Path,
    model: nn.Module,
    world_size: int | None = None,
    local_world_size: int | None = None,
    device_type: str = "cpu",
) -> ShardingPlan:
    """Read a plan file and rebuild its ``ShardingPlan`` for ``model``.

    Raises:
        InputError: a bad file, or a plan for another model or world size; the message
            names the file and the table or field.
    """
    spec = load_plan_spec(path)
    try:
        return build_sharding_plan(spec, model, world_size, local_world_size, device_type)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None


def ranks_of_tables(plan: ShardingPlan) -> dict[str, dict[str, list[int]]]:
    """Module path -> table name -> ranks holding it, read back from a ``ShardingPlan``."""
    out: dict[str, dict[str, list[int]]] = {}
    for path, module_plan in plan.plan.items():
        out[path] = {name: list(sharding.ranks or []) for name, sharding in module_plan.items()}
    return out


def module_paths(tables: Sequence[ModelTable]) -> list[str]:
    """The distinct module paths of ``tables``, in order of first appearance."""
    return list(dict.fromkeys(t.module_path for t in tables))
