"""The placement file: written at version 1, older files (no format) still read, other
formats and newer versions refused with one line naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dreamshard.errors import InputError
from dreamshard.evaluation.placement_file import (
    LEGACY_VERSION,
    PLACEMENT_FORMAT,
    PLACEMENT_VERSION,
    PlacementFile,
    read_placement_file,
    write_placement_file,
)
from dreamshard.types import Device, Placement, PlacementCost, StageCosts, TableSpec

from .conftest import task

#: A file as ``dreamshard place --out`` wrote it before the format had a name.
LEGACY = {
    "task": "pool",
    "placer": "size-lookup",
    "backend": "fbgemm",
    "tables_file": "pool.csv",
    "devices": [{"name": "dev0", "memory_bytes": 10**6}, {"name": "dev1", "memory_bytes": 10**6}],
    "placement": {"a": "dev0", "b": "dev1", "c": "dev1", "d": "dev0"},
    "device_of": [0, 1, 1, 0],
    "cost_ms": 0.5,
    "rel_spread": 0.02,
    "per_device": [
        {"fwd_comp_ms": 0.1, "fwd_comm_ms": 0.05, "bwd_comm_ms": 0.05, "bwd_comp_ms": 0.3},
        {"fwd_comp_ms": 0.1, "fwd_comm_ms": 0.05, "bwd_comm_ms": 0.05, "bwd_comp_ms": 0.2},
    ],
    "place_time_ms": 0.3,
}


def write(path: Path, payload: dict[str, Any]) -> Path:
    path.write_text(json.dumps(payload))
    return path


def test_round_trip_writes_format_version_and_every_field(
    four_tables: list[TableSpec], tmp_path: Path
) -> None:
    placed = task(four_tables, [10**6] * 2, name="pool")
    placement = Placement((0, 1, 1, 0))
    cost = PlacementCost(
        per_device=(StageCosts(0.1, 0.05, 0.05, 0.3), StageCosts(0.1, 0.05, 0.05, 0.2)),
        backend="sim",
        rel_spread=None,
    )
    record = PlacementFile.of(
        placed, placement, cost, placer="size", backend="sim", tables_file="t.json",
        place_time_ms=1.5,
    )  # fmt: skip
    path = tmp_path / "placement.json"
    write_placement_file(path, record)
    payload = json.loads(path.read_text())
    assert list(payload) == ["format", "version", *LEGACY]  # every field of before, kept
    assert (payload["format"], payload["version"]) == (PLACEMENT_FORMAT, PLACEMENT_VERSION)
    assert payload["placement"] == {"a": "dev0", "b": "dev1", "c": "dev1", "d": "dev0"}
    assert payload["device_of"] == [0, 1, 1, 0]
    assert payload["cost_ms"] == pytest.approx(0.5)  # the slowest device
    assert payload["rel_spread"] is None
    assert payload["per_device"][1] == {
        "fwd_comp_ms": 0.1, "fwd_comm_ms": 0.05, "bwd_comm_ms": 0.05, "bwd_comp_ms": 0.2,
    }  # fmt: skip
    loaded = read_placement_file(path)
    assert loaded == record
    assert loaded.version == PLACEMENT_VERSION


def test_file_written_before_the_format_reads_as_version_0(tmp_path: Path) -> None:
    loaded = read_placement_file(write(tmp_path / "old.json", LEGACY))
    assert loaded.version == LEGACY_VERSION
    assert loaded.devices == (Device("dev0", 10**6), Device("dev1", 10**6))
    assert loaded.placement == LEGACY["placement"]
    assert loaded.device_of == (0, 1, 1, 0)
    assert (loaded.task, loaded.placer, loaded.backend) == ("pool", "size-lookup", "fbgemm")
    assert loaded.tables_file == "pool.csv"
    assert loaded.cost_ms == 0.5 and loaded.rel_spread == 0.02 and loaded.place_time_ms == 0.3
    assert loaded.per_device is not None and loaded.per_device[0].bwd_comp_ms == 0.3
    # Written again, it is a current file with the same content.
    write_placement_file(tmp_path / "new.json", loaded)
    again = json.loads((tmp_path / "new.json").read_text())
    assert again == {"format": PLACEMENT_FORMAT, "version": PLACEMENT_VERSION, **LEGACY}


def test_minimal_hand_written_file_reads(tmp_path: Path) -> None:
    payload = {"devices": [{"name": "dev0", "memory_bytes": 10}], "placement": {"a": "dev0"}}
    loaded = read_placement_file(write(tmp_path / "p.json", payload))
    assert loaded.tables_file is None and loaded.cost_ms is None and loaded.per_device is None


@pytest.mark.parametrize(
    ("edit", "parts"),
    [
        ({"format": "dreamshard-torchrec-plan"}, ["not a placement file", "field 'format'"]),
        ({"format": PLACEMENT_FORMAT, "version": 2}, ["version 2", "field 'version'"]),
        ({"format": PLACEMENT_FORMAT}, ["field 'version' must be a positive integer"]),
        ({"format": PLACEMENT_FORMAT, "version": "1"}, ["field 'version'"]),
        ({"placement": {}}, ["field 'placement' must map table names to device names"]),
        ({"placement": {"a": 0}}, ["field 'placement'"]),
        ({"devices": []}, ["field 'devices' must be a non-empty list"]),
        ({"devices": [{"memory_bytes": 5}]}, ["devices[0]: field 'name' is missing"]),
        ({"devices": [{"name": "d", "memory_bytes": "5"}]}, ["'memory_bytes' must be an integer"]),
        ({"devices": [{"name": "d", "memory_bytes": 0}]}, ["'memory_bytes' must be >= 1"]),
        ({"tables_file": 3}, ["field 'tables_file' must be a string"]),
        ({"cost_ms": "fast"}, ["field 'cost_ms' must be a number"]),
        ({"device_of": [0, -1]}, ["field 'device_of'"]),
        ({"per_device": [{"fwd_comp_ms": 1}]}, ["per_device[0]", "'fwd_comm_ms'"]),
    ],
)
def test_bad_files_name_the_file_and_field(
    tmp_path: Path, edit: dict[str, Any], parts: list[str]
) -> None:
    path = write(tmp_path / "bad.json", {**LEGACY, **edit})
    with pytest.raises(InputError) as caught:
        read_placement_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for part in parts:
        assert part in message


def test_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a placement object"):
        read_placement_file(path)


@pytest.mark.parametrize(
    ("device_of", "part"),
    [
        ([0, 1, 1, 5], "table 'd' is on device 5, the file has devices 0..1"),
        ([0, 1, 1], "field 'device_of' has 3 entries, field 'placement' places 4 tables"),
        ([0, 1, 1, 0, 0], "field 'device_of' has 5 entries, field 'placement' places 4 tables"),
        ([0, 1, "1", 0], "field 'device_of' must be a list of device indices"),
        ([0, 1, True, 0], "field 'device_of' must be a list of device indices"),
        ([0, 1, 1.0, 0], "field 'device_of' must be a list of device indices"),
        ({"a": 0}, "field 'device_of' must be a list of device indices"),
        ([0, 0, 1, 0], "table 'b' is on device 0 ('dev0') but field 'placement' puts it on 'dev1'"),
    ],
)
def test_device_of_must_agree_with_the_placement(tmp_path: Path, device_of: Any, part: str) -> None:
    path = write(tmp_path / "bad.json", {**LEGACY, "device_of": device_of})
    with pytest.raises(InputError) as caught:
        read_placement_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: field 'device_of'") and message.endswith(part)


def test_device_names_must_be_unique(tmp_path: Path) -> None:
    devices = [{"name": "dev0", "memory_bytes": 10}, {"name": "dev0", "memory_bytes": 10}]
    path = write(tmp_path / "bad.json", {**LEGACY, "devices": devices})
    with pytest.raises(InputError, match=r"devices\[1\]: device name 'dev0' is used twice"):
        read_placement_file(path)


def test_tables_file_is_stored_absolute(
    four_tables: list[TableSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # place is run in one folder, export in another: a name relative to the first
    # folder would not be found from the second.
    monkeypatch.chdir(tmp_path)
    placed = task(four_tables, [10**6] * 2, name="pool")
    cost = PlacementCost(per_device=(StageCosts(0, 0, 0, 0),) * 2, backend="sim")
    record = PlacementFile.of(
        placed, Placement((0, 1, 1, 0)), cost, placer="size", backend="sim",
        tables_file="sub/t.json", place_time_ms=1.0,
    )  # fmt: skip
    assert record.tables_file == str(tmp_path / "sub" / "t.json")
