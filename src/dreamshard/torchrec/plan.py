"""Export: a placement as a TorchRec ``ShardingPlan``, and the plan file format.

A placement puts each table, or each shard of a split table, on one device; device ``k``
of a task is rank ``k``, and host ``h`` of a task with hosts of ``L`` devices holds ranks
``h * L .. h * L + L - 1`` (TorchRec's ``local_world_size``). In TorchRec terms a whole
table is *table-wise* sharding, a column split *column-wise* (shard ``j``: the ``j``-th
block of columns, on the rank of its device), a row split *row-wise* (TorchRec's training
layout: blocks of ``ceil(rows / world_size)`` rows over every rank, block ``j`` on rank
``j``) and a table-row split *table-row-wise* (blocks of ``ceil(rows / L)`` rows over the
ranks of one host, block ``j`` on its ``j``-th rank), all with the *fused* kernel (FBGEMM's
TBE with the optimizer fused into backward). The plan is built with TorchRec's public
helpers ``construct_module_sharding_plan``, ``table_wise(rank=)``, ``column_wise(ranks=,
size_per_rank=)``, ``row_wise()`` and ``table_row_wise(host_index=)``, so what
``DistributedModelParallel`` receives is what TorchRec's own planner would hand it.

Plan file (JSON), version 3, written by :func:`save_plan` and ``dreamshard export``::

    {
      "format": "dreamshard-torchrec-plan", "version": 3,
      "world_size": 4, "local_world_size": 2, "compute_kernel": "fused",
      "modules": {
        "sparse.ebc": {"tables": [
          {"name": "t0", "sharding": "table_wise", "rank": 1, "rows": 100, "dim": 8},
          {"name": "t1", "sharding": "column_wise", "ranks": [0, 3], "shard_dims": [8, 8],
           "rows": 60, "dim": 16},
          {"name": "t2", "sharding": "row_wise", "ranks": [0, 1, 2, 3],
           "shard_rows": [10, 10, 10, 10], "rows": 40, "dim": 8},
          {"name": "t3", "sharding": "table_row_wise", "ranks": [2, 3],
           "shard_rows": [20, 20], "rows": 40, "dim": 8}
        ]}
      },
      "source": {...}                       # optional: where the placement came from
    }

Column-wise shards are listed in column order (``ranks[j]`` holds ``shard_dims[j]``
columns; a rank may hold several); row-wise tables list every rank, in order, and
TorchRec's blocks; table-row-wise tables the ranks of their host, in order, and TorchRec's
blocks over ``local_world_size`` ranks. ``local_world_size`` is null for a plan made for
one host (any ranks per host then fit it); a plan that gives it refuses a job with other
ranks per host, and table-row-wise tables need it. Version 2 files (no
``local_world_size``, no table-row-wise tables) load as plans for one host; version 1
files (every table ``{"name", "rank", "rows", "dim"}``, a top-level ``"sharding_type":
"table_wise"``) as table-wise plans.

Module paths are the fully qualified names of the ``EmbeddingBagCollection`` modules in
the model handed to ``DistributedModelParallel`` (``""`` when the model *is* the
collection). Rows and dims are kept so a plan for another model is detected on loading.

TorchRec is imported only inside the functions that build plans, so reading and writing
plan files (and the CLI's start-up) stay light.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamshard.constants import DEVICE_TYPES, DIM_MULTIPLE
from dreamshard.errors import InputError, InvalidPlacementError
from dreamshard.evaluation.placement_file import placement_of, read_placement_file
from dreamshard.fileio import read_json, write_json
from dreamshard.placers.torchrec import (
    COLUMN_WISE,
    FUSED_KERNEL,
    ROW_WISE,
    SHARDING_TYPES,
    TABLE_ROW_WISE,
    TABLE_WISE,
)
from dreamshard.types import Placement, Task, row_split_sizes

if TYPE_CHECKING:
    from torch import nn
    from torchrec.distributed.types import ParameterSharding, ShardingPlan

PLAN_FORMAT = "dreamshard-torchrec-plan"
#: Version 3 records the ranks per host and has table-row-wise tables; version 2 records
#: each table's sharding; version 1 files are table-wise.
PLAN_VERSION = 3
#: The oldest plan file version that still loads.
OLDEST_PLAN_VERSION = 1
#: The first version with ``local_world_size`` and ``table_row_wise`` tables.
HOSTS_PLAN_VERSION = 3

#: The JSON field holding the shard sizes of each split sharding type.
_SIZES_FIELD = {COLUMN_WISE: "shard_dims", ROW_WISE: "shard_rows", TABLE_ROW_WISE: "shard_rows"}


@dataclass(frozen=True)
class PlannedTable:
    """One table of a plan: its sharding, its ranks and the shape it was planned for.

    Attributes:
        name: Table name (the ``EmbeddingBagConfig`` name).
        rank: ``table_wise``: rank holding the whole table; a split table: the rank of
            its first shard (``shard_ranks[0]``).
        rows: Rows the table had when planned (``num_embeddings``).
        dim: Embedding dimension it had when planned.
        sharding: ``table_wise``, ``column_wise``, ``row_wise`` or ``table_row_wise``
            (TorchRec's names).
        shard_ranks: Split tables: the rank of each shard, in column or row order
            (``row_wise``: ``0 .. world_size - 1``; ``table_row_wise``: the ranks of one
            host, in order); empty for ``table_wise``.
        shard_sizes: Split tables: the dim (``column_wise``) or rows (``row_wise``,
            ``table_row_wise``) of each shard, in the same order; empty for ``table_wise``.
    """

    name: str
    rank: int
    rows: int
    dim: int
    sharding: str = TABLE_WISE
    shard_ranks: tuple[int, ...] = ()
    shard_sizes: tuple[int, ...] = ()

    @classmethod
    def split(
        cls,
        name: str,
        rows: int,
        dim: int,
        sharding: str,
        ranks: Sequence[int],
        sizes: Sequence[int],
    ) -> PlannedTable:
        """A column-, row- or table-row-wise table with shard ``j`` of ``sizes[j]`` on
        ``ranks[j]``."""
        return cls(
            name=name,
            rank=ranks[0] if ranks else 0,
            rows=rows,
            dim=dim,
            sharding=sharding,
            shard_ranks=tuple(ranks),
            shard_sizes=tuple(sizes),
        )

    @property
    def ranks(self) -> tuple[int, ...]:
        """The rank of each shard (``table_wise``: the table's one rank)."""
        return (self.rank,) if self.sharding == TABLE_WISE else self.shard_ranks

    def check(self, world_size: int, local_world_size: int | None = None) -> None:
        """Raise InputError (``table 'x': ...``, naming the field) unless the sharding is
        one this package plans and its shards fit ``world_size`` ranks, hosts of
        ``local_world_size`` ranks (``table_row_wise`` needs them) and the table."""
        loc = f"table {self.name!r}"
        if self.sharding not in SHARDING_TYPES:
            raise InputError(
                f"{loc}: field 'sharding' is {self.sharding!r}, use one of "
                f"{', '.join(SHARDING_TYPES)}"
            )
        for rank in self.ranks:
            if not 0 <= rank < world_size:
                raise InputError(f"{loc} is on rank {rank}, the plan has ranks 0..{world_size - 1}")
        if self.sharding == TABLE_WISE:
            if self.shard_ranks or self.shard_sizes:
                raise InputError(f"{loc}: a table_wise table has no shard ranks or sizes")
            return
        field = _SIZES_FIELD[self.sharding]
        if len(self.shard_ranks) != len(self.shard_sizes) or len(self.shard_sizes) < 2:
            raise InputError(
                f"{loc}: {self.sharding} needs at least 2 shards, as many 'ranks' "
                f"({len(self.shard_ranks)}) as {field!r} ({len(self.shard_sizes)})"
            )
        if self.rank != self.shard_ranks[0]:
            raise InputError(f"{loc}: field 'rank' must be its first shard's rank")
        if self.sharding == COLUMN_WISE:
            if any(size < DIM_MULTIPLE or size % DIM_MULTIPLE for size in self.shard_sizes):
                raise InputError(
                    f"{loc}: field {field!r} is {list(self.shard_sizes)}; every column "
                    f"shard's dim must be a positive multiple of {DIM_MULTIPLE}"
                )
            if sum(self.shard_sizes) != self.dim:
                raise InputError(
                    f"{loc}: field {field!r} is {list(self.shard_sizes)}, summing to "
                    f"{sum(self.shard_sizes)}, not to its dim {self.dim}"
                )
            return
        if self.sharding == TABLE_ROW_WISE:
            self._check_table_row_wise(world_size, local_world_size)
            return
        try:
            blocks = row_split_sizes(self.rows, world_size)
        except InvalidPlacementError as err:
            raise InputError(f"{loc}: row_wise: {err}") from None
        if self.shard_ranks != tuple(range(world_size)) or self.shard_sizes != blocks:
            raise InputError(
                f"{loc}: row_wise over ranks {list(self.shard_ranks)} in blocks of "
                f"{list(self.shard_sizes)} rows ({field!r}), but TorchRec cuts {self.rows} "
                f"rows over the plan's {world_size} ranks as {list(blocks)} on ranks "
                f"0..{world_size - 1} (a plan for another world size?)"
            )

    def _check_table_row_wise(self, world_size: int, local_world_size: int | None) -> None:
        """TorchRec's table-row-wise layout: the blocks of ``row_split_sizes(rows,
        local_world_size)`` on the ranks of the host of the first shard, in order."""
        loc = f"table {self.name!r}"
        if local_world_size is None or local_world_size >= world_size:
            given = "gives no" if local_world_size is None else "has one host by its"
            raise InputError(
                f"{loc}: table_row_wise needs two hosts or more, but the plan {given} field "
                f"'local_world_size' ({world_size} ranks)"
            )
        host = self.rank // local_world_size
        host_ranks = tuple(range(host * local_world_size, (host + 1) * local_world_size))
        try:
            blocks = row_split_sizes(self.rows, local_world_size)
        except InvalidPlacementError as err:
            raise InputError(f"{loc}: table_row_wise: {err}") from None
        if self.shard_ranks != host_ranks or self.shard_sizes != blocks:
            raise InputError(
                f"{loc}: table_row_wise over ranks {list(self.shard_ranks)} in blocks of "
                f"{list(self.shard_sizes)} rows ('shard_rows'), but TorchRec cuts {self.rows} "
                f"rows over a host's {local_world_size} ranks as {list(blocks)} on ranks "
                f"{host_ranks[0]}..{host_ranks[-1]} (host {host}; a plan for other hosts?)"
            )


@dataclass(frozen=True)
class PlanSpec:
    """A plan for one or more embedding-bag collections of one model.

    Attributes:
        world_size: Number of ranks the plan is for.
        modules: Module path -> the tables of that collection, in model order.
        source: Free-form facts about where the plan came from (placer, task, files).
        local_world_size: Ranks per host the plan is for (TorchRec's
            ``local_world_size``: host ``h`` holds ranks ``h * local_world_size ..``);
            None: not fixed (a plan for one host). ``table_row_wise`` tables need it.

    Raises:
        InputError: a table twice in a module, a host size that does not divide the
            world size, or a table whose shards do not fit the ranks, the hosts or the
            table (:meth:`PlannedTable.check`).
    """

    world_size: int
    modules: Mapping[str, tuple[PlannedTable, ...]]
    source: Mapping[str, Any]
    local_world_size: int | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise InputError(f"plan: world_size must be at least 1, got {self.world_size}")
        local = self.local_world_size
        if local is not None and (local < 1 or self.world_size % local):
            raise InputError(
                f"plan: field 'local_world_size' is {local}, which does not divide the "
                f"world size {self.world_size}"
            )
        for path, tables in self.modules.items():
            seen: set[str] = set()
            for t in tables:
                if t.name in seen:
                    raise InputError(f"plan: module {path!r}: table {t.name!r} appears twice")
                seen.add(t.name)
                try:
                    t.check(self.world_size, self.local_world_size)
                except InputError as err:
                    raise InputError(f"plan: module {path!r}: {err}") from None

    def ranks(self, module_path: str) -> dict[str, tuple[int, ...]]:
        """Table name -> the ranks of its shards (one for a table-wise table), one module."""
        return {t.name: t.ranks for t in self.modules[module_path]}

    @property
    def table_row_wise_tables(self) -> list[str]:
        """The names of the plan's ``table_row_wise`` tables, in module and model order."""
        return [t.name for ts in self.modules.values() for t in ts if t.sharding == TABLE_ROW_WISE]


#: TorchRec's sharding type of each kind of split.
_SHARDING_OF_KIND = {"column": COLUMN_WISE, "row": ROW_WISE, "table_row": TABLE_ROW_WISE}


def planned_tables(task: Task, placement: Placement) -> tuple[PlannedTable, ...]:
    """The planned tables of ``placement`` (a valid placement of ``task``), in table
    order: whole tables ``table_wise`` on their device's rank, column splits
    ``column_wise`` with their shards' ranks and dims, row splits ``row_wise``, table-row
    splits ``table_row_wise`` on their host's ranks."""
    by_table = {s.table: s for s in placement.splits}
    out = []
    unit = 0  # index of the table's first unit in device_of
    for i, t in enumerate(task.tables):
        split = by_table.get(i)
        if split is None:
            out.append(PlannedTable(t.name, placement.device_of[unit], t.rows, t.dim))
            unit += 1
            continue
        ranks = placement.device_of[unit : unit + len(split.sizes)]
        unit += len(split.sizes)
        sharding = _SHARDING_OF_KIND[split.kind]
        out.append(PlannedTable.split(t.name, t.rows, t.dim, sharding, ranks, split.sizes))
    return tuple(out)


def plan_from_placement(
    task: Task,
    placement: Placement,
    module_path: str = "",
    source: Mapping[str, Any] | None = None,
) -> PlanSpec:
    """The plan that puts each table or shard of ``task`` on the rank of its device.

    Args:
        task: The task the placement is for; device ``k`` becomes rank ``k``, its
            devices per host (if given) the plan's ``local_world_size``.
        placement: A valid placement of ``task`` (checked), table-wise or split.
        module_path: Path of the ``EmbeddingBagCollection`` in the user's model.
        source: Facts to record in the plan file.

    Raises:
        InvalidPlacementError: if the placement does not fit the task.
    """
    placement.validate(task)
    return PlanSpec(
        world_size=task.num_devices,
        modules={module_path: planned_tables(task, placement)},
        source=dict(source or {}),
        local_world_size=task.devices_per_host,
    )


def plan_from_placement_file(
    path: str | Path, tables_path: str | Path | None = None, module_path: str = ""
) -> PlanSpec:
    """The plan of a placement file written by ``dreamshard place --out``.

    Args:
        path: The placement file (read with
            :func:`dreamshard.evaluation.placement_file.read_placement_file`; its
            ``placement``, ``splits``, ``devices`` and ``tables_file`` fields are used).
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
    if tables_path is None:
        named = record.tables_file
        if named is None:
            raise InputError(f"{where}: no field 'tables_file': pass the table file (--tables)")
        tables_path = _named_tables_file(named, Path(path), where)
    tables = load_tables(tables_path)
    task = make_task(
        record.task if record.task is not None else Path(tables_path).stem,
        tables,
        list(record.devices),
        devices_per_host=record.devices_per_host,
    )
    placement = placement_of(record, task, where, str(tables_path))
    source = {
        "placement_file": where,
        "tables_file": str(tables_path),
        "placer": record.placer,
        "task": task.name,
    }
    try:
        return plan_from_placement(task, placement, module_path, source)
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


def _table_to_json(t: PlannedTable) -> dict[str, Any]:
    if t.sharding == TABLE_WISE:
        return {
            "name": t.name,
            "sharding": t.sharding,
            "rank": t.rank,
            "rows": t.rows,
            "dim": t.dim,
        }
    return {
        "name": t.name,
        "sharding": t.sharding,
        "ranks": list(t.shard_ranks),
        _SIZES_FIELD[t.sharding]: list(t.shard_sizes),
        "rows": t.rows,
        "dim": t.dim,
    }


def plan_to_json(spec: PlanSpec) -> dict[str, Any]:
    """The JSON payload of a plan file, at the current version."""
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "world_size": spec.world_size,
        "local_world_size": spec.local_world_size,
        "compute_kernel": FUSED_KERNEL,
        "modules": {
            path: {"tables": [_table_to_json(t) for t in tables]}
            for path, tables in spec.modules.items()
        },
        "source": dict(spec.source),
    }


def save_plan(path: str | Path, spec: PlanSpec) -> None:
    """Write a plan file (JSON), atomically."""
    write_json(path, plan_to_json(spec))


def load_plan_spec(path: str | Path) -> PlanSpec:
    """Read and validate a plan file written by :func:`save_plan` (this version or an
    older one from :data:`OLDEST_PLAN_VERSION`).

    Raises:
        InputError: naming the file and the bad field, module or table.
    """
    where = str(path)
    payload = read_json(path)
    if not isinstance(payload, dict) or payload.get("format") != PLAN_FORMAT:
        raise InputError(f"{where}: not a plan file (field 'format' must be {PLAN_FORMAT!r})")
    version = payload.get("version")
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not OLDEST_PLAN_VERSION <= version <= PLAN_VERSION
    ):
        raise InputError(
            f"{where}: plan file version {version!r} (field 'version'), this program reads "
            f"versions {OLDEST_PLAN_VERSION} to {PLAN_VERSION}"
        )
    world_size = _int_field(payload, "world_size", where)
    local_world_size = (
        _int_field(payload, "local_world_size", where)
        if version >= HOSTS_PLAN_VERSION and payload.get("local_world_size") is not None
        else None
    )
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
            tables.append(_table_from_json(record, version, f"{loc}: table {record['name']!r}"))
        modules[str(module_path)] = tuple(tables)
    source = payload.get("source", {})
    try:
        return PlanSpec(
            world_size=world_size,
            modules=modules,
            source=source if isinstance(source, dict) else {},
            local_world_size=local_world_size,
        )
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


def _table_from_json(record: Mapping[str, Any], version: int, where: str) -> PlannedTable:
    """One table of a plan file; version 1 tables are table-wise (no ``sharding``),
    ``table_row_wise`` ones from version 3 on."""
    rows = _int_field(record, "rows", where)
    dim = _int_field(record, "dim", where)
    sharding = record.get("sharding") if version >= 2 else TABLE_WISE
    if sharding == TABLE_WISE:
        return PlannedTable(record["name"], _int_field(record, "rank", where, 0), rows, dim)
    if sharding not in _SIZES_FIELD:
        raise InputError(
            f"{where}: field 'sharding' is {sharding!r}, use one of {', '.join(SHARDING_TYPES)}"
        )
    if sharding == TABLE_ROW_WISE and version < HOSTS_PLAN_VERSION:
        raise InputError(
            f"{where}: field 'sharding' is {sharding!r}, which version {version} plan files "
            f"do not have (from version {HOSTS_PLAN_VERSION} on)"
        )
    ranks = _int_list(record, "ranks", where, 0)
    sizes = _int_list(record, _SIZES_FIELD[sharding], where, 1)
    return PlannedTable.split(record["name"], rows, dim, sharding, ranks, sizes)


def _int_field(record: Mapping[str, Any], field: str, where: str, minimum: int = 1) -> int:
    value = record.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{where}: field {field!r} must be an integer, got {value!r}")
    if value < minimum:
        raise InputError(f"{where}: field {field!r} must be >= {minimum}, got {value}")
    return value


def _int_list(record: Mapping[str, Any], field: str, where: str, minimum: int) -> list[int]:
    value = record.get(field)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    ):
        raise InputError(
            f"{where}: field {field!r} must be a non-empty list of integers >= {minimum}, "
            f"got {value!r}"
        )
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
        row_wise = [t.name for ts in spec.modules.values() for t in ts if t.sharding == ROW_WISE]
        cut = (
            f" (row-wise table {row_wise[0]!r} is cut into {spec.world_size} blocks)"
            if row_wise
            else ""
        )
        raise InputError(
            f"plan: field 'world_size' is {spec.world_size} but the job runs on {world_size} "
            f"ranks{cut}"
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

    Each table gets ``table_wise(rank=)``, ``column_wise(ranks=, size_per_rank=)``,
    ``row_wise()`` or ``table_row_wise(host_index=)``, with ``compute_kernel="fused"``,
    assembled per collection by ``construct_module_sharding_plan``.

    Args:
        spec: The plan.
        model: The model that will be wrapped in ``DistributedModelParallel``.
        world_size: Ranks of the job, checked against the plan (None: not checked).
        local_world_size: Ranks per host (decides ``cuda:<local rank>`` and the hosts
            of ``table_row_wise`` tables); checked against the plan's where it has one;
            default: the plan's, else all ranks on one host.
        device_type: ``"cpu"`` or ``"cuda"``.

    Raises:
        InputError: the plan does not fit the model, the world size or the ranks per
            host, or a bad option.
    """
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan
    from torchrec.distributed.types import ShardingPlan

    if device_type not in DEVICE_TYPES:
        raise InputError(f"device type {device_type!r}: use one of {', '.join(DEVICE_TYPES)}")
    local = next(
        n for n in (local_world_size, spec.local_world_size, spec.world_size) if n is not None
    )
    if not 1 <= local <= spec.world_size or spec.world_size % local:
        raise InputError(
            f"local world size {local} must divide the plan's world size {spec.world_size}"
        )
    if spec.local_world_size is not None and local != spec.local_world_size:
        raise InputError(
            f"plan: field 'local_world_size' is {spec.local_world_size} but the job runs "
            f"{local} ranks per host"
        )
    check_plan_fits_model(spec, model, world_size)
    _check_torchrec_hosts(spec)
    collections = embedding_bag_collections(model)
    plan: dict[str, Any] = {}
    for path, tables in spec.modules.items():
        plan[path] = construct_module_sharding_plan(
            collections[path],
            {t.name: _parameter_sharding(t, local) for t in tables},
            local_size=local,
            world_size=spec.world_size,
            device_type=device_type,
        )
    return ShardingPlan(plan=plan)


def _check_torchrec_hosts(spec: PlanSpec) -> None:
    """Raise InputError if the plan has ``table_row_wise`` tables and the running job's
    ``LOCAL_WORLD_SIZE`` (from which TorchRec builds its intra-host process groups) is not
    the plan's; without a process group there is nothing to compare."""
    import torch.distributed as dist

    twrw = spec.table_row_wise_tables
    if not twrw or not (dist.is_available() and dist.is_initialized()):
        return
    from torchrec.distributed.comm import get_local_size

    running = get_local_size(dist.get_world_size())
    if running != spec.local_world_size:
        raise InputError(
            f"plan: table_row_wise table {twrw[0]!r} is cut over hosts of "
            f"{spec.local_world_size} ranks (field 'local_world_size'), but TorchRec sees "
            f"{running} ranks per host (set LOCAL_WORLD_SIZE)"
        )


def _parameter_sharding(table: PlannedTable, local_size: int) -> Any:
    """TorchRec's ``ParameterShardingGenerator`` of one planned table (hosts of
    ``local_size`` ranks)."""
    from torchrec.distributed.sharding_plan import column_wise, row_wise, table_wise

    if table.sharding == TABLE_WISE:
        return table_wise(rank=table.rank, compute_kernel=FUSED_KERNEL)
    if table.sharding == ROW_WISE:
        return row_wise(compute_kernel=FUSED_KERNEL)
    if table.sharding == TABLE_ROW_WISE:
        return _table_row_wise(table, local_size)
    generate = column_wise(
        ranks=list(table.shard_ranks),
        size_per_rank=list(table.shard_sizes),
        compute_kernel=FUSED_KERNEL,
    )

    def generator(
        param: Any, local_size: int, world_size: int, device_type: str, sharder: Any
    ) -> ParameterSharding:
        # TorchRec 1.8's column_wise puts shard j on rank j when given size_per_rank (its
        # ranks are then unused): keep its shard sizes and offsets, and put each shard
        # on its planned rank.
        return _on_ranks(
            generate(param, local_size, world_size, device_type, sharder),
            table.shard_ranks,
            local_size,
            device_type,
        )

    return generator


def _table_row_wise(table: PlannedTable, local_size: int) -> Any:
    """TorchRec's ``table_row_wise(host_index=)`` generator for the host of ``table``'s
    first rank, with the fused kernel, checked to make exactly the planned blocks."""
    from torchrec.distributed.sharding_plan import table_row_wise
    from torchrec.distributed.types import EnumerableShardingSpec

    generate = table_row_wise(host_index=table.rank // local_size)

    def generator(
        param: Any, local_size: int, world_size: int, device_type: str, sharder: Any
    ) -> ParameterSharding:
        sharding = generate(param, local_size, world_size, device_type, sharder)
        # TorchRec 1.8's table_row_wise takes no compute kernel (it picks one from the
        # parameter's optimizer): set the planned one.
        sharding = dataclasses.replace(sharding, compute_kernel=FUSED_KERNEL)
        spec = sharding.sharding_spec
        shards = spec.shards if isinstance(spec, EnumerableShardingSpec) else []
        ranks = [int(r) for r in sharding.ranks or []]
        sizes = [int(s.shard_sizes[0]) for s in shards]
        if ranks != list(table.shard_ranks) or sizes != list(table.shard_sizes):
            raise InputError(
                f"table {table.name!r}: TorchRec's table_row_wise made blocks of {sizes} rows "
                f"on ranks {ranks}, the plan has {list(table.shard_sizes)} on "
                f"{list(table.shard_ranks)}"
            )
        return sharding

    return generator


def _on_ranks(
    sharding: ParameterSharding, ranks: Sequence[int], local_size: int, device_type: str
) -> ParameterSharding:
    """``sharding`` with shard ``j`` placed on ``ranks[j]`` (TorchRec's placement names)."""
    from torchrec.distributed.sharding_plan import placement
    from torchrec.distributed.types import EnumerableShardingSpec, ShardMetadata

    spec = sharding.sharding_spec
    if not isinstance(spec, EnumerableShardingSpec) or len(spec.shards) != len(ranks):
        raise InputError(f"TorchRec's column_wise made no {len(ranks)} shards to place")
    shards = [
        ShardMetadata(
            shard_offsets=list(shard.shard_offsets),
            shard_sizes=list(shard.shard_sizes),
            placement=placement(device_type, rank, local_size),
        )
        for shard, rank in zip(spec.shards, ranks, strict=True)
    ]
    return dataclasses.replace(
        sharding, ranks=list(ranks), sharding_spec=EnumerableShardingSpec(shards)
    )


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
