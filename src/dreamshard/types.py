"""Domain values and interfaces shared by every stage of the pipeline.

A *task* is a set of embedding tables and a set of devices (METHOD.md section 1), the
devices grouped into hosts of equal size (TorchRec's ``local_world_size``; one host
unless given). A *placement* gives each table a sharding (whole, or split into column
shards, row blocks over every device, or row blocks over one host's devices) and puts
each table or shard on one device. A *cost backend* measures (or simulates) the
per-device stage costs of placements; a *placer* produces placements.

Shards are tables in their own right (:class:`TableSpec` with ``shard`` set): a column
shard looks up the same ids as its table with a part of its dim, a row shard looks up
the ids that fall in its row range. So every stage below the placers (backends, cost
network, search) handles a split placement as a table-wise placement of the task's
*units* (:meth:`Placement.resolve`), and only the placers and the export know more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, TypeGuard, runtime_checkable

import numpy as np
import numpy.typing as npt

from dreamshard.constants import BYTES_PER_ELEMENT, DIM_MULTIPLE, NUM_ACCESS_BINS
from dreamshard.errors import InvalidPlacementError

#: Arrays of float64 and of int64 values, the array types of the numeric code.
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Optimizers whose memory the placement constraint accounts for, with the optimizer
#: state they keep in bytes per row (EXACT_SGD keeps none; row-wise Adagrad one fp32 per row).
OPTIMIZER_STATE_BYTES_PER_ROW: dict[str, int] = {"sgd": 0, "rowwise_adagrad": 4}

#: How a table is split: into column shards (parts of its dim, TorchRec's
#: ``COLUMN_WISE``), row blocks over every device (``ROW_WISE``) or row blocks over the
#: devices of one host (``table_row``: ``TABLE_ROW_WISE``).
ShardKind = Literal["column", "row", "table_row"]
SHARD_KINDS: tuple[str, ...] = ("column", "row", "table_row")
#: The kinds whose shards are row blocks on fixed devices (block ``j`` on device ``j``,
#: or on device ``j`` of its host), whose partial sums are reduce-scattered.
ROW_KINDS: tuple[str, ...] = ("row", "table_row")

#: Sharding modes of the placers: ``table`` keeps every table whole (the paper's setting);
#: ``column`` / ``row`` allow only that kind of split; ``auto`` splits a table only where a
#: split lowers the predicted cost or is needed to fit memory.
SHARDING_MODES: tuple[str, ...] = ("table", "column", "row", "auto")

#: Separator between a table's name and its shard's suffix (``t3#c1``, ``t3#r0``,
#: ``t3#h0``).
SHARD_NAME_SEPARATOR = "#"
#: The suffix letter of each kind's shards.
_SHARD_LETTER: dict[str, str] = {"column": "c", "row": "r", "table_row": "h"}


def shard_name(table: str, kind: str, index: int) -> str:
    """The name of shard ``index`` of a ``kind`` split of ``table``: ``t3#c1``."""
    return f"{table}{SHARD_NAME_SEPARATOR}{_SHARD_LETTER[kind]}{index}"


@dataclass(frozen=True)
class DataSource:
    """Where a table's real ids come from: one table of a DLRM dataset file (dlrm_data.py).

    Attributes:
        file: Path of the file (``indices, offsets, lengths = torch.load(file)``).
        table: Index of the table in the file (row of ``lengths``).
    """

    file: str
    table: int


@dataclass(frozen=True)
class ShardOf:
    """Which part of a table a shard holds.

    Attributes:
        table: The whole table.
        kind: ``column`` (columns ``offset .. offset+size-1`` of every row), ``row`` or
            ``table_row`` (rows ``offset .. offset+size-1``, every column).
        index: Position of the shard in its table's split, from 0.
        offset: First column or row.
        size: Number of columns or rows.
        host: ``table_row``: the host whose devices hold the blocks (0 otherwise).
    """

    table: TableSpec
    kind: ShardKind
    index: int
    offset: int
    size: int
    host: int = 0

    @property
    def is_row_block(self) -> bool:
        """Whether this is a row block (``row`` or ``table_row``): its device is fixed and
        its partial pooled sums are reduce-scattered, not sent by the all-to-all."""
        return self.kind in ROW_KINDS

    def device(self, host_size: int) -> int | None:
        """The device a row block must sit on (TorchRec's layout: block ``j`` on device
        ``j``, or on device ``j`` of its host, hosts of ``host_size`` devices); None for
        a column shard, which may sit anywhere."""
        if self.kind == "row":
            return self.index
        if self.kind == "table_row":
            return self.host * host_size + self.index
        return None


@dataclass(frozen=True)
class TableSpec:
    """One embedding table and its access statistics.

    Attributes:
        name: Unique name of the table within a pool.
        rows: Number of rows (hash size).
        dim: Embedding dimension (a multiple of 4 for FBGEMM).
        pooling_factor: Mean number of ids per sample (bag length).
        access_hist: 17 fractions of the distinct rows accessed in one batch whose access
            count falls in (0,1], (1,2], (2,4], ..., (2^14,2^15], (2^15, inf); sums to 1.
        dtype: Training precision of the weights, ``"fp32"`` or ``"fp16"``.
        source: Real ids of the table, which measuring backends then use instead of ids
            generated from the statistics (ids.py); None for synthetic tables.
        shard: For a shard of a split table, which part of which table it holds (its
            ids are that table's, restricted to its rows); None for a whole table.
    """

    name: str
    rows: int
    dim: int
    pooling_factor: float
    access_hist: tuple[float, ...]
    dtype: str = "fp32"
    source: DataSource | None = None
    shard: ShardOf | None = None

    def __post_init__(self) -> None:
        if len(self.access_hist) != NUM_ACCESS_BINS:
            raise ValueError(
                f"table {self.name!r}: access_hist has {len(self.access_hist)} bins, "
                f"expected {NUM_ACCESS_BINS}"
            )
        if self.dtype not in BYTES_PER_ELEMENT:
            raise ValueError(f"table {self.name!r}: unknown dtype {self.dtype!r}")

    @property
    def size_bytes(self) -> int:
        """Bytes of the weights in the training precision."""
        return self.rows * self.dim * BYTES_PER_ELEMENT[self.dtype]

    @property
    def whole(self) -> TableSpec:
        """The table this is a shard of, or the table itself when it is whole."""
        return self.shard.table if self.shard is not None else self


@dataclass(frozen=True)
class TableSplit:
    """How one table of a task is split (METHOD.md's table-wise placement generalised).

    Attributes:
        table: Index of the table in its task.
        kind: ``column``, ``row`` (one row block on every device) or ``table_row`` (one
            row block on every device of host ``host``).
        sizes: Columns (multiples of 4) or rows of each shard, in column or row order;
            at least two, summing to the table's dim or rows.
        host: ``table_row``: the host holding the blocks (0 for the other kinds).
    """

    table: int
    kind: ShardKind
    sizes: tuple[int, ...]
    host: int = 0

    def check(self, task: Task) -> None:
        """Raise InvalidPlacementError unless the shards cover the table exactly once and,
        row-wise, are TorchRec's blocks for the task's devices (:func:`row_split_sizes`):
        over every device (``row``), or over the devices of one of the task's hosts, of
        which it needs at least two (``table_row``)."""
        if not 0 <= self.table < task.num_tables:
            raise InvalidPlacementError(
                f"a split names table {self.table}, task {task.name!r} has tables "
                f"0..{task.num_tables - 1}"
            )
        table = task.tables[self.table]
        if self.kind not in SHARD_KINDS:
            raise InvalidPlacementError(
                f"table {table.name!r}: unknown split kind {self.kind!r}; "
                f"use one of {', '.join(SHARD_KINDS)}"
            )
        whole = table.dim if self.kind == "column" else table.rows
        what = "columns" if self.kind == "column" else "rows"
        if len(self.sizes) < 2:
            raise InvalidPlacementError(
                f"table {table.name!r}: a {self.kind} split needs at least 2 shards, "
                f"got {len(self.sizes)}"
            )
        if any(size < 1 for size in self.sizes) or sum(self.sizes) != whole:
            raise InvalidPlacementError(
                f"table {table.name!r}: {self.kind} shards of {list(self.sizes)} {what} do "
                f"not cover its {whole} {what} exactly once"
            )
        if self.kind == "column" and any(size % DIM_MULTIPLE for size in self.sizes):
            raise InvalidPlacementError(
                f"table {table.name!r}: column shards of {list(self.sizes)} columns; every "
                f"shard's dim must be a multiple of {DIM_MULTIPLE}"
            )
        if self.kind != "table_row" and self.host != 0:
            raise InvalidPlacementError(
                f"table {table.name!r}: a {self.kind} split has no host (got {self.host})"
            )
        if self.kind == "table_row":
            if task.num_hosts < 2:
                raise InvalidPlacementError(
                    f"table {table.name!r}: a table_row split needs at least 2 hosts, task "
                    f"{task.name!r} has 1 (on one host it is a row split)"
                )
            if not 0 <= self.host < task.num_hosts:
                raise InvalidPlacementError(
                    f"table {table.name!r}: table_row split on host {self.host}, task "
                    f"{task.name!r} has hosts 0..{task.num_hosts - 1}"
                )
        if self.kind in ROW_KINDS:
            over = task.num_devices if self.kind == "row" else task.host_size
            expected = row_split_sizes(table.rows, over)
            if self.sizes != expected:
                layout = "row-wise" if self.kind == "row" else "table-row-wise"
                where = "devices" if self.kind == "row" else "devices of a host"
                raise InvalidPlacementError(
                    f"table {table.name!r}: {self.kind} shards of {list(self.sizes)} rows; "
                    f"TorchRec's {layout} sharding cuts {table.rows} rows over "
                    f"{over} {where} as {list(expected)}"
                )

    def shards(self, table: TableSpec) -> tuple[TableSpec, ...]:
        """The shards of ``table`` as tables: a column shard keeps the rows and ids with a
        part of the dim; a row shard keeps the dim, and its pooling factor is the
        table's times its share of the rows (ids are spread uniformly over the rows:
        hashed ids, and the generator draws distinct rows uniformly); the access
        histogram is the table's."""
        out = []
        offset = 0
        for index, size in enumerate(self.sizes):
            part = ShardOf(
                table=table, kind=self.kind, index=index, offset=offset, size=size, host=self.host
            )
            name = shard_name(table.name, self.kind, index)
            if self.kind == "column":
                shard = replace(table, name=name, dim=size, shard=part)
            else:
                share = size / table.rows
                shard = replace(
                    table,
                    name=name,
                    rows=size,
                    pooling_factor=table.pooling_factor * share,
                    shard=part,
                )
            out.append(shard)
            offset += size
        return tuple(out)


@dataclass(frozen=True)
class Device:
    """One device (GPU or emulated device) and its memory for embedding tables."""

    name: str
    memory_bytes: int


@dataclass(frozen=True)
class Task:
    """A placement task: tables to place on devices (METHOD.md section 1).

    Attributes:
        name: Identifier, unique within a suite.
        tables: The tables to place.
        devices: The devices; at least one.
        optimizer: Sparse optimizer, decides the optimizer state counted in memory.
        devices_per_host: Devices per host (TorchRec's ``local_world_size``): host ``h``
            holds devices ``h * devices_per_host .. (h + 1) * devices_per_host - 1``, as
            TorchRec numbers ranks. None: every device on one host.
    """

    name: str
    tables: tuple[TableSpec, ...]
    devices: tuple[Device, ...]
    optimizer: str = "sgd"
    devices_per_host: int | None = None

    def __post_init__(self) -> None:
        if not self.devices:
            raise ValueError(f"task {self.name!r} has no devices")
        if not self.tables:
            raise ValueError(f"task {self.name!r} has no tables")
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"task {self.name!r}: duplicate table name {dup!r}")
        devices = [d.name for d in self.devices]
        if len(set(devices)) != len(devices):
            dup = next(n for n in devices if devices.count(n) > 1)
            raise ValueError(f"task {self.name!r}: duplicate device name {dup!r}")
        if self.optimizer not in OPTIMIZER_STATE_BYTES_PER_ROW:
            raise ValueError(f"task {self.name!r}: unknown optimizer {self.optimizer!r}")
        per_host = self.devices_per_host
        if per_host is not None and not divides_into_hosts(per_host, len(self.devices)):
            raise ValueError(
                f"task {self.name!r}: devices_per_host must be a whole number >= 1 that "
                f"divides its {len(self.devices)} devices, got {per_host!r}"
            )

    @property
    def num_tables(self) -> int:
        return len(self.tables)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def host_size(self) -> int:
        """Devices per host (all of them when the task gives no hosts)."""
        return self.devices_per_host or len(self.devices)

    @property
    def num_hosts(self) -> int:
        return len(self.devices) // self.host_size

    def with_tables(self, tables: Sequence[TableSpec]) -> Task:
        """The same devices, hosts and optimizer with other tables (a split task's
        units, a subset)."""
        return replace(self, tables=tuple(tables))

    def table_memory_bytes(self, table: TableSpec) -> int:
        """Memory a table takes on its device: weights plus optimizer state."""
        return table.size_bytes + table.rows * OPTIMIZER_STATE_BYTES_PER_ROW[self.optimizer]


@dataclass(frozen=True)
class Placement:
    """Which device holds each table or shard.

    The *units* of a placement are the task's tables in order, each split table replaced
    by its shards in shard order (:meth:`units`); ``device_of[i]`` is the device index of
    unit ``i``. Without splits (the paper's table-wise placement) the units are the tables.

    Attributes:
        device_of: Device index of each unit.
        splits: The split tables, in table order; empty for a table-wise placement.
    """

    device_of: tuple[int, ...]
    splits: tuple[TableSplit, ...] = ()

    @property
    def is_table_wise(self) -> bool:
        """Whether every table is whole."""
        return not self.splits

    def units(self, task: Task) -> tuple[TableSpec, ...]:
        """The tables and shards this placement places, in ``device_of`` order."""
        if not self.splits:
            return task.tables
        by_table = {s.table: s for s in self.splits}
        out: list[TableSpec] = []
        for i, table in enumerate(task.tables):
            split = by_table.get(i)
            out.extend(split.shards(table) if split is not None else (table,))
        return tuple(out)

    def resolve(self, task: Task) -> tuple[Task, Placement]:
        """The task of this placement's units and the table-wise placement of them: what
        backends measure and searches score (the same costs, by construction)."""
        if not self.splits:
            return task, self
        return task.with_tables(self.units(task)), Placement(self.device_of)

    def tables_on(self, device: int) -> list[int]:
        """Indices of the units on ``device``, in unit order."""
        return [i for i, d in enumerate(self.device_of) if d == device]

    def shards(self, num_devices: int) -> list[list[int]]:
        """Unit indices per device, for devices ``0..num_devices-1``."""
        out: list[list[int]] = [[] for _ in range(num_devices)]
        for i, d in enumerate(self.device_of):
            out[d].append(i)
        return out

    def validate(self, task: Task) -> None:
        """Raise InvalidPlacementError unless every split covers its table exactly once,
        the row blocks of a table sit on devices 0, 1, ... in order (TorchRec's row-wise
        layout; table-row-wise: on its host's devices in order), and every unit sits on a
        real device with room."""
        tables = [s.table for s in self.splits]
        if tables != sorted(set(tables)):
            raise InvalidPlacementError(
                f"placement of task {task.name!r}: splits must name distinct tables in order, "
                f"got {tables}"
            )
        for split in self.splits:
            split.check(task)
        units = self.units(task)
        if len(self.device_of) != len(units):
            what = "tables" if not self.splits else "tables and shards"
            raise InvalidPlacementError(
                f"placement covers {len(self.device_of)} {what}, task {task.name!r} has "
                f"{len(units)}"
            )
        used = [0] * task.num_devices
        for unit, d in zip(units, self.device_of, strict=True):
            if not 0 <= d < task.num_devices:
                raise InvalidPlacementError(
                    f"table {unit.name!r} is on device {d}, task {task.name!r} has "
                    f"devices 0..{task.num_devices - 1}"
                )
            pinned = unit.shard.device(task.host_size) if unit.shard is not None else None
            if pinned is not None and d != pinned:
                assert unit.shard is not None
                layout = "row-wise" if unit.shard.kind == "row" else "table-row-wise"
                raise InvalidPlacementError(
                    f"row shard {unit.name!r} is on device {d}; TorchRec's {layout} "
                    f"sharding puts row block {unit.shard.index} on device {pinned}"
                )
            used[d] += task.table_memory_bytes(unit)
        for d, (device, used_bytes) in enumerate(zip(task.devices, used, strict=True)):
            if used_bytes > device.memory_bytes:
                raise InvalidPlacementError(
                    f"device {d} ({device.name}) holds {used_bytes:,} bytes of tables but "
                    f"has {device.memory_bytes:,} bytes"
                )

    def to_names(self, task: Task) -> dict[str, str]:
        """Table or shard name -> device name."""
        return {
            t.name: task.devices[d].name
            for t, d in zip(self.units(task), self.device_of, strict=True)
        }


def divides_into_hosts(devices_per_host: object, num_devices: int) -> TypeGuard[int]:
    """Whether ``devices_per_host`` is a whole number >= 1 that cuts ``num_devices``
    devices into hosts of equal size (what :attr:`Task.devices_per_host` must be)."""
    return (
        isinstance(devices_per_host, int)
        and not isinstance(devices_per_host, bool)
        and devices_per_host >= 1
        and num_devices % devices_per_host == 0
    )


def column_split_sizes(dim: int, parts: int) -> tuple[int, ...]:
    """Dims of ``parts`` column shards of a ``dim``-wide table, multiples of 4 as even as
    they go (the first shards take the remainder): 64 in 3 -> (24, 20, 20).

    Raises:
        ValueError: ``dim`` cannot be cut into ``parts`` shards of at least 4 columns.
    """
    blocks, rest = divmod(dim, DIM_MULTIPLE)
    if rest or parts < 1 or blocks < parts:
        raise ValueError(f"a dim of {dim} cannot be split into {parts} column shards")
    base, extra = divmod(blocks, parts)
    return tuple(DIM_MULTIPLE * (base + (1 if j < extra else 0)) for j in range(parts))


def row_split_sizes(rows: int, parts: int) -> tuple[int, ...]:
    """Rows of each of ``parts`` row shards the way TorchRec's row-wise sharding cuts them:
    blocks of ``ceil(rows / parts)`` rows, the last one smaller (10 in 4 -> 3, 3, 3, 1).

    Raises:
        InvalidPlacementError: Fewer than 2 blocks, or a block would be empty.
    """
    block = -(-rows // parts) if parts >= 1 else 0
    sizes = tuple(min(block, rows - j * block) for j in range(parts)) if block else ()
    if parts < 2 or not sizes or min(sizes) < 1:
        raise InvalidPlacementError(
            f"{rows} rows cannot be split into {parts} non-empty row blocks"
        )
    return sizes


@dataclass(frozen=True)
class StageCosts:
    """Costs of one device in one training iteration, in milliseconds (METHOD.md section 1).

    Communication stages include the time the device waits for the others, as a
    synchronised multi-device measurement reports them.
    """

    fwd_comp_ms: float
    fwd_comm_ms: float
    bwd_comm_ms: float
    bwd_comp_ms: float

    @property
    def total_ms(self) -> float:
        return self.fwd_comp_ms + self.fwd_comm_ms + self.bwd_comm_ms + self.bwd_comp_ms


@dataclass(frozen=True)
class PlacementCost:
    """Per-device stage costs of one placement and its overall cost.

    Attributes:
        per_device: Stage costs of each device, in device order.
        backend: Name of the backend that produced the numbers.
        rel_spread: Relative spread of the overall cost over independent measurement
            windows (std / mean), or None where the backend is deterministic.
    """

    per_device: tuple[StageCosts, ...]
    backend: str
    rel_spread: float | None = None
    window_costs_ms: tuple[float, ...] = field(default=())

    @property
    def cost_ms(self) -> float:
        """Iteration latency: the slowest device's total (METHOD.md section 1)."""
        return max(c.total_ms for c in self.per_device)


def synchronized_costs(
    fwd_comp_ms: Sequence[float],
    bwd_comp_ms: Sequence[float],
    fwd_a2a_ms: float,
    bwd_a2a_ms: float,
) -> tuple[StageCosts, ...]:
    """Per-device stage costs of devices synchronised by all-to-all collectives.

    A device that finishes its forward computation early waits for the slowest before the
    forward all-to-all completes, so its forward communication is its wait plus the
    collective's time. The backward all-to-all starts together on all devices. Hence the
    placement cost ``max_d total`` equals the stage-synchronous form of METHOD.md
    section 1: ``max fwd_comp + a2a_fwd + a2a_bwd + max bwd_comp``.
    """
    slowest_fwd = max(fwd_comp_ms)
    return tuple(
        StageCosts(
            fwd_comp_ms=f,
            fwd_comm_ms=(slowest_fwd - f) + fwd_a2a_ms,
            bwd_comm_ms=bwd_a2a_ms,
            bwd_comp_ms=b,
        )
        for f, b in zip(fwd_comp_ms, bwd_comp_ms, strict=True)
    )


@dataclass(frozen=True)
class MeasurementConditions:
    """How quiet the machine was while a measuring backend timed placements.

    Timing on a loaded machine is untrustworthy: with three CPU-heavy jobs on 2 cores,
    per-placement spreads went from 3-8% to 10-30% and rankings flipped (MEASUREMENT.md).

    Attributes:
        reference_slowdown: Median reference-shard time over its nominal time, minus 1
            (0.3 = 30% slower than usual), or None where the backend has no reference.
        reference_spread: Relative spread (standard deviation / median) of the reference
            shard's timings, or None.
        load_average: The machine's 1-minute load average when measuring ended, or None
            where the platform has none.
        free_cores: Cores not used by the measurement itself.
        warnings: One sentence per sign of load, with its figure; empty on a quiet machine.
    """

    reference_slowdown: float | None
    reference_spread: float | None
    load_average: float | None
    free_cores: int
    warnings: tuple[str, ...] = ()

    @property
    def loaded(self) -> bool:
        """Whether any sign of load was seen."""
        return bool(self.warnings)


@runtime_checkable
class ReportsConditions(Protocol):
    """A backend that can say how quiet the machine was while it measured."""

    def conditions(self) -> MeasurementConditions:
        """The conditions of every measurement so far."""
        ...


@runtime_checkable
class CostBackend(Protocol):
    """Where placement costs come from (METHOD.md section 5).

    ``measure`` takes several placements of one task at once so that hardware backends
    can interleave their repetitions (timing noise comes in level shifts).
    """

    name: str

    def measure(self, task: Task, placements: Sequence[Placement]) -> list[PlacementCost]:
        """Stage costs of each placement of ``task``, in the order given."""
        ...


@runtime_checkable
class Placer(Protocol):
    """Produces a placement for a task (METHOD.md section 6)."""

    name: str

    def place(self, task: Task) -> Placement:
        """A valid placement of ``task``; raises InfeasiblePlacementError if none is found."""
        ...


@runtime_checkable
class StageCostModel(Protocol):
    """A task's placement cost as a sum over stages of the slowest device's stage cost,
    each device's stage costs a function of the SUM of its tables' vectors.

    Both DreamShard's cost network (table encodings summed per device, heads per stage)
    and the simulator (per-table work terms summed per shard) have this form, so one
    search (``method.search``) serves the learned model and the simulator alike, and it
    can score a move by recomputing only the two devices it touches.

    A table's vector depends on that table alone (what the rest of the task does to its
    cost lives in :meth:`stage_costs`), so models of two tasks that share tables give
    those tables the same vectors: the split search relies on it.
    """

    @property
    def table_vectors(self) -> FloatArray:
        """``[T, R]`` one vector per table of the task."""
        ...

    def stage_costs(self, sums: FloatArray, counts: FloatArray) -> FloatArray:
        """``[..., S]`` stage costs (ms) of devices holding tables whose vectors sum to
        ``sums`` ``[..., R]``, ``counts`` ``[...]`` tables each (0: an empty device)."""
        ...


@runtime_checkable
class StageModelBackend(Protocol):
    """A cost backend whose cost of a task is a :class:`StageCostModel` (the simulator):
    searches can run on its true costs (the ORACLE; training data near the optimum)."""

    def stage_model(self, task: Task) -> StageCostModel: ...
