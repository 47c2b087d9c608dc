"""Domain values and interfaces shared by every stage of the pipeline.

A *task* is a set of embedding tables and a set of devices (METHOD.md section 1). A
*placement* puts each table on one device. A *cost backend* measures (or simulates) the
per-device stage costs of placements; a *placer* produces placements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from dreamshard.constants import BYTES_PER_ELEMENT, NUM_ACCESS_BINS
from dreamshard.errors import InvalidPlacementError

#: Arrays of float64 and of int64 values, the array types of the numeric code.
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Optimizers whose memory the placement constraint accounts for, with the optimizer
#: state they keep in bytes per row (EXACT_SGD keeps none; row-wise Adagrad one fp32 per row).
OPTIMIZER_STATE_BYTES_PER_ROW: dict[str, int] = {"sgd": 0, "rowwise_adagrad": 4}


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
    """

    name: str
    rows: int
    dim: int
    pooling_factor: float
    access_hist: tuple[float, ...]
    dtype: str = "fp32"
    source: DataSource | None = None

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
    """

    name: str
    tables: tuple[TableSpec, ...]
    devices: tuple[Device, ...]
    optimizer: str = "sgd"

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

    @property
    def num_tables(self) -> int:
        return len(self.tables)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def table_memory_bytes(self, table: TableSpec) -> int:
        """Memory a table takes on its device: weights plus optimizer state."""
        return table.size_bytes + table.rows * OPTIMIZER_STATE_BYTES_PER_ROW[self.optimizer]


@dataclass(frozen=True)
class Placement:
    """Which device holds each table: ``device_of[i]`` is the device index of table ``i``."""

    device_of: tuple[int, ...]

    def tables_on(self, device: int) -> list[int]:
        """Indices of the tables on ``device``, in table order."""
        return [i for i, d in enumerate(self.device_of) if d == device]

    def shards(self, num_devices: int) -> list[list[int]]:
        """Table indices per device, for devices ``0..num_devices-1``."""
        out: list[list[int]] = [[] for _ in range(num_devices)]
        for i, d in enumerate(self.device_of):
            out[d].append(i)
        return out

    def validate(self, task: Task) -> None:
        """Raise InvalidPlacementError unless every table sits on a real device with room."""
        if len(self.device_of) != task.num_tables:
            raise InvalidPlacementError(
                f"placement covers {len(self.device_of)} tables, task {task.name!r} has "
                f"{task.num_tables}"
            )
        used = [0] * task.num_devices
        for table, d in zip(task.tables, self.device_of, strict=True):
            if not 0 <= d < task.num_devices:
                raise InvalidPlacementError(
                    f"table {table.name!r} is on device {d}, task {task.name!r} has "
                    f"devices 0..{task.num_devices - 1}"
                )
            used[d] += task.table_memory_bytes(table)
        for d, (device, used_bytes) in enumerate(zip(task.devices, used, strict=True)):
            if used_bytes > device.memory_bytes:
                raise InvalidPlacementError(
                    f"device {d} ({device.name}) holds {used_bytes:,} bytes of tables but "
                    f"has {device.memory_bytes:,} bytes"
                )

    def to_names(self, task: Task) -> dict[str, str]:
        """Table name -> device name."""
        return {
            t.name: task.devices[d].name for t, d in zip(task.tables, self.device_of, strict=True)
        }


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
    """

    @property
    def table_vectors(self) -> FloatArray:
        """``[T, R]`` one vector per table of the task."""
        ...

    def stage_costs(self, sums: FloatArray, counts: FloatArray) -> FloatArray:
        """``[..., S]`` stage costs (ms) of devices holding tables whose vectors sum to
        ``sums`` ``[..., R]``, ``counts`` ``[...]`` tables each (0: an empty device)."""
        ...
