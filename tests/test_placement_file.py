"""The placement file: written at version 2 (split tables), version 1 and older files (no
format) still read as table-wise, other formats and newer versions refused, and every bad
field named in one line with the file."""

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
    SplitRecord,
    placement_of,
    read_placement_file,
    write_placement_file,
)
from dreamshard.types import (
    Device,
    Placement,
    PlacementCost,
    StageCosts,
    TableSpec,
    TableSplit,
    Task,
)

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
    # Every field of before, kept; the hosts after the devices, the splits after device_of.
    before = list(LEGACY)
    fields = [*before[: before.index("devices") + 1], "devices_per_host"]
    cut = before.index("device_of") + 1
    fields += [*before[before.index("devices") + 1 : cut], "splits", *before[cut:]]
    assert list(payload) == ["format", "version", *fields]
    assert payload["splits"] == []  # every table whole
    assert payload["devices_per_host"] is None  # one host
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
    assert again == {
        "format": PLACEMENT_FORMAT, "version": PLACEMENT_VERSION, **LEGACY, "splits": [],
        "devices_per_host": None,
    }  # fmt: skip


def test_version_1_file_reads_as_table_wise(tmp_path: Path) -> None:
    loaded = read_placement_file(
        write(tmp_path / "v1.json", {"format": PLACEMENT_FORMAT, "version": 1, **LEGACY})
    )
    assert loaded.version == 1 and loaded.splits == ()
    assert loaded.device_of == (0, 1, 1, 0)


def test_minimal_hand_written_file_reads(tmp_path: Path) -> None:
    payload = {"devices": [{"name": "dev0", "memory_bytes": 10}], "placement": {"a": "dev0"}}
    loaded = read_placement_file(write(tmp_path / "p.json", payload))
    assert loaded.tables_file is None and loaded.cost_ms is None and loaded.per_device is None


@pytest.mark.parametrize(
    ("edit", "parts"),
    [
        ({"format": "dreamshard-torchrec-plan"}, ["not a placement file", "field 'format'"]),
        ({"format": PLACEMENT_FORMAT, "version": 4}, ["version 4", "field 'version'"]),
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


# -- split tables ----------------------------------------------------------------------

#: Four tables (conftest) on 2 devices: b (dim 32) in column shards of 20 and 12 columns on
#: devices 1 and 0, d (8000 rows) in TorchRec's row blocks on devices 0 and 1.
SPLITS = (TableSplit(1, "column", (20, 12)), TableSplit(3, "row", (4000, 4000)))
SPLIT_DEVICE_OF = (0, 1, 0, 1, 0, 1)  # a, b#c0, b#c1, c, d#r0, d#r1


def split_file(tmp_path: Path, four_tables: list[TableSpec]) -> tuple[Task, Path]:
    placed = task(four_tables, [10**6] * 2, name="pool")
    cost = PlacementCost(per_device=(StageCosts(0, 0, 0, 0),) * 2, backend="sim")
    record = PlacementFile.of(
        placed, Placement(SPLIT_DEVICE_OF, SPLITS), cost, placer="x", backend="sim",
        tables_file="t.json", place_time_ms=1.0,
    )  # fmt: skip
    path = tmp_path / "split.json"
    write_placement_file(path, record)
    return placed, path


def test_split_placement_round_trips(four_tables: list[TableSpec], tmp_path: Path) -> None:
    placed, path = split_file(tmp_path, four_tables)
    payload = json.loads(path.read_text())
    assert payload["splits"] == [
        {"table": "b", "kind": "column", "sizes": [20, 12]},
        {"table": "d", "kind": "row", "sizes": [4000, 4000]},
    ]
    assert payload["placement"] == {
        "a": "dev0", "b#c0": "dev1", "b#c1": "dev0", "c": "dev1", "d#r0": "dev0", "d#r1": "dev1",
    }  # fmt: skip
    assert payload["device_of"] == list(SPLIT_DEVICE_OF)
    loaded = read_placement_file(path)
    assert loaded.splits == (
        SplitRecord("b", "column", (20, 12)),
        SplitRecord("d", "row", (4000, 4000)),
    )
    assert placement_of(loaded, placed, str(path), "t.json") == Placement(SPLIT_DEVICE_OF, SPLITS)


def test_table_wise_file_gives_a_table_wise_placement(
    four_tables: list[TableSpec], tmp_path: Path
) -> None:
    loaded = read_placement_file(write(tmp_path / "old.json", LEGACY))
    placed = task(four_tables, [10**6] * 2)
    assert placement_of(loaded, placed, "old.json", "t.json") == Placement((0, 1, 1, 0))


def _edited(path: Path, **edits: Any) -> dict[str, Any]:
    payload = json.loads(path.read_text())
    payload.update(edits)
    return payload


@pytest.mark.parametrize(
    ("splits", "part"),
    [
        ({"b": 1}, "field 'splits' must be a list of split tables"),
        ([{"kind": "row", "sizes": [1, 1]}], "splits[0]: field 'table' must name a table"),
        (
            [{"table": "b", "kind": "diagonal", "sizes": [20, 12]}],
            "splits[0]: field 'kind' must be one of column, row, table_row, got 'diagonal'",
        ),
        (
            [{"table": "b", "kind": "column", "sizes": [32]}],
            "splits[0]: field 'sizes' must list at least 2 positive shard sizes, got [32]",
        ),
        (
            [{"table": "b", "kind": "column", "sizes": [20, "12"]}],
            "splits[0]: field 'sizes' must list at least 2 positive shard sizes",
        ),
        (
            [{"table": "b", "kind": "column", "sizes": [20, 8, 4]}],
            "splits[0]: table 'b' is split into 3 column shards, but field 'placement' does "
            "not place 'b#c2'",
        ),
        (
            [{"table": "b", "kind": "column", "sizes": [32, 0]}],
            "splits[0]: field 'sizes' must list at least 2 positive shard sizes",
        ),
        (
            [{"table": "b", "kind": "row", "sizes": [125, 125]}],
            "splits[0]: table 'b' is split into 2 row shards, but field 'placement' does not "
            "place 'b#r0'",
        ),
        (
            [{"table": "b", "kind": "column", "sizes": [20, 12]}] * 2,
            "splits[1]: table 'b' is split twice",
        ),
        (
            [{"table": "b", "kind": "table_row", "sizes": [125, 125]}],
            "splits[0]: a table_row split needs field 'host'",
        ),
        (
            [{"table": "b", "kind": "row", "sizes": [125, 125], "host": 1}],
            "splits[0]: field 'host' is only for table_row splits",
        ),
        (
            [{"table": "b", "kind": "table_row", "sizes": [125, 125], "host": -1}],
            "splits[0]: field 'host' must be a host index >= 0, got -1",
        ),
    ],
)
def test_bad_splits_name_the_file_and_field(
    four_tables: list[TableSpec], tmp_path: Path, splits: Any, part: str
) -> None:
    _, path = split_file(tmp_path, four_tables)
    bad = write(tmp_path / "bad.json", _edited(path, splits=splits))
    with pytest.raises(InputError) as caught:
        read_placement_file(bad)
    message = str(caught.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message
    assert part in message


@pytest.mark.parametrize("value", [3, 0, True, "2"])
def test_bad_devices_per_host_names_the_file_and_field(
    four_tables: list[TableSpec], tmp_path: Path, value: Any
) -> None:
    _, path = split_file(tmp_path, four_tables)  # 2 devices
    bad = write(tmp_path / "bad.json", _edited(path, devices_per_host=value))
    with pytest.raises(InputError) as caught:
        read_placement_file(bad)
    assert str(caught.value) == (
        f"{bad}: field 'devices_per_host' must be a whole number >= 1 that divides the 2 "
        f"devices, got {value!r}"
    )


def test_split_table_placed_whole_or_with_extra_shards(
    four_tables: list[TableSpec], tmp_path: Path
) -> None:
    _, path = split_file(tmp_path, four_tables)
    payload = _edited(path)
    payload["placement"]["b"] = "dev0"
    payload["device_of"].append(0)
    with pytest.raises(InputError, match="'b' is split into 2 column shards, but field "
                       "'placement' places it whole"):  # fmt: skip
        read_placement_file(write(tmp_path / "whole.json", payload))
    payload = _edited(path)
    payload["placement"]["b#c2"] = "dev0"
    payload["device_of"].append(0)
    with pytest.raises(InputError, match="field 'placement' also places 'b#c2'"):
        read_placement_file(write(tmp_path / "extra.json", payload))


@pytest.mark.parametrize(
    ("split", "part"),
    [
        (
            {"table": "zzz", "kind": "column", "sizes": [4, 4]},
            "splits[0]: field 'table': table 'zzz' is not in t.json",
        ),
        (
            {"table": "b", "kind": "column", "sizes": [20, 8]},
            "splits[0]: field 'sizes': table 'b': column shards of [20, 8] columns do not "
            "cover its 32 columns exactly once",
        ),
        (
            {"table": "b", "kind": "column", "sizes": [18, 14]},
            "splits[0]: field 'sizes': table 'b': column shards of [18, 14] columns; every "
            "shard's dim must be a multiple of 4",
        ),
        (
            {"table": "b", "kind": "row", "sizes": [200, 50]},
            "splits[0]: field 'sizes': table 'b': row shards of [200, 50] rows; TorchRec's "
            "row-wise sharding cuts 250 rows over 2 devices as [125, 125]",
        ),
    ],
)
def test_splits_that_do_not_fit_the_tables(
    four_tables: list[TableSpec], tmp_path: Path, split: dict[str, Any], part: str
) -> None:
    placed = task(four_tables, [10**6] * 2)
    name = split["table"]
    shards = {f"{name}#{split['kind'][0]}{j}": f"dev{j}" for j in range(len(split["sizes"]))}
    payload = {
        "devices": LEGACY["devices"],
        "placement": {**{t.name: "dev0" for t in four_tables if t.name != name}, **shards},
        "splits": [split],
    }
    bad = write(tmp_path / "bad.json", payload)
    loaded = read_placement_file(bad)
    with pytest.raises(InputError) as caught:
        placement_of(loaded, placed, str(bad), "t.json")
    assert str(caught.value) == f"{bad}: {part}"


def test_row_shard_on_the_wrong_device_and_unsplit_shards(
    four_tables: list[TableSpec], tmp_path: Path
) -> None:
    placed, path = split_file(tmp_path, four_tables)
    payload = _edited(path)
    payload["placement"].update({"d#r0": "dev1", "d#r1": "dev0"})
    del payload["device_of"]
    bad = write(tmp_path / "swapped.json", payload)
    with pytest.raises(InputError, match=r"swapped.json: row shard 'd#r0' is on device 1; "
                       r"TorchRec's row-wise sharding puts row block 0 on device 0"):  # fmt: skip
        placement_of(read_placement_file(bad), placed, str(bad), "t.json")
    payload = _edited(path)
    del payload["placement"]["a"], payload["device_of"]
    payload["placement"].update({"a#c0": "dev0", "a#c1": "dev1"})
    bad = write(tmp_path / "unsplit.json", payload)
    with pytest.raises(InputError, match=r"unsplit.json: field 'placement': 'a#c0' is a shard "
                       r"of table 'a', which field 'splits' does not split"):  # fmt: skip
        placement_of(read_placement_file(bad), placed, str(bad), "t.json")
