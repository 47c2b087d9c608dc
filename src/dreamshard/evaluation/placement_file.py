"""The placement file: one placed and measured task, written by ``dreamshard place --out``
and read by ``dreamshard export`` (:func:`dreamshard.torchrec.plan.plan_from_placement_file`).

Placement file (JSON), version 1::

    {
      "format": "dreamshard-placement", "version": 1,
      "task": "pool", "placer": "size-lookup", "backend": "fbgemm",
      "tables_file": "/data/pool.csv",            # absolute (older files: as given)
      "devices": [{"name": "dev0", "memory_bytes": 1000000000}, ...],
      "placement": {"t0": "dev1", ...},          # table name -> device name
      "device_of": [1, ...],                      # device index of each table, in order
      "cost_ms": 1.23, "rel_spread": 0.01,        # measured cost (spread: null if none)
      "per_device": [{"fwd_comp_ms": ..., "fwd_comm_ms": ..., "bwd_comm_ms": ...,
                      "bwd_comp_ms": ...}, ...],
      "place_time_ms": 0.2
    }

Files written before the format had a name carry no ``format`` and ``version``: they
are read as version 0, the same fields without those two. Only ``placement`` and
``devices`` are required (hand-written files often hold just those and
``tables_file``); every other field is checked when present, ``device_of`` against
``placement`` and ``devices`` (same length, indices in range, the same devices). A
file of another format or of a newer version is refused with one line naming the file
and the field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamshard.errors import InputError
from dreamshard.fileio import read_json, write_json
from dreamshard.types import Device, Placement, PlacementCost, StageCosts, Task

PLACEMENT_FORMAT = "dreamshard-placement"
PLACEMENT_VERSION = 1
#: The version of files written before the format was named (no ``format`` field).
LEGACY_VERSION = 0

_STAGES = ("fwd_comp_ms", "fwd_comm_ms", "bwd_comm_ms", "bwd_comp_ms")


@dataclass(frozen=True)
class PlacementFile:
    """The content of a placement file.

    Attributes:
        placement: Table name -> name of the device holding it.
        devices: The task's devices, in rank order (device ``k`` is rank ``k``).
        task: Task name.
        placer: Name of the placer that made the placement.
        backend: Backend the placement was measured on.
        tables_file: The table file the task was made from: an absolute path in files
            written now; older files hold it as given to ``place`` (relative to the
            folder ``place`` ran in), which ``export`` also looks for beside the file.
        device_of: Device index of each table, in the table file's order.
        cost_ms: Measured cost (the slowest device's total).
        rel_spread: Relative spread of the measurement, None if the backend has none.
        per_device: Measured stage costs of each device.
        place_time_ms: Wall time the placer took.
        version: Version of the file this was read from (0: written before the format
            had a name); files are always written at :data:`PLACEMENT_VERSION`.
    """

    placement: Mapping[str, str]
    devices: tuple[Device, ...]
    task: str | None = None
    placer: str | None = None
    backend: str | None = None
    tables_file: str | None = None
    device_of: tuple[int, ...] | None = None
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
            task=task.name,
            placer=placer,
            backend=backend,
            # Absolute, so the file still names it when read from another folder.
            tables_file=os.path.abspath(tables_file),
            device_of=tuple(placement.device_of),
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
            "placement": dict(self.placement),
            "device_of": list(self.device_of) if self.device_of is not None else None,
            "cost_ms": self.cost_ms,
            "rel_spread": self.rel_spread,
            "per_device": (
                [{s: getattr(c, s) for s in _STAGES} for c in self.per_device]
                if self.per_device is not None
                else None
            ),
            "place_time_ms": self.place_time_ms,
        }


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
        task=_optional_str(payload, "task", where),
        placer=_optional_str(payload, "placer", where),
        backend=_optional_str(payload, "backend", where),
        tables_file=_optional_str(payload, "tables_file", where),
        device_of=_device_of(payload.get("device_of"), placement, devices, where),
        cost_ms=_optional_float(payload, "cost_ms", where),
        rel_spread=_optional_float(payload, "rel_spread", where),
        per_device=_per_device(payload.get("per_device"), where),
        place_time_ms=_optional_float(payload, "place_time_ms", where),
        version=version,
    )


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
