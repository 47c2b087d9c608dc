"""Fuzzing the real CLI with bad input: every case ends as one line, exit code 2.

Each case runs one command in-process (typer's runner) inside a workspace of valid and
broken input files, and checks the project's rules for bad input: exit code 2, nothing
on stdout, exactly one line on stderr starting with ``error:``, no traceback, and the
workspace byte-identical afterwards (no output file written, no temporary file left, no
input overwritten).
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamshard.backends.sim.profile import load_profile
from dreamshard.cli.app import app
from dreamshard.data.tables import CSV_COLUMNS, load_tables, save_tables, table_to_record
from dreamshard.data.tasks import SuiteConfig, generate_suite, make_devices, make_task, save_suite
from dreamshard.evaluation.placement_file import PlacementFile, write_placement_file
from dreamshard.types import Placement, PlacementCost, StageCosts

from .conftest import table

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def write_csv(path: Path, **changes: str) -> None:
    """A one-table CSV table file with ``changes`` to its fields (written as given)."""
    record = {**table_to_record(table("a", rows=1000, dim=8)), **changes}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerow(record)


@dataclass(frozen=True)
class Case:
    """One bad command line.

    Attributes:
        command: The command line as a shell would split it (``''`` is an empty
            argument); ``{ws}`` is the workspace folder.
        part: Text the error line must contain.
        xfail: Why the case fails today, naming the item and the file to fix; "" if it
            passes.
    """

    command: str
    part: str
    xfail: str = ""

    def args(self, workspace: Path) -> list[str]:
        """The command line's arguments, in ``workspace``."""
        return shlex.split(self.command.replace("{ws}", str(workspace)))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """Valid and broken input files in one folder (seeded: the suite is drawn)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    pool = [table(f"t{i}", rows=1000, dim=8) for i in range(8)]
    save_tables(ws / "tables.csv", pool)
    save_tables(ws / "tables.json", pool)
    config = SuiteConfig(
        num_train=2, num_test=2, min_tables=2, max_tables=2, num_devices=2,
        memory_bytes=10**9, seed=0,
    )  # fmt: skip
    save_suite(ws / "suite.json", generate_suite(pool, config))
    task = make_task("tables", load_tables(ws / "tables.csv"), make_devices(2, 10**9))
    placement = Placement(tuple(i % 2 for i in range(len(pool))))
    cost = PlacementCost(per_device=(StageCosts(0.1, 0.1, 0.1, 0.1),) * 2, backend="sim")
    record = PlacementFile.of(
        task, placement, cost, placer="size", backend="sim",
        tables_file=ws / "tables.csv", place_time_ms=0.1,
    )  # fmt: skip
    write_placement_file(ws / "placement.json", record)
    good = json.loads((ws / "placement.json").read_text())
    for name, device_of in {
        "range": [0, 1, 0, 1, 0, 1, 0, 9],
        "length": [0, 1],
        "type": [0, 1, 0, 1, 0, 1, 0, "1"],
        "disagree": [1, 1, 0, 1, 0, 1, 0, 1],
    }.items():
        (ws / f"device_of_{name}.json").write_text(json.dumps({**good, "device_of": device_of}))
    profile = load_profile("cpu-zen4").to_dict()
    profile["comm"]["bandwidth_gbps"] = 0
    (ws / "profile_zero_bw.json").write_text(json.dumps(profile))
    # A valid profile of the user's own, for which no model is packaged.
    (ws / "my-cpu.json").write_text(json.dumps(load_profile("cpu-zen4").to_dict()))
    write_csv(ws / "nan.csv", pooling_factor="nan")
    write_csv(ws / "negative.csv", rows="-1000")
    write_csv(ws / "huge.csv", rows="1" + "0" * 40)
    write_csv(ws / "zero_dim.csv", dim="0")
    (ws / "empty.csv").write_bytes(b"")
    (ws / "empty.json").write_bytes(b"")
    (ws / "empty.toml").write_bytes(b"")
    for name in ("binary.csv", "binary.json", "binary.toml"):
        (ws / name).write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x80" * 8)
    (ws / "deep.json").write_text("[" * 100_000)
    (ws / "deep.toml").write_text("a = " + "[" * 100_000)
    (ws / "list.json").write_text("[1, 2, 3]")
    (ws / "string.json").write_text('"tables"')
    (ws / "file.txt").write_text("not a folder\n")
    return ws


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones too) with its bytes (None: a folder)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


#: Valid place/evaluate/export arguments the cases extend.
PLACE = "place --tables {ws}/tables.csv --devices 2 --memory 1GB --backend sim"
EVALUATE = "evaluate --tasks {ws}/suite.json --backend sim"
EXPORT = "export --placement {ws}/placement.json"
TRAIN = "train --tasks {ws}/suite.json --out {ws}/model --backend sim"

CASES: dict[str, Case] = {
    # gen-tables, gen-tasks
    "gen-tables empty out": Case("gen-tables --out ''", "--out: empty path"),
    "gen-tables num word": Case(
        "gen-tables --num four --out {ws}/x.csv", "--num: 'four' is not a valid integer"
    ),
    "gen-tables num negative": Case("gen-tables --num -5 --out {ws}/x.csv", "--num"),
    "gen-tables out in proc": Case("gen-tables --num 5 --out /proc/x.csv", "/proc/x.csv"),
    "gen-tables out under a file": Case(
        "gen-tables --num 5 --out {ws}/file.txt/x.csv", "is not a folder"
    ),
    "gen-tasks out is tables": Case(
        "gen-tasks --tables {ws}/tables.json --out {ws}/tables.json", "is the input file"
    ),
    "gen-tasks binary tables": Case(
        "gen-tasks --tables {ws}/binary.csv --out {ws}/s.json", "not a UTF-8 text file"
    ),
    "gen-tasks empty tables": Case("gen-tasks --tables {ws}/empty.csv --out {ws}/s.json", "empty"),
    "gen-tasks deep tables": Case(
        "gen-tasks --tables {ws}/deep.json --out {ws}/s.json", "nested too deeply"
    ),
    # place
    "place out is tables": Case(f"{PLACE} --out {{ws}}/tables.csv", "is the input file"),
    "place out in proc": Case(f"{PLACE} --out /proc/x.json", "--out /proc/x.json: cannot write"),
    "place out under a file": Case(f"{PLACE} --out {{ws}}/file.txt/x.json", "is not a folder"),
    "place out empty": Case(f"{PLACE} --out ''", "--out: empty path"),
    "gen-tasks count underscore": Case(
        "gen-tasks --tables {ws}/tables.csv --out {ws}/s.json --tables-per-task 1_0",
        "--tables-per-task",
    ),
    "place devices huge": Case(
        f"place --tables {{ws}}/tables.csv --devices {'9' * 30} --memory 1GB", "devices"
    ),
    "place windows huge": Case(
        f"place --tables {{ws}}/tables.csv --devices 2 --memory 1GB --windows {10**30}",
        "windows",
    ),
    "place topology missing": Case(
        "place --tables {ws}/tables.csv --topology {ws}/nope.csv --backend sim", "nope.csv"
    ),
    "place topology and devices": Case(
        f"{PLACE} --topology {{ws}}/tables.csv", "drop --devices and --memory"
    ),
    "place constraints binary": Case(f"{PLACE} --constraints {{ws}}/binary.json", "binary.json"),
    "place out is a folder": Case(f"{PLACE} --out {{ws}}", "is a folder"),
    "place devices word": Case(
        "place --tables {ws}/tables.csv --devices four --memory 1GB",
        "--devices: 'four' is not a valid integer",
    ),
    "place devices negative": Case(
        "place --tables {ws}/tables.csv --devices -2 --memory 1GB", "devices must be at least 1"
    ),
    "place memory nan": Case(
        "place --tables {ws}/tables.csv --devices 2 --memory nanGB", "--memory"
    ),
    "place memory negative": Case(
        "place --tables {ws}/tables.csv --devices 2 --memory -1GB", "--memory"
    ),
    "place batch size zero": Case(f"{PLACE} --batch-size 0", "batch"),
    "place seed negative": Case(
        f"{PLACE} --placer random --seed -1", "--seed: Input should be greater than or equal to 0"
    ),
    "place seed huge": Case(f"{PLACE} --seed {10**30}", "--seed: Input should be less than"),
    "place samples negative": Case(f"{PLACE} --samples -1", "--samples: Input should be greater"),
    "place binary tables": Case(
        "place --tables {ws}/binary.csv --devices 2 --memory 1GB", "not a UTF-8 text file"
    ),
    "place empty csv": Case("place --tables {ws}/empty.csv --devices 2 --memory 1GB", "empty"),
    "place empty json": Case(
        "place --tables {ws}/empty.json --devices 2 --memory 1GB", "invalid JSON"
    ),
    "place deep json": Case(
        "place --tables {ws}/deep.json --devices 2 --memory 1GB", "nested too deeply"
    ),
    "place tables a list of numbers": Case(
        "place --tables {ws}/list.json --devices 2 --memory 1GB", "list.json"
    ),
    "place tables a string": Case(
        "place --tables {ws}/string.json --devices 2 --memory 1GB", "string.json"
    ),
    "place nan pooling": Case(
        "place --tables {ws}/nan.csv --devices 2 --memory 1GB", "'pooling_factor' must be finite"
    ),
    "place negative rows": Case(
        "place --tables {ws}/negative.csv --devices 2 --memory 1GB", "'rows' must be positive"
    ),
    "place huge rows": Case(
        "place --tables {ws}/huge.csv --devices 2 --memory 1GB --backend sim", "table 'a'"
    ),
    "place zero dim": Case(
        "place --tables {ws}/zero_dim.csv --devices 2 --memory 1GB", "'dim' must be positive"
    ),
    "place unknown placer": Case(f"{PLACE} --placer best", "unknown placer 'best'"),
    "place unknown backend": Case(
        "place --tables {ws}/tables.csv --devices 2 --memory 1GB --backend gpu9000",
        "unknown backend 'gpu9000'",
    ),
    "place binary profile": Case(f"{PLACE} --profile {{ws}}/binary.json", "not a UTF-8 text"),
    "place profile zero bandwidth": Case(
        f"{PLACE} --profile {{ws}}/profile_zero_bw.json",
        "comm.bandwidth_gbps must be a finite number > 0",
    ),
    "place deep profile": Case(f"{PLACE} --profile {{ws}}/deep.json", "nested too deeply"),
    "place unknown profile": Case(f"{PLACE} --profile zen9", "unknown simulator profile"),
    "place unknown option": Case("place --tables {ws}/tables.csv --colour red", "No such option"),
    "place memory empty": Case(
        "place --tables {ws}/tables.csv --devices 2 --memory ''", "--memory"
    ),
    "place model is a file": Case(
        f"{PLACE} --placer dreamshard --model {{ws}}/file.txt", "file.txt"
    ),
    "place dreamshard, no packaged model for the profile": Case(
        f"{PLACE} --placer dreamshard --profile {{ws}}/my-cpu.json", "no packaged model"
    ),
    "place missing option": Case("place --devices 2", "Missing option '--tables'"),
    # evaluate
    "evaluate out is tasks": Case(f"{EVALUATE} --out {{ws}}/suite.json", "is the input file"),
    "evaluate out in proc": Case(f"{EVALUATE} --out /proc/x.json", "cannot write"),
    "evaluate placers empty": Case(f"{EVALUATE} --placers ''", "--placers: no placer named"),
    "evaluate placers commas": Case(f"{EVALUATE} --placers ,,", "--placers: no placer named"),
    "evaluate placers unknown": Case(f"{EVALUATE} --placers size,nope", "nope"),
    "evaluate placers twice": Case(f"{EVALUATE} --placers size,size", "named twice"),
    "evaluate max tasks negative": Case(
        f"{EVALUATE} --max-tasks -1", "--max-tasks must be at least 1, got -1"
    ),
    "evaluate max tasks zero": Case(
        f"{EVALUATE} --max-tasks 0", "--max-tasks must be at least 1, got 0"
    ),
    "evaluate unknown split": Case(f"{EVALUATE} --split dev", "unknown split 'dev'"),
    "evaluate binary tasks": Case("evaluate --tasks {ws}/binary.json", "not a UTF-8 text file"),
    "evaluate deep tasks": Case("evaluate --tasks {ws}/deep.json", "nested too deeply"),
    "evaluate tasks a list": Case("evaluate --tasks {ws}/list.json", "list.json"),
    "evaluate tasks is a table file": Case(
        "evaluate --tasks {ws}/tables.json", "not a task suite file"
    ),
    "evaluate out empty": Case(f"{EVALUATE} --out ''", "--out: empty path"),
    # export
    "export out is placement": Case(f"{EXPORT} --out {{ws}}/placement.json", "is the input file"),
    "export out is its tables file": Case(f"{EXPORT} --out {{ws}}/tables.csv", "is the input file"),
    "export out under a file": Case(f"{EXPORT} --out {{ws}}/file.txt/plan.json", "not a folder"),
    "export empty placement path": Case(
        "export --placement '' --out {ws}/plan.json", "--placement: empty path"
    ),
    "export deep placement": Case(
        "export --placement {ws}/deep.json --out {ws}/plan.json", "nested too deeply"
    ),
    "export binary placement": Case(
        "export --placement {ws}/binary.json --out {ws}/plan.json", "not a UTF-8 text file"
    ),
    "export placement a list": Case(
        "export --placement {ws}/list.json --out {ws}/plan.json", "expected a placement object"
    ),
    **{
        f"export device_of {name}": Case(
            f"export --placement {{ws}}/device_of_{name}.json --out {{ws}}/plan.json",
            "field 'device_of'",
        )
        for name in ("range", "length", "type", "disagree")
    },
    "export binary tables": Case(
        f"{EXPORT} --tables {{ws}}/binary.csv --out {{ws}}/plan.json", "not a UTF-8 text file"
    ),
    # train
    "train binary tasks": Case(
        "train --tasks {ws}/binary.json --out {ws}/model", "not a UTF-8 text file"
    ),
    "train out is a file": Case(
        "train --tasks {ws}/suite.json --out {ws}/file.txt --backend sim", "file.txt"
    ),
    "train iterations negative": Case(f"{TRAIN} --iterations -1", "iterations"),
    "train lr nan": Case(f"{TRAIN} --lr nan", "learning_rate must be finite"),
    "train lr word": Case(f"{TRAIN} --lr fast", "--lr: 'fast' is not a valid number"),
    # benchmark
    "benchmark binary config": Case(
        "benchmark --config {ws}/binary.toml --out {ws}/bench", "not a UTF-8 text file"
    ),
    "benchmark deep json config": Case(
        "benchmark --config {ws}/deep.json --out {ws}/bench", "nested too deeply"
    ),
    "benchmark deep toml config": Case(
        "benchmark --config {ws}/deep.toml --out {ws}/bench", "nested too deeply"
    ),
    "benchmark empty json config": Case(
        "benchmark --config {ws}/empty.json --out {ws}/bench", "invalid JSON"
    ),
    "benchmark out in proc": Case(
        "benchmark --quick --out /proc/bench", "--out /proc/bench/results.json: cannot write"
    ),
    "benchmark empty config path": Case("benchmark --config ''", "--config: empty path"),
    "benchmark out is a file": Case(
        "benchmark --config {ws}/empty.toml --out {ws}/file.txt", "exists and is not a folder"
    ),
    # calibrate, calibrate-comm
    "calibrate-comm device tpu": Case(
        "calibrate-comm --out {ws}/p.json --device tpu", "--device 'tpu': use one of cpu, cuda"
    ),
    "calibrate-comm binary profile": Case(
        "calibrate-comm --out {ws}/p.json --profile {ws}/binary.json", "not a UTF-8 text file"
    ),
    "calibrate-comm zero bandwidth profile": Case(
        "calibrate-comm --out {ws}/p.json --profile {ws}/profile_zero_bw.json",
        "comm.bandwidth_gbps",
    ),
    "calibrate-comm report is out": Case(
        "calibrate-comm --out {ws}/p.json --report {ws}/p.json", "--report"
    ),
    "calibrate-comm devices word": Case(
        "calibrate-comm --out {ws}/p.json --devices two", "--devices: 'two' is not a valid integer"
    ),
    "calibrate-comm batch sizes words": Case(
        "calibrate-comm --out {ws}/p.json --batch-sizes a,b", "--batch-sizes"
    ),
    "calibrate report is out": Case("calibrate --out {ws}/p.json --report {ws}/p.json", "--report"),
    "calibrate out in proc": Case("calibrate --out /proc/p.json", "cannot write"),
    "unknown command": Case("shard-everything", "No such command"),
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n,
            marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [],
        )
        for n, c in CASES.items()
    ],
)
def test_bad_input_is_one_line(workspace: Path, name: str) -> None:
    bad = CASES[name]
    args = bad.args(workspace)
    before = snapshot(workspace)
    result = CliRunner().invoke(app, args)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 2, output
    assert result.stdout == "", result.stdout
    lines = [line for line in ANSI.sub("", result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines[0]
    assert bad.part in lines[0], lines[0]
    assert snapshot(workspace) == before


@pytest.mark.parametrize(
    "name", ["place devices word", "place out empty", "calibrate-comm device tpu"]
)
def test_bad_input_is_one_line_from_the_installed_entry_point(workspace: Path, name: str) -> None:
    # The console script runs the app itself (not typer's test runner): same one line.
    bad = CASES[name]
    before = snapshot(workspace)
    done = subprocess.run(
        [sys.executable, "-m", "dreamshard", *bad.args(workspace)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = [line for line in ANSI.sub("", done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and bad.part in lines[0], lines
    assert snapshot(workspace) == before
