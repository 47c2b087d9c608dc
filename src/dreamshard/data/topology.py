"""Topology files: the devices of a task, each with its own memory (CSV or JSON).

A CSV file has the header ``name,memory`` and one device a line; a JSON file holds
``{"devices": [{"name": ..., "memory": ...}, ...]}``. ``memory`` is a size with units
(``16GB``, ``512MiB``, ``1.5e9``; :func:`dreamshard.units.parse_memory`); JSON may also
give it as a number of bytes. Device ``k`` of the file is device (rank) ``k`` of the task.

There is no per-device speed: every cost backend measures or simulates all devices of a
task on the same kernels, so a relative speed could only scale numbers the backend did
not measure. Devices differ here in memory only.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dreamshard.errors import InputError
from dreamshard.fileio import read_json
from dreamshard.types import Device
from dreamshard.units import parse_memory

#: The fields of one device, in CSV column order.
DEVICE_FIELDS: tuple[str, ...] = ("name", "memory")


def device_from_record(name: Any, memory: Any, where: str) -> Device:
    """Validate one device's name and memory.

    Args:
        name: The device's name as read (a non-empty string without control characters).
        memory: Its memory: a size with units, or a positive number of bytes.
        where: Location for error messages, e.g. ``"gpus.csv: line 3"``.

    Raises:
        InputError: naming ``where`` and the field.
    """
    if name is None or (isinstance(name, str) and not name.strip()):
        raise InputError(f"{where}: field 'name' is missing")
    if not isinstance(name, str):
        raise InputError(f"{where}: field 'name' must be a string, got {name!r}")
    name = name.strip()
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InputError(f"{where}: field 'name' has a control character: {name!r}")
    where = f"{where} (device {name!r})"
    if memory is None or (isinstance(memory, str) and not memory.strip()):
        raise InputError(f"{where}: field 'memory' is missing")
    if isinstance(memory, bool) or not isinstance(memory, str | int | float):
        raise InputError(f"{where}: field 'memory' must be a size such as 16GB, got {memory!r}")
    return Device(name=name, memory_bytes=parse_memory(memory, f"{where}: field 'memory'"))


def _check_unique(devices: Sequence[Device], where: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for device, loc in zip(devices, where, strict=True):
        if device.name in seen:
            raise InputError(
                f"{loc}: duplicate device name {device.name!r} (first at {seen[device.name]})"
            )
        seen[device.name] = loc


def devices_from_json(payload: Any, where: str) -> tuple[Device, ...]:
    """Validate the ``{"devices": [...]}`` payload of a JSON topology file.

    Raises:
        InputError: naming ``where``, the position (``devices[k]``) and the field.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("devices"), list):
        raise InputError(f"{where}: expected an object with a 'devices' list")
    unknown = sorted(set(payload) - {"devices"})
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r}")
    records = payload["devices"]
    if not records:
        raise InputError(f"{where}: 'devices' is empty (give at least one device)")
    devices, locations = [], []
    for k, record in enumerate(records):
        loc = f"{where}: devices[{k}]"
        if not isinstance(record, dict):
            raise InputError(f"{loc}: expected an object, got {type(record).__name__}")
        extra = sorted(set(record) - set(DEVICE_FIELDS))
        if extra:
            raise InputError(f"{loc}: unknown field {extra[0]!r} (fields: name, memory)")
        devices.append(device_from_record(record.get("name"), record.get("memory"), loc))
        locations.append(loc)
    _check_unique(devices, locations)
    return tuple(devices)


def _devices_from_csv(source: Path) -> tuple[Device, ...]:
    try:
        text = source.read_text(encoding="utf-8-sig")  # spreadsheets write a BOM
    except UnicodeDecodeError:
        raise InputError(f"{source}: not a UTF-8 text file") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or not any(c.strip() for c in header):
        raise InputError(f"{source}: empty file (expected the header row name,memory)")
    columns = [c.strip() for c in header]
    for k, column in enumerate(columns):
        if column not in DEVICE_FIELDS:
            raise InputError(f"{source}: line 1: unknown column {column!r} (columns: name,memory)")
        if column in columns[:k]:
            raise InputError(f"{source}: line 1: duplicate column {column!r}")
    missing = [c for c in DEVICE_FIELDS if c not in columns]
    if missing:
        raise InputError(f"{source}: line 1: missing column {missing[0]!r}")
    devices, locations = [], []
    for row in reader:
        loc = f"{source}: line {reader.line_num}"
        if not any(v.strip() for v in row):
            continue  # a blank line (e.g. the last one) is not a device
        if len(row) > len(columns):
            raise InputError(f"{loc}: more values than columns")
        record = dict(zip(columns, row, strict=False))
        devices.append(device_from_record(record.get("name"), record.get("memory"), loc))
        locations.append(loc)
    if not devices:
        raise InputError(f"{source}: no devices (only a header row)")
    _check_unique(devices, locations)
    return tuple(devices)


def load_topology(path: str | Path) -> tuple[Device, ...]:
    """Read a topology file (``.csv`` or ``.json``): the devices, in rank order.

    Raises:
        InputError: a missing file, an unknown format, or the first bad device, naming
            the file, its line (CSV) or position (JSON), the device and the field.
    """
    source = Path(path)
    suffix = source.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise InputError(f"{source}: unknown topology file format {suffix!r} (use .csv or .json)")
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    if suffix == ".json":
        return devices_from_json(read_json(source), str(source))
    return _devices_from_csv(source)
