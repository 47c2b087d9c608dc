"""The placement file: one placed and measured task, written by ``dreamshard place --out``
and read by ``dreamshard export`` (:func:`dreamshard.torchrec.plan.plan_from_placement_file`).

Placement file (JSON), version 3::

    {
      "format": "dreamshard-placement", "version": 2,
      "task": "pool", "placer": "size-lookup", "backend": "fbgemm",
      "tables_file": "/data/pool.csv",            # absolute (older files: as given)
      "devices": [{"name": "dev0", "memory_bytes": 1000000000}, ...],
      "devices_per_host": null,                   # hosts of that many devices (null: one)
      "placement": {"t0": "dev1", "t1#c0": "dev0", "t1#c1": "dev1", ...},
                                                  # unit (table or shard) -> device name
      "device_of": [1, 0, 1, ...],                # device index of each unit, in order
      "splits": [{"table": "t1", "kind": "column", "sizes": [8, 8]},
                 {"table": "t2", "kind": "row", "sizes": [50, 50]},
                 {"table": "t3", "kind": "table_row", "sizes": [50, 50], "host": 1}],
                                                  # split tables, in table order ([]: none)
      "cost_ms": 1.23, "rel_spread": 0.01,        # measured cost (spread: null if none)
      "per_device": [{"fwd_comp_ms": ..., "fwd_comm_ms": ..., "bwd_comm_ms": ...,
                      "bwd_comp_ms": ...}, ...],
      "place_time_ms": 0.2
    }

The *units* of a placement are its tables in the table file's order, each split table
replaced by its shards ``name#c0, name#c1, ...`` (column shards, ``sizes`` their dims in
column order), ``name#r0, ...`` (row shards, ``sizes`` their rows: TorchRec's row-wise
blocks, block ``j`` on device ``j``) or ``name#h0, ...`` (table-row-wise: TorchRec's
blocks over the devices of host ``host``, block ``j`` on its ``j``-th device); see
:class:`dreamshard.types.Placement`.

Version 2 files have no ``devices_per_host`` (one host) and no ``table_row`` splits;
version 1 files have no ``splits`` (every table whole), and files written before the
format had a name carry no ``format`` and ``version``: they are read as version 0, the
version 1 fields without those two; both read as table-wise placements. Only
``placement`` and ``devices`` are required (hand-written files often hold just those and
``tables_file``); every other field is checked when present, ``device_of`` against
``placement`` and ``devices`` (same length, indices in range, the same devices) and
``splits`` against ``placement`` (each split table placed as exactly its shards). What
needs the tables (sizes covering the table, TorchRec's row blocks, table names) is
checked by :func:`placement_of`. A file of another format or of a newer version is
refused with one line naming the file and the field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamshard.errors import InputError, InvalidPlacementError
from dreamshard.fileio import read_json, write_json
from dreamshard.types import (
    SHARD_KINDS,
    SHARD_NAME_SEPARATOR,
    Device,
    Placement,
    PlacementCost,
    ShardKind,
    StageCosts,
    TableSplit,
    Task,
    divides_into_hosts,
    shard_name,
)

PLACEMENT_FORMAT = "dreamshard-placement"
#: Version 2 added ``splits`` (column and row shards); version 1 files are table-wise.
#: Version 3 added ``devices_per_host`` and ``table_row`` splits (with their ``host``).
PLACEMENT_VERSION = 3
#: The version of files written before the format was named (no ``format`` field).
LEGACY_VERSION = 0

_STAGES = ("fwd_comp_ms", "fwd_comm_ms", "bwd_comm_ms", "bwd_comp_ms")


@dataclass(frozen=True)
class SplitRecord:
    """A split table as a placement file names it (:class:`dreamshard.types.TableSplit`
    with the table's name instead of its index).

    Attributes:
        table: Name of the split table.
        kind: ``column``, ``row`` or ``table_row``.
        sizes: Dims (column shards, in column order) or rows (row shards, in row order)
            of its shards.
        host: ``table_row``: the host holding its blocks (0 for the other kinds).
    """

    table: str
    kind: ShardKind
    sizes: tuple[int, ...]
    host: int = 0

    def shard_names(self) -> list[str]:
        """The names of its shards, as ``placement`` keys them (``t1#c0``, ``t1#c1``)."""
        return [shard_name(self.table, self.kind, j) for j in range(len(self.sizes))]


@dataclass(frozen=True)
class PlacementFile:
    """The content of a placement file.

    Attributes:
        placement: Unit (table or shard) name -> name of the device holding it.
        devices: The task's devices, in rank order (device ``k`` is rank ``k``).
        devices_per_host: The task's devices per host (None: one host; files before
            version 3).
        task: Task name.
        placer: Name of the placer that made the placement.
        backend: Backend the placement was measured on.
        tables_file: The table file the task was made from: an absolute path in files
            written now; older files hold it as given to ``place`` (relative to the
            folder ``place`` ran in), which ``export`` also looks for beside the file.
        device_of: Device index of each unit, in the table file's order (each split
            table's shards in its place).
        splits: The split tables, in the table file's order; empty when every table is
            whole (and for files of versions 0 and 1).
        cost_ms: Measured cost (the slowest device's total).
        rel_spread: Relative spread of the measurement, None if the backend has none.
        per_device: Measured stage costs of each device.
        place_time_ms: Wall time the placer took.
        version: Version of the file this was read from (0: written before the format
            had a name); files are always written at :data:`PLACEMENT_VERSION`.
    """

    placement: Mapping[str, str]
    devices: tuple[Device, ...]
    devices_per_host: int | None = None
    task: str | None = None
    placer: str | None = None
    backend: str | None = None
    tables_file: str | None = None
    device_of: tuple[int, ...] | None = None
    splits: tuple[SplitRecord, ...] = ()
    cost_ms: float | None = None
    rel_spread: float | None = None
    per_device: tuple[StageCosts, ...] | None = None
    place_time_ms: float | None = None
    version: int = field(default=PLACEMENT_VERSION, compare=False)

    @classmethod
    def of(
        cls,
        task: Task,
        placement: Placement,
        cost: PlacementCost,
        *,
        placer: str,
        backend: str,
        tables_file: str | Path,
        place_time_ms: float,
    ) -> PlacementFile:
        """The file describing ``placement`` of ``task`` and its measured ``cost``."""
        return cls(
            placement=placement.to_names(task),
            devices=tuple(task.devices),
            devices_per_host=task.devices_per_host,
            task=task.name,
            placer=placer,
            backend=backend,
            # Absolute, so the file still names it when read from another folder.
            tables_file=os.path.abspath(tables_file),
            device_of=tuple(placement.device_of),
            splits=tuple(
                SplitRecord(task.tables[s.table].name, s.kind, tuple(s.sizes), s.host)
                for s in placement.splits
            ),
            cost_ms=cost.cost_ms,
            rel_spread=cost.rel_spread,
            per_device=tuple(cost.per_device),
            place_time_ms=place_time_ms,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON payload, at the current version (every field, null when unknown)."""
        return {
            "format": PLACEMENT_FORMAT,
            "version": PLACEMENT_VERSION,
            "task": self.task,
            "placer": self.placer,
            "backend": self.backend,
            "tables_file": self.tables_file,
            "devices": [{"name": d.name, "memory_bytes": d.memory_bytes} for d in self.devices],
            "devices_per_host": self.devices_per_host,
            "placement": dict(self.placement),
            "device_of": list(self.device_of) if self.device_of is not None else None,
            "splits": [_split_json(s) for s in self.splits],
            "cost_ms": self.cost_ms,
            "rel_spread": self.rel_spread,
            "per_device": (
                [{s: getattr(c, s) for s in _STAGES} for c in self.per_device]
                if self.per_device is not None
                else None
            ),
            "place_time_ms": self.place_time_ms,
        }


def _split_json(split: SplitRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"table": split.table, "kind": split.kind, "sizes": list(split.sizes)}
    if split.kind == "table_row":
        out["host"] = split.host
    return out


def write_placement_file(path: str | Path, record: PlacementFile) -> None:
    """Write a placement file (JSON, current version), atomically."""
    write_json(path, record.to_json())


def read_placement_file(path: str | Path) -> PlacementFile:
    """Read and check a placement file, of this version or one written before it.

    Raises:
        InputError: a missing or malformed file, another format or a newer version,
            naming the file and the field.
    """
    where = str(path)
    return placement_file_from_json(read_json(path), where)


def placement_file_from_json(payload: Any, where: str) -> PlacementFile:
    """A placement file's content from its JSON payload; ``where`` names it in errors."""
    if not isinstance(payload, dict):
        raise InputError(f"{where}: expected a placement object (from dreamshard place --out)")
    version = _version(payload, where)
    names = payload.get("placement")
    if (
        not isinstance(names, dict)
        or not names
        or not all(isinstance(v, str) for v in names.values())
    ):
        raise InputError(f"{where}: field 'placement' must map table names to device names")
    placement = {str(k): v for k, v in names.items()}
    devices = _devices(payload.get("devices"), where)
    return PlacementFile(
        placement=placement,
        devices=devices,
        devices_per_host=_devices_per_host(payload.get("devices_per_host"), devices, where),
        task=_optional_str(payload, "task", where),
        placer=_optional_str(payload, "placer", where),
        backend=_optional_str(payload, "backend", where),
        tables_file=_optional_str(payload, "tables_file", where),
        device_of=_device_of(payload.get("device_of"), placement, devices, where),
        splits=_splits(payload.get("splits"), placement, where),
        cost_ms=_optional_float(payload, "cost_ms", where),
        rel_spread=_optional_float(payload, "rel_spread", where),
        per_device=_per_device(payload.get("per_device"), where),
        place_time_ms=_optional_float(payload, "place_time_ms", where),
        version=version,
    )


def placement_of(record: PlacementFile, task: Task, where: str, tables_file: str) -> Placement:
    """The placement a file describes, of ``task`` (made from the file's tables and
    devices), checked: every table placed once (whole, or as exactly the shards its
    split names), each split covering its table (column shards in multiples of 4,
    row shards in TorchRec's blocks), row block ``j`` on device ``j``, memory respected.

    Args:
        record: The file's content.
        task: The task of the table file and the file's devices (device ``k`` of the
            file is device ``k`` of the task).
        where: The file, named in errors.
        tables_file: The table file, named in errors.

    Raises:
        InputError: one line naming the file and the field, table or shard.
    """
    index_of = {t.name: i for i, t in enumerate(task.tables)}
    splits = []
    for k, split in enumerate(record.splits):
        if split.table not in index_of:
            raise InputError(
                f"{where}: splits[{k}]: field 'table': table {split.table!r} is not in "
                f"{tables_file}"
            )
        resolved = TableSplit(index_of[split.table], split.kind, split.sizes, split.host)
        try:
            resolved.check(task)
        except InvalidPlacementError as err:
            raise InputError(f"{where}: splits[{k}]: field 'sizes': {err}") from None
        splits.append(resolved)
    splits.sort(key=lambda s: s.table)
    units = Placement((), tuple(splits)).units(task)
    names = record.placement
    known = {u.name for u in units}
    for name in names:
        if name in known:
            continue
        base, sep, _ = name.rpartition(SHARD_NAME_SEPARATOR)
        if sep and base in index_of:
            raise InputError(
                f"{where}: field 'placement': {name!r} is a shard of table {base!r}, which "
                f"field 'splits' does not split"
            )
        raise InputError(f"{where}: table {name!r} is placed but not in {tables_file}")
    rank_of = {d.name: k for k, d in enumerate(task.devices)}
    device_of = []
    for unit in units:
        what = "shard" if unit.shard is not None else "table"
        if unit.name not in names:
            raise InputError(f"{where}: {what} {unit.name!r} of {tables_file} is not placed")
        if names[unit.name] not in rank_of:
            raise InputError(
                f"{where}: {what} {unit.name!r} is on device {names[unit.name]!r}, which is not "
                f"in 'devices'"
            )
        device_of.append(rank_of[names[unit.name]])
    placement = Placement(tuple(device_of), tuple(splits))
    try:
        placement.validate(task)
    except InvalidPlacementError as err:
        raise InputError(f"{where}: {err}") from None
    return placement


def _version(payload: Mapping[str, Any], where: str) -> int:
    if "format" not in payload:
        return LEGACY_VERSION
    if payload["format"] != PLACEMENT_FORMAT:
        raise InputError(
            f"{where}: not a placement file (field 'format' is {payload['format']!r}, "
            f"expected {PLACEMENT_FORMAT!r})"
        )
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"{where}: field 'version' must be a positive integer, got {version!r}")
    if version > PLACEMENT_VERSION:
        raise InputError(
            f"{where}: placement file version {version} (field 'version'), this program "
            f"reads versions up to {PLACEMENT_VERSION}"
        )
    return version


def _devices(records: Any, where: str) -> tuple[Device, ...]:
    if not isinstance(records, list) or not records:
        raise InputError(f"{where}: field 'devices' must be a non-empty list")
    devices: list[Device] = []
    for k, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            raise InputError(f"{where}: devices[{k}]: field 'name' is missing")
        memory = record.get("memory_bytes")
        if not isinstance(memory, int) or isinstance(memory, bool):
            raise InputError(
                f"{where}: devices[{k}]: field 'memory_bytes' must be an integer, got {memory!r}"
            )
        if memory < 1:
            raise InputError(
                f"{where}: devices[{k}]: field 'memory_bytes' must be >= 1, got {memory}"
            )
        if any(d.name == record["name"] for d in devices):
            raise InputError(f"{where}: devices[{k}]: device name {record['name']!r} is used twice")
        devices.append(Device(record["name"], memory))
    return tuple(devices)


def _optional_str(payload: Mapping[str, Any], name: str, where: str) -> str | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise InputError(f"{where}: field {name!r} must be a string, got {value!r}")
    return value


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None if it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _optional_float(payload: Mapping[str, Any], name: str, where: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    number = _number(value)
    if number is None:
        raise InputError(f"{where}: field {name!r} must be a number, got {value!r}")
    return number


def _device_of(
    value: Any, placement: Mapping[str, str], devices: Sequence[Device], where: str
) -> tuple[int, ...] | None:
    """``device_of`` checked against ``placement`` and ``devices``: entry ``i`` must be
    the index of the device that ``placement`` gives its ``i``-th table (the two fields
    say the same thing, and ``export`` must not meet a file where they disagree)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InputError(f"{where}: field 'device_of' must be a list of device indices")
    if len(value) != len(placement):
        raise InputError(
            f"{where}: field 'device_of' has {len(value)} entries, field 'placement' "
            f"places {len(placement)} tables"
        )
    index_of = {d.name: k for k, d in enumerate(devices)}
    for (table, device), index in zip(placement.items(), value, strict=True):
        if not 0 <= index < len(devices):
            raise InputError(
                f"{where}: field 'device_of': table {table!r} is on device {index}, the file "
                f"has devices 0..{len(devices) - 1}"
            )
        if device in index_of and index_of[device] != index:
            raise InputError(
                f"{where}: field 'device_of': table {table!r} is on device {index} "
                f"({devices[index].name!r}) but field 'placement' puts it on {device!r}"
            )
    return tuple(value)


def _splits(value: Any, placement: Mapping[str, str], where: str) -> tuple[SplitRecord, ...]:
    """``splits`` checked in itself and against ``placement``: each split table must be
    placed as exactly its shards (``t#c0 .. t#c<n-1>``, not ``t``). Whether the sizes fit
    the table needs the table file (:func:`placement_of`)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InputError(f"{where}: field 'splits' must be a list of split tables")
    out: list[SplitRecord] = []
    for k, record in enumerate(value):
        loc = f"{where}: splits[{k}]"
        if not isinstance(record, dict) or not isinstance(record.get("table"), str):
            raise InputError(f"{loc}: field 'table' must name a table")
        kind = record.get("kind")
        if kind not in SHARD_KINDS:
            raise InputError(
                f"{loc}: field 'kind' must be one of {', '.join(SHARD_KINDS)}, got {kind!r}"
            )
        sizes = record.get("sizes")
        if (
            not isinstance(sizes, list)
            or len(sizes) < 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes)
        ):
            raise InputError(
                f"{loc}: field 'sizes' must list at least 2 positive shard sizes, got {sizes!r}"
            )
        host = record.get("host", 0)
        if kind == "table_row" and "host" not in record:
            raise InputError(f"{loc}: a table_row split needs field 'host'")
        if kind != "table_row" and "host" in record:
            raise InputError(f"{loc}: field 'host' is only for table_row splits")
        if not isinstance(host, int) or isinstance(host, bool) or host < 0:
            raise InputError(f"{loc}: field 'host' must be a host index >= 0, got {host!r}")
        split = SplitRecord(record["table"], kind, tuple(sizes), host)
        if any(s.table == split.table for s in out):
            raise InputError(f"{loc}: table {split.table!r} is split twice")
        shards = split.shard_names()
        what = f"{loc}: table {split.table!r} is split into {len(shards)} {kind} shards"
        if split.table in placement:
            raise InputError(f"{what}, but field 'placement' places it whole")
        missing = [name for name in shards if name not in placement]
        if missing:
            raise InputError(f"{what}, but field 'placement' does not place {missing[0]!r}")
        prefix = split.table + SHARD_NAME_SEPARATOR
        extra = [n for n in placement if n.startswith(prefix) and n not in shards]
        if extra:
            raise InputError(f"{what}, but field 'placement' also places {extra[0]!r}")
        out.append(split)
    return tuple(out)


def _devices_per_host(value: Any, devices: Sequence[Device], where: str) -> int | None:
    if value is None:
        return None
    if not divides_into_hosts(value, len(devices)):
        raise InputError(
            f"{where}: field 'devices_per_host' must be a whole number >= 1 that divides the "
            f"{len(devices)} devices, got {value!r}"
        )
    return value


def _per_device(value: Any, where: str) -> tuple[StageCosts, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InputError(f"{where}: field 'per_device' must be a list of stage costs")
    costs = []
    for k, record in enumerate(value):
        if not isinstance(record, dict):
            raise InputError(f"{where}: per_device[{k}]: expected an object of stage costs")
        stages = []
        for stage in _STAGES:
            number = _number(record.get(stage))
            if number is None:
                raise InputError(
                    f"{where}: per_device[{k}]: field {stage!r} must be a number, "
                    f"got {record.get(stage)!r}"
                )
            stages.append(number)
        costs.append(StageCosts(*stages))
    return tuple(costs)
