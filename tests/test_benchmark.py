"""The benchmark end to end on a tiny config, its config validation, the packaged default
config, typed results read back from results.json, and its CLI."""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from dreamshard.bench.config import (
    DEFAULT_CONFIG_NAME,
    DEFAULT_CONFIG_PACKAGE,
    default_config_text,
    load_config,
    parse_config,
)
from dreamshard.bench.plots import write_plots
from dreamshard.bench.report import render_report
from dreamshard.bench.results import BenchmarkResults, load_results
from dreamshard.bench.runner import run_benchmark
from dreamshard.cli.app import app
from dreamshard.errors import InputError
from dreamshard.method.checkpoint import DreamShardModel

ANSI = re.compile(r"\x1b\[[0-9;]*m")

TRAIN = {
    "iterations": 2,
    "measurements_per_iteration": 6,
    "cost_steps": 5,
    "cost_batch_size": 8,
    "policy_batches": 2,
    "episodes_per_batch": 4,
}

#: Two families, two suites, a handful of tables: seconds end to end.
TINY: dict[str, Any] = {
    "seed": 0,
    "num_train_tasks": 3,
    "num_test_tasks": 2,
    "placers": ["random", "size", "lookup", "torchrec", "rnn", "dreamshard"],
    "breakdown_suite": "s6x2",
    "backend": {"name": "sim"},
    "pool": {"num_tables": 60},
    "rnn": {"budget": 10, "samples_per_update": 5},
    "families": [
        {"name": "f2", "tables": [4, 6], "devices": 2, "memory": "1GB", "train": TRAIN},
        {"name": "f3", "tables": 6, "devices": 3, "memory": "1GB", "train": TRAIN},
    ],
    "suites": [
        {"name": "s6x2", "tables": 6, "devices": 2, "memory": "1GB", "family": "f2"},
        {"name": "s6x3", "tables": 6, "devices": 3, "memory": "1GB", "family": "f3"},
    ],
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """TINY with one field (dotted path, list indices as numbers) set to ``value``."""
    data = copy.deepcopy(TINY)
    *parents, last = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return data


def test_tiny_benchmark_end_to_end(tmp_path: Path) -> None:
    lines: list[str] = []
    results = run_benchmark(parse_config(TINY, "tiny"), tmp_path, "tiny", log=lines.append)
    for name in ("results.json", "report.md", "config.json"):
        assert (tmp_path / name).is_file(), name
    for plot in (
        "cost_per_suite.png",
        "stage_breakdown.png",
        "training_curve.png",
        "generalisation.png",
    ):
        assert (tmp_path / "plots" / plot).stat().st_size > 1000, plot
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["format"] == "dreamshard-benchmark"
    assert set(saved["suites"]) == {"s6x2", "s6x3"}
    assert set(saved["families"]) == {"f2", "f3"}
    for family in saved["families"].values():
        assert family["measurements"] == 12
        assert len(family["history"]) == 2
    for suite in saved["suites"].values():
        assert suite["main_placers"] == [
            "random",
            "size",
            "lookup",
            "torchrec",
            "rnn",
            "dreamshard",
        ]
        assert suite["rnn_measurements"] == 2 * 10
        assert suite["tasks"] == 2
        assert suite["strongest_baseline"] in suite["main_placers"]
        # rnn spends backend measurements: never the measurement-free strongest.
        assert suite["strongest_measurement_free_baseline"] in {
            "random",
            "size",
            "lookup",
            "torchrec",
        }
        assert "dreamshard_speedup" in suite
        # Every compared cost is a backend measurement recorded per task.
        evaluation = saved["evaluations"][suite["spec"]["name"]]
        for placer in suite["main_placers"]:
            costs = [r["cost_ms"] for r in evaluation["results"] if r["placer"] == placer]
            assert suite["placers"][placer]["mean_cost_ms"] == pytest.approx(
                sum(costs) / len(costs)
            )
    gen = saved["generalisation"]
    assert gen["families"] == ["f2", "f3"] and gen["suites"] == ["s6x2", "s6x3"]
    assert gen["speedup"][0][0] == pytest.approx(saved["suites"]["s6x2"]["dreamshard_speedup"])
    report = (tmp_path / "report.md").read_text()
    assert "## Where DreamShard does not beat a baseline" in report
    for suite_name, suite in saved["suites"].items():
        if suite["dreamshard_not_better_than"]:
            assert f"**{suite_name}**: DreamShard's mean cost" in report
    assert "torch:" in report and "cpu_model:" in report
    assert any("training family f2" in line for line in lines)
    # The typed results are results.json; read back, they redraw the same report.
    assert json.dumps(results.to_json()) == json.dumps(saved)
    loaded = load_results(tmp_path / "results.json")
    assert json.dumps(loaded.to_json()) == json.dumps(saved)
    assert render_report(loaded) == report
    assert results.wall_s == saved["wall_s"] > 0
    assert len(write_plots(loaded, tmp_path / "again")) == 4
    # The suite's cost-network MAPE is the model's own definition on its measured placements.
    model = DreamShardModel.load(tmp_path / "models" / "f2")
    evaluation = results.evaluations["s6x2"]
    measured = [r for r in evaluation.results if r.cost is not None and r.placement is not None]
    tasks = {t.name: t for t in _test_tasks(parse_config(TINY, "tiny"), "s6x2")}
    expected = model.cost_mape(
        [tasks[r.task] for r in measured],
        [r.placement for r in measured if r.placement is not None],
        [r.cost.cost_ms for r in measured if r.cost is not None],
    )
    assert saved["suites"]["s6x2"]["cost_net_mape"] == pytest.approx(expected, rel=1e-9)


def _test_tasks(config: Any, suite: str) -> list[Any]:
    from dreamshard.bench.runner import suite_test_tasks, table_pool

    spec = next(s for s in config.suites if s.name == suite)
    return suite_test_tasks(table_pool(config), config, spec)


def test_results_from_json_rejects_other_files() -> None:
    with pytest.raises(InputError, match="not a DreamShard benchmark results file"):
        BenchmarkResults.from_json({"format": "something-else"})
    with pytest.raises(InputError, match="results version 99"):
        BenchmarkResults.from_json({"format": "dreamshard-benchmark", "version": 99})


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("suites.1.devices", 0, "suites[1].devices: must be an integer >= 1"),
        ("suites.0.family", "nope", "suites[0].family: unknown family 'nope'"),
        ("suites.0.memory", "5 parsecs", "suites[0].memory: unknown unit"),
        ("families.0.train.iterations", "ten", "families[0].train.iterations: must be an"),
        ("families.0.train.device_error", 3, "families[0].train.device_error: must be a non-"),
        ("families.0.train.device_error", "own", "device_error must be one of placement, device"),
        ("placers", ["random", "magic"], "placers: unknown placer 'magic'"),
        ("backend.name", "gpu", "backend.name: unknown backend 'gpu'"),
        ("rnn.budget", 0, "rnn.budget: must be an integer >= 1"),
        ("breakdown_suite", "s9", "breakdown_suite: unknown suite 's9'"),
        ("families.1.name", "f2", "families: a family name is used twice"),
        ("pool.dim", 10, "pool.dim: must be a multiple of 4"),
    ],
)
def test_config_errors_name_the_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(InputError) as err:
        parse_config(with_change(path, value), "cfg.toml")
    assert str(err.value).startswith("cfg.toml: ")
    assert message in str(err.value)


def test_a_familys_device_error_is_read() -> None:
    data = with_change("families.1.train", {**TRAIN, "device_error": "device"})
    config = parse_config(data, "cfg.toml")
    assert [f.train.device_error for f in config.families] == ["placement", "device"]


def test_a_familys_shard_settings_are_read_and_zero_shards_allowed() -> None:
    data = with_change("families.1.train", {**TRAIN, "shard_measurements": 5, "shard_weight": 0.5})
    data["families"][0]["train"] = {**TRAIN, "shard_measurements": 0}
    config = parse_config(data, "cfg.toml")
    assert [f.train.shard_measurements for f in config.families] == [0, 5]
    assert [f.train.shard_weight for f in config.families] == [1.0, 0.5]


def test_the_oracle_is_a_reference_with_every_placers_distance_to_it(tmp_path: Path) -> None:
    data = copy.deepcopy(TINY)
    data["placers"] = ["size", "lookup", "oracle"]
    data["oracle_evaluations"] = 300
    results = run_benchmark(parse_config(data, "tiny"), tmp_path, "tiny", log=lambda _: None)
    evaluation = results.evaluations["s6x2"]
    suite = results.suites["s6x2"]
    assert suite.reference == "oracle" and suite.strongest_baseline in ("size", "lookup")
    tasks = evaluation.common_tasks()
    for p in ("size", "lookup", "oracle"):
        ratios = [
            evaluation.result(p, t).cost.cost_ms / evaluation.result("oracle", t).cost.cost_ms  # type: ignore[union-attr]
            for t in tasks
        ]
        expected = (float(np.exp(np.mean(np.log(ratios)))) - 1) * 100
        assert suite.placers[p].pct_above_reference == pytest.approx(expected, abs=1e-9)
    assert suite.placers["oracle"].pct_above_reference == pytest.approx(0.0, abs=1e-12)
    report = (tmp_path / "report.md").read_text()
    assert "| failures | % above oracle |" in report and "`oracle` is the reference" in report
    assert render_report(load_results(tmp_path / "results.json")) == report
    data["backend"] = {"name": "fbgemm"}
    with pytest.raises(InputError, match="'oracle' searches the simulator's own costs"):
        parse_config(data, "cfg")


def test_unknown_field_is_named() -> None:
    data = with_change("suites.0.colour", "red")
    with pytest.raises(InputError, match=r"suites\[0\]\.colour: unknown field"):
        parse_config(data, "cfg")


def test_default_config_and_quick() -> None:
    config = load_config()
    assert [s.name for s in config.suites] == [
        "dlrm-20x4",
        "dlrm-40x4",
        "dlrm-60x4",
        "dlrm-80x4",
        "dlrm-80x2",
        "dlrm-80x8",
    ]
    assert config.dim == 16 and config.backend == "sim"
    quick = config.shrunk()
    assert quick.quick and quick.num_test_tasks == 4 and quick.rnn.budget == 100
    assert all(f.train.iterations == 4 for f in quick.families)
    assert quick.suites == config.suites


def test_cli_bad_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('seed = 0\nplacers = ["random"]\n[[suites]]\nname = "x"\n')
    result = CliRunner().invoke(app, ["benchmark", "--config", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = ANSI.sub("", result.stderr).splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "families: must be a non-empty list" in lines[0]
    assert not (tmp_path / "results.json").exists()


def test_cli_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    result = CliRunner().invoke(app, ["benchmark", "--config", str(missing)])
    assert result.exit_code == 2
    assert "none.toml: file not found" in ANSI.sub("", result.stderr)


@pytest.mark.parametrize(
    ("name", "content", "part"),
    [
        ("bin.toml", b"\x00\xff\xfe\x80 binary", "not a UTF-8 text file"),
        ("bin.json", b"\x89PNG\r\n\x1a\n\xff", "not a UTF-8 text file"),
        ("deep.json", b"[" * 100_000, "invalid JSON (nested too deeply)"),
        ("deep.toml", b"a = " + b"[" * 100_000, "invalid TOML (nested too deeply)"),
        ("huge.json", b"1" * 5000, "invalid JSON (Exceeds the limit"),
    ],
)
def test_unparseable_config_file_is_one_line(
    tmp_path: Path, name: str, content: bytes, part: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and part in message and "\n" not in message


def test_rerun_resumes_training_and_refuses_another_config(tmp_path: Path) -> None:
    one = with_change("suites", TINY["suites"][:1])
    one["families"] = TINY["families"][:1]
    one["placers"] = ["size", "dreamshard"]
    first = run_benchmark(parse_config(one, "a"), tmp_path, "a", log=lambda _: None)
    lines: list[str] = []
    again = run_benchmark(parse_config(one, "a"), tmp_path, "a", log=lines.append)
    assert any(re.search(r"resumed .*f2 at iteration 2", line) for line in lines)
    assert (
        again.suites["s6x2"].placers["dreamshard"].mean_cost_ms
        == first.suites["s6x2"].placers["dreamshard"].mean_cost_ms
    )
    assert again.families["f2"].history == first.families["f2"].history
    other = copy.deepcopy(one)
    other["families"][0]["memory"] = "2GB"
    with pytest.raises(InputError, match="trained with another config"):
        run_benchmark(parse_config(other, "b"), tmp_path, "b", log=lambda _: None)


def test_default_config_is_package_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default config ships inside the package and loads through importlib.resources,
    wherever the process runs (not from a path beside the source tree)."""
    packaged = resources.files(DEFAULT_CONFIG_PACKAGE).joinpath(DEFAULT_CONFIG_NAME)
    assert packaged.is_file()
    assert default_config_text() == packaged.read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert not Path("configs").exists()
    config = load_config(None)
    assert config == parse_config(tomllib.loads(packaged.read_text(encoding="utf-8")), "x")
    # Shipped in wheels too: pyproject's package data names it.
    root = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    data = pyproject["tool"]["setuptools"]["package-data"]
    assert DEFAULT_CONFIG_NAME in data.get(DEFAULT_CONFIG_PACKAGE, []), data
    assert not (root / "configs" / "benchmark-default.toml").exists()


def test_default_config_errors_name_the_packaged_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import dreamshard.bench.config as config_module

    monkeypatch.setattr(config_module, "default_config_text", lambda: "seed = -1\n")
    with pytest.raises(InputError, match=r"^dreamshard/bench/default\.toml: seed: "):
        load_config()
    assert os.path.basename(config_module.DEFAULT_CONFIG_WHERE) == DEFAULT_CONFIG_NAME
