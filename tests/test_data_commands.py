"""Issue 12: ``gen-tables``/``gen-tasks``/``tables-from-data`` refuse bad options in one line,
before any work, and never overwrite their input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from dreamshard.cli.app import app
from dreamshard.cli.data_commands import MAX_GEN_TABLES
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tables import save_tables

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result: Result, *parts: str) -> str:
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    lines = ANSI.sub("", result.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture
def pool_csv(tmp_path: Path) -> Path:
    path = tmp_path / "pool.csv"
    save_tables(path, generate_table_pool(num_tables=20, seed=0, max_rows=1000))
    return path


@pytest.mark.parametrize(
    ("options", "parts"),
    [
        (["--batch-size", "0"], ["--batch-size must be at least 1, got 0"]),
        (["--dim", "8", "--dims", "8,16"], ["--dim and --dims: give one, not both"]),
        (["--dims", "8,1_6"], ["--dims: expected comma-separated integers, got '8,1_6'"]),
        (["--dims", "\uff18"], ["--dims: expected comma-separated integers, got '\uff18'"]),
        (
            ["--num", str(MAX_GEN_TABLES + 1)],
            [f"--num must be at most {MAX_GEN_TABLES:,}, got {MAX_GEN_TABLES + 1:,}"],
        ),
    ],
)
def test_gen_tables_bad_options(tmp_path: Path, options: list[str], parts: list[str]) -> None:
    out = tmp_path / "x.csv"
    result = run("gen-tables", "--num", 5, "--out", out, *options)
    assert_one_line_error(result, *parts)
    assert not out.exists()


def test_gen_tables_out_is_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "x.csv"
    folder.mkdir()
    result = run("gen-tables", "--num", 5, "--out", folder)
    assert_one_line_error(result, f"--out {folder}: is a folder")


def test_gen_tasks_out_is_a_folder(tmp_path: Path, pool_csv: Path) -> None:
    result = run("gen-tasks", "--tables", pool_csv, "--out", tmp_path, "--tables-per-task", "2")
    assert_one_line_error(result, f"--out {tmp_path}: is a folder")


@pytest.mark.parametrize("spelling", ["same", "relative"])
def test_gen_tasks_out_is_the_input(
    tmp_path: Path, pool_csv: Path, spelling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = pool_csv.read_bytes()
    out: Path = pool_csv
    if spelling == "relative":
        monkeypatch.chdir(tmp_path)
        out = Path(".") / "sub" / ".." / pool_csv.name
        (tmp_path / "sub").mkdir()
    result = run("gen-tasks", "--tables", pool_csv, "--out", out, "--tables-per-task", "2")
    assert_one_line_error(result, f"--out {out}: is the input file {pool_csv}")
    assert pool_csv.read_bytes() == before


def test_tables_from_data_out_is_the_input(tmp_path: Path) -> None:
    data = tmp_path / "day.csv"
    data.write_text("not a dataset\n")
    result = run("tables-from-data", data, "--out", data)
    assert_one_line_error(result, f"--out {data}: is the input file {data}")
    assert data.read_text() == "not a dataset\n"


def test_gen_tasks_on_a_topology(tmp_path: Path, pool_csv: Path) -> None:
    topology = tmp_path / "topo.csv"
    topology.write_text("name,memory\nbig,3MB\nsmall,1MB\n")
    out = tmp_path / "suite.json"
    args = ("gen-tasks", "--tables", pool_csv, "--out", out, "--num-train", 2, "--num-test", 1)
    result = run(*args, "--tables-per-task", 3, "--topology", topology)
    assert result.exit_code == 0, result.output
    from dreamshard.data.tasks import load_suite
    from dreamshard.types import Device

    suite = load_suite(out)
    expected = (Device("big", 3_000_000), Device("small", 1_000_000))
    assert all(t.devices == expected for t in (*suite.train, *suite.test))


def test_gen_tasks_topology_excludes_devices_and_memory(tmp_path: Path, pool_csv: Path) -> None:
    topology = tmp_path / "topo.csv"
    topology.write_text("name,memory\nbig,3MB\n")
    out = tmp_path / "suite.json"
    result = run(
        "gen-tasks", "--tables", pool_csv, "--out", out, "--topology", topology, "--memory", "1GB"
    )
    assert_one_line_error(result, "drop --devices and --memory")
    assert not out.exists()
