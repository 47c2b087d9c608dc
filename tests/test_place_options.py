"""``place``/``evaluate`` with a topology file, a constraints file and ``--all``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from dreamshard.cli.app import app
from dreamshard.cli.output import SUMMARY_DEVICES
from dreamshard.data.tables import save_tables
from dreamshard.data.tasks import SuiteConfig, generate_suite, save_suite

from .conftest import table

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SIM = ("--backend", "sim")


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def tables_csv(tmp_path: Path) -> Path:
    path = tmp_path / "tables.csv"
    # sizes: big 640,000 B, the others 64,000 B each
    save_tables(path, [table("big", rows=10_000), table("a"), table("b"), table("c")])
    return path


def test_place_on_a_topology_with_constraints(tmp_path: Path, tables_csv: Path) -> None:
    topology = tmp_path / "topo.csv"
    topology.write_text("name,memory\nlarge,1MB\nsmall,200KB\n")
    constraints = tmp_path / "rules.json"
    constraints.write_text(json.dumps({"pin": {"a": "small"}, "apart": [["b", "c"]]}))
    out = tmp_path / "placement.json"
    result = run(
        "place", "--tables", tables_csv, "--topology", topology, "--constraints", constraints,
        *SIM, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    placed = json.loads(out.read_text())["placement"]
    assert placed["big"] == "large"  # only the large device holds it
    assert placed["a"] == "small"
    assert placed["b"] != placed["c"]


def test_place_needs_devices_or_a_topology(tables_csv: Path) -> None:
    result = run("place", "--tables", tables_csv, *SIM)
    assert result.exit_code == 2
    assert "give --devices N and --memory SIZE, or --topology FILE" in result.stderr


def test_unsatisfiable_constraints_are_one_line(tmp_path: Path, tables_csv: Path) -> None:
    constraints = tmp_path / "rules.json"
    constraints.write_text(json.dumps({"together": [["a", "b"]], "apart": [["a", "b"]]}))
    result = run(
        "place", "--tables", tables_csv, "--devices", 2, "--memory", "1MB",
        "--constraints", constraints, *SIM,
    )  # fmt: skip
    assert result.exit_code == 2
    lines = ANSI.sub("", result.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "together" in lines[0]


def test_placer_that_cannot_honour_constraints_says_so(tmp_path: Path, tables_csv: Path) -> None:
    constraints = tmp_path / "rules.json"
    constraints.write_text(json.dumps({"pin": {"a": 0}}))
    result = run(
        "place", "--tables", tables_csv, "--devices", 2, "--memory", "1MB",
        "--constraints", constraints, "--placer", "torchrec", *SIM,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "cannot honour constraints" in result.stderr


def test_evaluate_honours_constraints(tmp_path: Path) -> None:
    pool = [table(f"t{i}", rows=100 * (i + 1)) for i in range(12)]
    suite = tmp_path / "suite.json"
    generated = generate_suite(pool, SuiteConfig(1, 2, 4, 4, 2, 10**9, seed=0))
    save_suite(suite, generated)
    constraints = tmp_path / "rules.json"
    names = sorted({t.name for task in (*generated.train, *generated.test) for t in task.tables})
    constraints.write_text(json.dumps({"together": [names]}))  # each task: one device
    out = tmp_path / "eval.json"
    result = run(
        "evaluate", "--tasks", suite, "--placers", "size,random", "--constraints", constraints,
        *SIM, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for r in json.loads(out.read_text())["results"]:
        assert len(set(r["device_of"])) == 1, r


def test_many_devices_print_a_summary_unless_all(tmp_path: Path) -> None:
    path = tmp_path / "tables.csv"
    save_tables(path, [table(f"table_{i:03d}_with_a_long_name") for i in range(40)])
    devices = SUMMARY_DEVICES + 4
    common = ("place", "--tables", path, "--devices", devices, "--memory", "1GB", *SIM)
    summary = run(*common)
    assert summary.exit_code == 0, summary.output
    assert f"the {SUMMARY_DEVICES} slowest of {devices} devices" in summary.stdout
    assert "median" in summary.stdout
    full = run(*common, "--all")
    assert full.exit_code == 0, full.output
    body = [line for line in full.stdout.splitlines() if line.startswith("│ dev")]
    assert len(body) == devices  # one row per device: off a terminal nothing wraps
    assert "table_039_with_a_long_name" in full.stdout
