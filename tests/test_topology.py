"""Topology files: devices of different memory, from CSV or JSON, and every bad input named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreamshard.data.topology import load_topology
from dreamshard.errors import InputError
from dreamshard.types import Device


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_devices_in_order_with_units(tmp_path: Path) -> None:
    path = write(tmp_path, "gpus.csv", "name,memory\nbig,16GB\nsmall, 512MiB\nraw,1e6\n")
    assert load_topology(path) == (
        Device("big", 16 * 10**9),
        Device("small", 512 * 2**20),
        Device("raw", 10**6),
    )


def test_csv_columns_in_any_order_and_a_bom_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "gpus.csv", "\ufeffmemory,name\n2GB,a\n\n1GB,b\n\n")
    assert load_topology(path) == (Device("a", 2 * 10**9), Device("b", 10**9))


def test_json_devices_with_sizes_or_bytes(tmp_path: Path) -> None:
    payload = {"devices": [{"name": "a", "memory": "1.5GiB"}, {"name": "b", "memory": 4096}]}
    path = write(tmp_path, "gpus.json", json.dumps(payload))
    assert load_topology(path) == (Device("a", 3 * 2**29), Device("b", 4096))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"gpus\.csv: empty file"),
        ("name,memory\n", r"gpus\.csv: no devices"),
        ("name,memory,speed\na,1GB,2\n", r"line 1: unknown column 'speed'"),
        ("name,memory,name\na,1GB,b\n", r"line 1: duplicate column 'name'"),
        ("name\na\n", r"line 1: missing column 'memory'"),
        ("name,memory\na,1GB\nb,0GB\n", r"line 3 \(device 'b'\): field 'memory': must be positive"),
        ("name,memory\na,-1GB\n", r"line 2 \(device 'a'\): field 'memory': cannot parse"),
        ("name,memory\na,16 GBB\n", r"line 2 \(device 'a'\): field 'memory': unknown unit 'gbb'"),
        ("name,memory\na,\n", r"line 2 \(device 'a'\): field 'memory' is missing"),
        ("name,memory\n,1GB\n", r"line 2: field 'name' is missing"),
        ("name,memory\na,1GB\na,2GB\n", r"line 3: duplicate device name 'a' \(first at .*line 2\)"),
        ("name,memory\na,1GB,x\n", r"line 2: more values than columns"),
        ('name,memory\n"a\tb",1GB\n', r"line 2: field 'name' has a control character"),
    ],
)
def test_bad_csv_names_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "gpus.csv", text)
    with pytest.raises(InputError, match=message):
        load_topology(path)


A = {"name": "a"}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], r"expected an object with a 'devices' list"),
        ({"devices": []}, r"'devices' is empty"),
        ({"devices": [], "hosts": 2}, r"unknown field 'hosts'"),
        ({"devices": [{**A, "memory": "1GB", "speed": 2}]}, r"\[0\]: unknown field 'speed'"),
        ({"devices": ["a"]}, r"devices\[0\]: expected an object, got str"),
        ({"devices": [A]}, r"devices\[0\] \(device 'a'\): field 'memory' is missing"),
        ({"devices": [{"name": 3, "memory": "1GB"}]}, r"\[0\]: field 'name' must be a string"),
        ({"devices": [{**A, "memory": True}]}, r"\[0\] \(device 'a'\): field 'memory' must be"),
        ({"devices": [{**A, "memory": 0}]}, r"\[0\] \(device 'a'\): field 'memory': must be pos"),
        (
            {"devices": [{**A, "memory": 1}, {**A, "memory": 2}]},
            r"devices\[1\]: duplicate device name 'a' \(first at .*devices\[0\]\)",
        ),
    ],
)
def test_bad_json_names_file_position_and_field(
    tmp_path: Path, payload: object, message: str
) -> None:
    path = write(tmp_path, "gpus.json", json.dumps(payload))
    with pytest.raises(InputError, match=r"gpus\.json: .*" + message):
        load_topology(path)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.csv: file not found"):
        load_topology(tmp_path / "nope.csv")
    with pytest.raises(InputError, match=r"gpus\.yaml: unknown topology file format '\.yaml'"):
        load_topology(write(tmp_path, "gpus.yaml", "devices: []"))
    with pytest.raises(InputError, match=r"gpus\.json: line 1: invalid JSON"):
        load_topology(write(tmp_path, "gpus.json", "{"))
