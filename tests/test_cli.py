"""The real CLI, run in-process: one-line errors with exit code 2, and tiny happy paths."""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner, Result

from dreamshard.backends import BackendOptions
from dreamshard.cli.app import app
from dreamshard.cli.options import BackendChoice, OutOpt, backend_options
from dreamshard.data.tables import CSV_COLUMNS, load_tables, save_tables, table_to_record
from dreamshard.data.tasks import load_suite

from .conftest import table

#: Tiny measurement settings for the few commands that run FBGEMM.
FAST = ["--backend", "fbgemm", "--windows", "1", "--calls", "1", "--batch-size", "64"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(*args: str | Path | int) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def records() -> list[dict[str, Any]]:
    """t0 and t1 hold 32,000 bytes each, t2 128,000 bytes."""
    tables = [table("t0", rows=1000, dim=8), table("t1", rows=1000, dim=8), table("t2", 4000, 8)]
    return [table_to_record(t) for t in tables]


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def tables_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "pool.csv", records())


def assert_one_line_error(result: Result, *parts: str) -> str:
    """Exit code 2, nothing on stdout, one line on stderr naming each of ``parts``."""
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = ANSI.sub("", result.stderr).splitlines()
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith("error: ")
    for part in parts:
        assert part in line, (part, line)
    return line


# -- bad table files, run through `place` ---------------------------------------------------


def _set(index: int, field: str, value: Any) -> list[dict[str, Any]]:
    rows = records()
    rows[index][field] = value
    return rows


BAD_TABLES = {
    "missing": (_set(1, "rows", ""), ["line 3", "'t1'", "field 'rows' is missing"]),
    "negative": (_set(0, "dim", -8), ["line 2", "'t0'", "field 'dim' must be positive"]),
    "zero": (_set(2, "pooling_factor", 0), ["line 4", "'t2'", "'pooling_factor' must be positive"]),
    "non-numeric": (_set(1, "rows", "lots"), ["line 3", "'t1'", "field 'rows' must be a number"]),
    "nan": (
        _set(2, "pooling_factor", "nan"),
        ["line 4", "'t2'", "'pooling_factor' must be finite"],
    ),
    "dim 6": (_set(0, "dim", 6), ["line 2", "'t0'", "field 'dim' must be a multiple of 4"]),
    "duplicate": (_set(2, "name", "t0"), ["line 4", "duplicate table name 't0'", "line 2"]),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_place_bad_table_file(tmp_path: Path, case: str) -> None:
    rows, parts = BAD_TABLES[case]
    path = write_csv(tmp_path / "pool.csv", rows)
    out = tmp_path / "out.json"
    result = run("place", "--tables", path, "--devices", 2, "--memory", "1GB", "--out", out)
    line = assert_one_line_error(result, str(path), *parts)
    assert line.startswith(f"error: {path}: ")
    assert not out.exists()


def test_place_unknown_column(tmp_path: Path) -> None:
    rows = [r | {"colour": "red"} for r in records()]
    path = write_csv(tmp_path / "pool.csv", rows, [*CSV_COLUMNS, "colour"])
    out = tmp_path / "out.json"
    result = run("place", "--tables", path, "--devices", 2, "--memory", "1GB", "--out", out)
    assert_one_line_error(result, f"{path}: line 1: unknown column 'colour'")
    assert not out.exists()


def test_place_missing_file(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    missing = tmp_path / "nope.csv"
    result = run("place", "--tables", missing, "--devices", 2, "--memory", "1GB", "--out", out)
    assert_one_line_error(result, f"{missing}: file not found")
    assert not out.exists()


def test_error_message_keeps_brackets_in_file_names(tmp_path: Path) -> None:
    # Square brackets must not be read as console markup and vanish from the message.
    missing = tmp_path / "pool[v2].csv"
    result = run("place", "--tables", missing, "--devices", 2, "--memory", "1GB")
    assert_one_line_error(result, f"{missing}: file not found")


@pytest.mark.parametrize(
    ("options", "parts"),
    [
        (["--devices", "2", "--memory", "100KB"], ["'t2' needs 128,000 bytes", "100,000 bytes"]),
        (
            ["--devices", "1", "--memory", "130KB", "--placer", "size"],
            ["tables need 192,000 bytes in all", "(130,000 bytes)"],
        ),
        (["--devices", "0", "--memory", "1GB"], ["devices must be at least 1, got 0"]),
        (["--devices", "-3", "--memory", "1GB"], ["devices must be at least 1, got -3"]),
        (["--devices", "2", "--memory", "5XB"], ["--memory: unknown unit 'xb' in '5XB'"]),
        (["--devices", "2", "--memory", "0GB"], ["--memory: must be positive, got '0GB'"]),
        (["--devices", "2", "--memory", "1GB", "--placer", "best"], ["unknown placer 'best'"]),
        (["--devices", "2", "--memory", "1GB", "--backend", "nope"], ["unknown backend 'nope'"]),
        (["--devices", "2", "--memory", "1GB", "--row-cap", "5"], ["--row-cap must be at least"]),
    ],
)
def test_place_bad_options(
    tmp_path: Path, tables_csv: Path, options: list[str], parts: list[str]
) -> None:
    out = tmp_path / "out.json"
    result = run("place", "--tables", tables_csv, *options, "--out", out)
    assert_one_line_error(result, *parts)
    assert not out.exists()


def test_failed_run_leaves_existing_output_alone(tmp_path: Path, tables_csv: Path) -> None:
    out = tmp_path / "out.json"
    out.write_text("earlier results\n")
    result = run("place", "--tables", tables_csv, "--devices", 0, "--memory", "1GB", "--out", out)
    assert_one_line_error(result, "got 0")
    assert out.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "pool.csv"]  # no temp file


def test_out_is_a_folder(tmp_path: Path, tables_csv: Path) -> None:
    result = run(
        "place", "--tables", tables_csv, "--devices", 2, "--memory", "1GB", "--out", tmp_path
    )
    assert_one_line_error(result, f"--out {tmp_path}: is a folder")


# -- other commands' errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "parts"),
    [
        (["--devices", "0"], ["--devices must be at least 1, got 0"]),
        (["--memory", "5XB"], ["--memory: unknown unit 'xb'"]),
        (["--tables-per-task", "a-b"], ["--tables-per-task: expected N or MIN-MAX, got 'a-b'"]),
        (["--tables-per-task", "2"], ["the train half of the pool has 1 tables"]),
    ],
)
def test_gen_tasks_errors(
    tmp_path: Path, tables_csv: Path, options: list[str], parts: list[str]
) -> None:
    out = tmp_path / "suite.json"
    result = run("gen-tasks", "--tables", tables_csv, "--out", out, *options)
    assert_one_line_error(result, *parts)
    assert not out.exists()


def test_gen_tasks_bad_table_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "pool.csv", _set(0, "dim", 6))
    out = tmp_path / "suite.json"
    result = run("gen-tasks", "--tables", path, "--out", out)
    assert_one_line_error(result, str(path), "line 2", "'t0'", "'dim'")
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "options", "parts"),
    [
        ("x.txt", [], ["use a .json or .csv file name"]),
        ("x.csv", ["--dims", "8,6"], ["dim 6: must be a positive multiple of 4"]),
        ("x.csv", ["--num", "0"], ["--num must be at least 1, got 0"]),
        ("x.csv", ["--max-rows", "50"], ["--max-rows must be at least 100, got 50"]),
    ],
)
def test_gen_tables_errors(tmp_path: Path, name: str, options: list[str], parts: list[str]) -> None:
    out = tmp_path / name
    result = run("gen-tables", "--num", 5, "--out", out, *options)
    assert_one_line_error(result, *parts)
    assert not out.exists()


def test_evaluate_rejects_a_table_file(tmp_path: Path, tables_csv: Path) -> None:
    tables_json = tmp_path / "pool.json"
    save_tables(tables_json, load_tables(tables_csv))
    out = tmp_path / "eval.json"
    result = run("evaluate", "--tasks", tables_json, "--out", out)
    assert_one_line_error(result, str(tables_json), "not a task suite file", "'format'")
    assert not out.exists()


# -- happy paths (real FBGEMM, tiny) -----------------------------------------------------------


def test_place_writes_json(tmp_path: Path, tables_csv: Path) -> None:
    out = tmp_path / "placement.json"
    result = run(
        "place", "--tables", tables_csv, "--devices", 2, "--memory", "1GB", *FAST, "--out", out
    )
    assert result.exit_code == 0, result.output
    # Off a terminal, progress comes as plain lines on stderr, ending with the total.
    assert "error" not in result.stderr and "Traceback" not in result.stderr
    # (A loaded machine adds one warning line after them.)
    progress = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert progress[-1].split(": ")[-1].startswith(("1/1", "2/2"))
    payload = json.loads(out.read_text())
    assert set(payload) == {
        "format", "version",
        "task", "placer", "backend", "tables_file", "devices", "devices_per_host",
        "placement", "device_of", "splits", "cost_ms", "rel_spread", "per_device",
        "place_time_ms",
    }  # fmt: skip
    assert (payload["format"], payload["version"]) == ("dreamshard-placement", 3)
    assert payload["splits"] == []
    assert payload["task"] == "pool"
    assert payload["placer"] == "size-lookup"
    assert payload["backend"] == "fbgemm"
    assert payload["tables_file"] == str(tables_csv)
    assert payload["devices"] == [
        {"name": "dev0", "memory_bytes": 10**9},
        {"name": "dev1", "memory_bytes": 10**9},
    ]
    device_of = payload["device_of"]
    assert len(device_of) == 3 and set(device_of) <= {0, 1}
    assert payload["placement"] == {f"t{i}": f"dev{d}" for i, d in enumerate(device_of)}
    stages = {"fwd_comp_ms", "fwd_comm_ms", "bwd_comm_ms", "bwd_comp_ms"}
    assert len(payload["per_device"]) == 2
    assert all(set(c) == stages for c in payload["per_device"])
    assert payload["cost_ms"] == pytest.approx(max(sum(c.values()) for c in payload["per_device"]))
    assert payload["cost_ms"] > 0
    assert f"wrote {out}" in result.stdout


def test_gen_tables_gen_tasks_evaluate(tmp_path: Path) -> None:
    pool, suite, out = tmp_path / "x.csv", tmp_path / "suite.json", tmp_path / "eval.json"
    result = run("gen-tables", "--num", 20, "--max-rows", 2000, "--out", pool)
    assert result.exit_code == 0, result.output
    tables = load_tables(pool)
    assert len(tables) == 20 and max(t.rows for t in tables) <= 2000

    result = run(
        "gen-tasks", "--tables", pool, "--out", suite, "--num-train", 2, "--num-test", 1,
        "--tables-per-task", "3", "--devices", 2, "--memory", "1GB",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded = load_suite(suite)
    assert [len(loaded.train), len(loaded.test)] == [2, 1]
    assert all(t.num_tables == 3 and t.num_devices == 2 for t in (*loaded.train, *loaded.test))

    result = run(
        "evaluate", "--tasks", suite, *FAST, "--max-tasks", 1, "--placers", "size,dim",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # Off a terminal, progress comes as plain lines on stderr, ending with the total.
    assert "error" not in result.stderr and "Traceback" not in result.stderr
    # (A loaded machine adds one warning line after them.)
    progress = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert progress[-1].split(": ")[-1].startswith(("1/1", "2/2"))
    payload = json.loads(out.read_text())
    assert payload["backend"] == "fbgemm"
    assert payload["placers"] == ["size", "dim"]
    assert payload["tasks"] == ["test-0"] == payload["common_tasks"]
    assert payload["best_baseline"] in ("size", "dim")
    assert [s["placer"] for s in payload["summary"]] == ["size", "dim"]
    for s in payload["summary"]:
        assert s["mean_cost_ms"] > 0 and s["failures"] == 0
    assert [(r["placer"], r["task"]) for r in payload["results"]] == [
        ("size", "test-0"),
        ("dim", "test-0"),
    ]
    for r in payload["results"]:
        assert len(r["device_of"]) == 3 and len(r["per_device"]) == 2
        assert r["cost_ms"] > 0 and r["error"] is None
    assert payload["config"]["split"] == "test"
    assert payload["config"]["batch_size"] == 64
    assert payload["config"]["tasks_file"] == str(suite)


# -- the backend-option block ------------------------------------------------------------

BLOCK_FLAGS = [
    "--backend", "--batch-size", "--profile", "--row-cap", "--windows", "--calls", "--device",
    "--kernel", "--seed",
]  # fmt: skip


def _click_params(command: str) -> dict[str, Any]:
    group = typer.main.get_command(app)
    return {p.opts[0]: p for p in group.commands[command].params}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("command", "windows", "calls"), [("place", 8, 8), ("evaluate", 8, 8), ("train", 4, 6)]
)
def test_backend_block_on_every_command_with_its_defaults(
    command: str, windows: int, calls: int
) -> None:
    params = _click_params(command)
    assert set(BLOCK_FLAGS) <= set(params)
    defaults = {flag: params[flag].default for flag in BLOCK_FLAGS}
    assert defaults == {
        "--backend": "fbgemm", "--batch-size": 4096, "--profile": "cpu-zen4",
        "--row-cap": None, "--windows": windows, "--calls": calls, "--device": "cpu",
        "--kernel": None, "--seed": 0,
    }  # fmt: skip
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for flag in [*BLOCK_FLAGS, *params]:
        assert flag in result.output, flag


def test_backend_block_decorator_with_postponed_annotations() -> None:
    # This module has `from __future__ import annotations` (so the names in annotations
    # are imported at module level, as typer needs): typer must still see the command's
    # own options and the block's, and the command gets one BackendChoice.
    got: list[tuple[BackendChoice, Path | None, int]] = []
    tiny = typer.Typer()

    @tiny.command()
    @backend_options(windows=3, calls=2)
    def cmd(
        *,
        count: Annotated[int, typer.Option("--count")],
        backend: BackendChoice,
        out: OutOpt = None,
    ) -> None:
        got.append((backend, out, count))

    result = CliRunner().invoke(tiny, ["--count", "5", "--backend", "sim", "--seed", "7"])
    assert result.exit_code == 0, result.output
    ((choice, out, count),) = got
    assert (choice.name, out, count) == ("sim", None, 5)
    assert choice.options == BackendOptions(seed=7, windows=3, calls_per_window=2)
    assert choice.seed == 7

    got.clear()
    result = CliRunner().invoke(
        tiny, ["--count", "1", "--windows", "9", "--calls", "4", "--row-cap", "500",
               "--kernel", "torch-fused", "--device", "cuda", "--out", "x.json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ((choice, out, _),) = got
    assert out == Path("x.json")
    assert (choice.options.windows, choice.options.calls_per_window) == (9, 4)
    assert (choice.options.row_cap, choice.options.kernel) == (500, "torch-fused")
    assert choice.options.device == "cuda"


def test_backend_block_needs_a_keyword_only_backend_parameter() -> None:
    def no_slot(count: int = 1) -> None: ...

    def clash(*, seed: int = 0, backend: object) -> None: ...

    with pytest.raises(TypeError, match="keyword-only parameter 'backend'"):
        backend_options(windows=1, calls=1)(no_slot)
    with pytest.raises(TypeError, match="seed"):
        backend_options(windows=1, calls=1)(clash)


@pytest.mark.parametrize("command", ["place", "evaluate", "train"])
def test_row_cap_checked_on_every_command(tmp_path: Path, command: str) -> None:
    required: dict[str, list[str | Path | int]] = {
        "place": ["--tables", tmp_path / "x.csv", "--devices", 2, "--memory", "1GB"],
        "evaluate": ["--tasks", tmp_path / "s.json"],
        "train": ["--tasks", tmp_path / "s.json", "--out", tmp_path / "m"],
    }
    result = run(command, *required[command], "--row-cap", 5)
    assert_one_line_error(result, "--row-cap must be at least 100, got 5")


# -- outputs that would be lost or would replace an input (issue 12) ---------------------------

SIM = ["--backend", "sim"]


@pytest.fixture
def suite_json(tmp_path: Path) -> Path:
    from dreamshard.data.tasks import SuiteConfig, generate_suite, save_suite

    pool = [table(f"t{i}", rows=1000, dim=8) for i in range(8)]
    config = SuiteConfig(
        num_train=2, num_test=2, min_tables=2, max_tables=2, num_devices=2,
        memory_bytes=10**9, seed=0,
    )  # fmt: skip
    path = tmp_path / "suite.json"
    save_suite(path, generate_suite(pool, config))
    return path


def test_place_refuses_out_equal_to_tables(tables_csv: Path) -> None:
    before = tables_csv.read_bytes()
    result = run(
        "place", "--tables", tables_csv, "--devices", 2, "--memory", "1GB", *SIM,
        "--out", tables_csv,
    )  # fmt: skip
    assert_one_line_error(
        result, f"--out {tables_csv}: is the input file {tables_csv}; writing there would replace"
    )
    assert tables_csv.read_bytes() == before


def test_evaluate_refuses_out_equal_to_tasks(
    suite_json: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same file by another name: relative to the working folder.
    monkeypatch.chdir(suite_json.parent)
    before = suite_json.read_bytes()
    result = run("evaluate", "--tasks", suite_json, *SIM, "--out", "suite.json")
    assert_one_line_error(result, "--out suite.json: is the input file")
    assert suite_json.read_bytes() == before


@pytest.mark.parametrize("where", ["/proc/x.json", "file.txt/x.json"])
@pytest.mark.parametrize("command", ["place", "evaluate"])
def test_unwritable_out_is_refused_before_the_work(
    tmp_path: Path, tables_csv: Path, suite_json: Path, command: str, where: str
) -> None:
    (tmp_path / "file.txt").write_text("keep\n")
    out = where if where.startswith("/") else str(tmp_path / where)
    inputs: dict[str, list[str | Path | int]] = {
        "place": ["--tables", tables_csv, "--devices", 2, "--memory", "1GB"],
        "evaluate": ["--tasks", suite_json, "--placers", "size"],
    }
    result = run(command, *inputs[command], *SIM, "--out", out)
    # Nothing on stdout: no results printed that are then lost.
    assert_one_line_error(result, f"--out {out}: cannot write here (")
    assert (tmp_path / "file.txt").read_text() == "keep\n"


def test_final_write_failure_is_one_line(
    tables_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The folder becomes unwritable between the check and the write (a full disk, say).
    out = tmp_path / "out.json"
    real = tempfile.mkstemp
    calls: list[int] = []

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        calls.append(1)
        if len(calls) > 1:  # the first call is the up-front check
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    result = run(
        "place", "--tables", tables_csv, "--devices", 2, "--memory", "1GB", *SIM, "--out", out
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = ANSI.sub("", result.stderr).splitlines()
    assert line == f"error: {out}: cannot write (No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.csv"]


def test_outputs_follow_the_umask(tmp_path: Path, tables_csv: Path) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "placement.json"
        result = run(
            "place", "--tables", tables_csv, "--devices", 2, "--memory", "1GB", *SIM,
            "--out", out,
        )  # fmt: skip
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


# -- option values (issue 12) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--placers", ""], "--placers: no placer named in ''"),
        (["--placers", ",,"], "--placers: no placer named in ',,'"),
        (["--placers", " , "], "--placers: no placer named in ' , '"),
        (["--max-tasks", "-1"], "--max-tasks must be at least 1, got -1"),
        (["--max-tasks", "0"], "--max-tasks must be at least 1, got 0"),
        (
            ["--devices-per-host", "3"],
            "--devices-per-host 3 does not divide the 2 devices into hosts of equal size",
        ),
    ],
)
def test_evaluate_bad_selection(suite_json: Path, options: list[str], message: str) -> None:
    result = run("evaluate", "--tasks", suite_json, *SIM, *options)
    assert assert_one_line_error(result) == f"error: {message}"


def test_evaluate_on_hosts_runs_the_suite_on_them(suite_json: Path) -> None:
    # 2 devices as 2 hosts of 1: nothing needs a table-row-wise split, so it places.
    result = run("evaluate", "--tasks", suite_json, *SIM, "--placers", "size-lookup",
                 "--devices-per-host", "1")  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["place", "--devices", "four"], "--devices: 'four' is not a valid integer"),
        (["place", "--devices=four"], "--devices: 'four' is not a valid integer"),
        (["evaluate", "--max-tasks", "1.5"], "--max-tasks: '1.5' is not a valid integer"),
        (["place", "--out", ""], "--out: empty path"),
        (["place", "--out="], "--out: empty path"),
        (["gen-tables", "--out", " "], "--out: empty path"),
        (["export", "--placement", "", "--out", "x.json"], "--placement: empty path"),
        (["place", "--tables", "x.csv", "--bogus", "1"], "No such option: --bogus"),
        (["place", "--devices", "2"], "Missing option '--tables'"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    line = assert_one_line_error(run(*args))
    assert line == f"error: {message}" or line.startswith(f"error: {message} ")


def test_calibrate_comm_checks_the_device_before_printing(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    result = run("calibrate-comm", "--out", out, "--device", "tpu")
    assert assert_one_line_error(result) == "error: --device 'tpu': use one of cpu, cuda"
    assert not out.exists()


def test_help_still_works() -> None:
    result = run("place", "--help")
    assert result.exit_code == 0 and "--tables" in result.output
    result = run()
    assert "Usage" in result.output and "Traceback" not in result.output


def test_os_errors_are_one_line(tables_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A disk failing mid-read is no bad input, but must not end in a traceback either.
    def failing(path: Path) -> None:
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr("dreamshard.cli.place_commands.load_tables", failing)
    result = run("place", "--tables", tables_csv, "--devices", 2, "--memory", "1GB", *SIM)
    assert assert_one_line_error(result) == f"error: {tables_csv}: Input/output error"


# -- split tables ------------------------------------------------------------------------


def test_place_splits_a_table_no_device_holds_and_exports_it(
    tables_csv: Path, tmp_path: Path
) -> None:
    # t2 (128,000 bytes) fits no 100 KB device; row blocks of 64,000 do.
    out, plan = tmp_path / "placement.json", tmp_path / "plan.json"
    args = ["place", "--tables", tables_csv, "--devices", "2", "--memory", "100KB"]
    result = run(*args, "--placer", "dreamshard", "--backend", "sim", "--out", out)
    assert result.exit_code == 0, result.output
    assert "t2#r0" in result.stdout and "t2 (4,000 rows) row-wise: 2 blocks" in result.stdout
    payload = json.loads(out.read_text())
    assert {"table": "t2", "kind": "row", "sizes": [2000, 2000]} in payload["splits"]
    exported = run("export", "--placement", out, "--out", plan)
    assert exported.exit_code == 0, exported.output
    tables = json.loads(plan.read_text())["modules"][""]["tables"]
    (t2,) = [t for t in tables if t["name"] == "t2"]
    assert (t2["sharding"], t2["ranks"], t2["shard_rows"]) == ("row_wise", [0, 1], [2000, 2000])
    # Whole tables only: the table is named with what it needs and how to allow splits.
    whole = run(*args, "--placer", "dreamshard", "--backend", "sim", "--sharding", "table")
    assert_one_line_error(whole, "table 't2' needs 128,000 bytes", "--sharding auto")
    bad = run(*args, "--placer", "dreamshard", "--backend", "sim", "--sharding", "diagonal")
    assert_one_line_error(bad, "unknown sharding 'diagonal'")
    rule = run(*args, "--placer", "size-lookup", "--backend", "sim", "--sharding", "row")
    assert_one_line_error(rule, "placer 'size-lookup' places whole tables", "torchrec-all")


def test_place_on_hosts_splits_table_row_wise_where_row_wise_does_not_fit(
    tables_csv: Path, tmp_path: Path
) -> None:
    # t2 (128,000 bytes): a row block on each of 4 devices (32,000) fits neither of the
    # 20 KB devices of host 0; host 1's 100 KB devices hold its two halves.
    topology = tmp_path / "topo.csv"
    topology.write_text("name,memory\ng0,20KB\ng1,20KB\ng2,100KB\ng3,100KB\n")
    out = tmp_path / "placement.json"
    args = ["place", "--tables", tables_csv, "--topology", topology, "--placer", "dreamshard"]
    result = run(*args, "--backend", "sim", "--devices-per-host", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert "t2 (4,000 rows) table-row-wise on host 1: 2 blocks of 2,000 rows" in result.stdout
    payload = json.loads(out.read_text())
    assert payload["devices_per_host"] == 2
    split = {"table": "t2", "kind": "table_row", "sizes": [2000, 2000], "host": 1}
    assert split in payload["splits"]
    assert payload["placement"]["t2#h0"] == "g2" and payload["placement"]["t2#h1"] == "g3"
    plan = tmp_path / "plan.json"
    exported = run("export", "--placement", out, "--out", plan)
    assert exported.exit_code == 0, exported.output
    written = json.loads(plan.read_text())
    (t2,) = [t for t in written["modules"][""]["tables"] if t["name"] == "t2"]
    assert written["local_world_size"] == 2
    assert (t2["sharding"], t2["ranks"], t2["shard_rows"]) == ("table_row_wise", [2, 3], [2000] * 2)
    bad = run(*args, "--backend", "sim", "--devices-per-host", "3")
    assert_one_line_error(bad, "--devices-per-host 3", "4 devices")
