"""``--search``, ``--refine``, ``--time-budget-ms``, ``train --init`` and ``pretrain`` on
the command line; the packaged model as the default of placer dreamshard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from dreamshard.backends.sim.profile import load_profile
from dreamshard.cli.app import app
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tables import save_tables
from dreamshard.data.tasks import SuiteConfig, generate_suite, save_suite

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SIM = ("--backend", "sim")


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result: Result) -> str:
    text = ANSI.sub("", result.output).strip()
    assert result.exit_code == 2, text
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    return text


@pytest.fixture
def tables(tmp_path: Path) -> Path:
    path = tmp_path / "tables.csv"
    save_tables(path, generate_table_pool(12, seed=1, dims=[16, 32], max_rows=100_000))
    return path


@pytest.mark.parametrize("search", ["none", "greedy", "local"])
def test_place_with_the_packaged_model_and_each_search(
    tmp_path: Path, tables: Path, search: str
) -> None:
    out = tmp_path / f"{search}.json"
    result = run(
        "place", "--tables", tables, "--devices", 3, "--memory", "1GB", "--placer", "dreamshard",
        "--search", search, *SIM, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())["placement"]) == 12


def test_local_search_is_no_worse_than_the_policy_on_the_predicted_cost(tables: Path) -> None:
    from dreamshard.data.tables import load_tables
    from dreamshard.data.tasks import make_devices, make_task
    from dreamshard.method.checkpoint import DreamShardModel, packaged_model_dir
    from dreamshard.placers.dreamshard import DreamShardPlacer

    model = DreamShardModel.load(packaged_model_dir("cpu-zen4"))
    t = make_task("t", load_tables(tables), make_devices(3, 10**10))
    predicted = {}
    for search in ("none", "greedy", "local"):
        placer = DreamShardPlacer(model, search=search)
        placement = placer.place(t)
        predicted[search] = float(model.predict_cost_ms([t], [placement])[0])
        assert placer.last_report is not None
    # Each mode keeps the best of a superset of the previous mode's candidates.
    assert predicted["local"] <= predicted["greedy"] * (1 + 1e-5)
    assert predicted["greedy"] <= predicted["none"] * (1 + 1e-5)


def test_refine_measures_the_best_candidates(tables: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    result = run(
        "place", "--tables", tables, "--devices", 3, "--memory", "1GB", "--placer", "dreamshard",
        "--refine", 3, *SIM, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "part"),
    [
        (("--search", "best"), "unknown search 'best'"),
        (("--time-budget-ms", "0"), "time budget must be positive"),
        (("--model", "/nonexistent"), "no model.pt"),
        (("--profile", "MY_PROFILE"), "no packaged model for profile"),
    ],
)
def test_bad_search_options_are_one_line(
    tables: Path, tmp_path: Path, args: tuple[str, ...], part: str
) -> None:
    own = tmp_path / "my-cpu.json"  # a profile of the user's own: no packaged model
    load_profile("cpu-zen4").save(own)
    args = tuple(str(own) if a == "MY_PROFILE" else a for a in args)
    result = run(
        "place", "--tables", tables, "--devices", 2, "--memory", "1GB", "--placer", "dreamshard",
        *SIM, *args,
    )  # fmt: skip
    assert part in one_line_error(result)


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    pool = generate_table_pool(40, seed=2, max_rows=50_000)
    suite = generate_suite(pool, SuiteConfig(3, 1, 5, 5, 2, 10**9, seed=0))
    path = tmp_path / "suite.json"
    save_suite(path, suite)
    return path


def train_briefly(suite_file: Path, out: Path, *extra: object) -> Result:
    """``dreamshard train`` of one short iteration on ``suite_file`` into ``out``."""
    result = run(
        "train", "--tasks", suite_file, "--out", out, *SIM, *extra,
        "--iterations", 1, "--measurements", 4, "--cost-steps", 5, "--policy-batches", 2,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


def test_train_init_packaged_fine_tunes_and_records_it(tmp_path: Path, suite_file: Path) -> None:
    out = tmp_path / "model"
    result = train_briefly(suite_file, out, "--init", "packaged")
    assert "from the model packaged" in ANSI.sub("", result.output)
    info = json.loads((out / "config.json").read_text())["info"]
    assert info["init"] == "packaged"
    assert info["init_info"]["train_tasks"] == 600  # the packaged model's own record


def test_train_device_error_reaches_the_training_config(tmp_path: Path, suite_file: Path) -> None:
    out = tmp_path / "model"
    train_briefly(suite_file, out, "--device-error", "device")
    assert json.loads((out / "config.json").read_text())["config"]["device_error"] == "device"


def test_train_refuses_an_unknown_device_error(tmp_path: Path, suite_file: Path) -> None:
    out = tmp_path / "model"
    result = run("train", "--tasks", suite_file, "--out", out, *SIM, "--device-error", "own")
    assert "--device-error must be one of placement, device, got 'own'" in one_line_error(result)
    assert not out.exists()


def test_train_shards_reach_the_training_config(tmp_path: Path, suite_file: Path) -> None:
    out = tmp_path / "model"
    result = train_briefly(suite_file, out, "--shards", 6)
    assert "shards 6" in ANSI.sub("", result.output)  # the iteration line reports them
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["shard_measurements"] == 6
    assert saved["info"]["shard_measurements"] == 6


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_a_negative_shard_count_is_refused(tmp_path: Path, suite_file: Path, command: str) -> None:
    out = tmp_path / "model"
    args = ("--tasks", suite_file, *SIM) if command == "train" else ()
    result = run(command, "--out", out, *args, "--shards", -2)
    assert "--shards must be >= 0, got -2" in one_line_error(result)
    assert not out.exists()


def test_train_init_of_a_missing_model_is_one_line(tmp_path: Path, suite_file: Path) -> None:
    result = run(
        "train", "--tasks", suite_file, "--out", tmp_path / "m", *SIM, "--init", tmp_path / "no"
    )
    assert "no model.pt" in one_line_error(result)


def test_pretrain_refuses_zero_iterations(tmp_path: Path) -> None:
    result = run("pretrain", "--out", tmp_path / "m", "--iterations", 0)
    assert "--iterations must be at least 1" in one_line_error(result)


def test_pretrain_refuses_zero_cost_steps(tmp_path: Path) -> None:
    result = run("pretrain", "--out", tmp_path / "m", "--cost-steps", 0)
    assert "--cost-steps must be at least 1" in one_line_error(result)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("flag", ["--dlrm-tasks", "--large-tasks", "--warmup-tasks"])
def test_pretrain_refuses_negative_task_counts(tmp_path: Path, flag: str) -> None:
    result = run("pretrain", "--out", tmp_path / "m", flag, -1)
    assert f"{flag} must be >= 0" in one_line_error(result)
    assert not (tmp_path / "m").exists()


def test_pretrain_refuses_an_unknown_device_error(tmp_path: Path) -> None:
    result = run("pretrain", "--out", tmp_path / "m", "--device-error", "own")
    assert "--device-error must be one of placement, device, got 'own'" in one_line_error(result)
    assert not (tmp_path / "m").exists()


def test_pretrain_from_a_missing_model_is_one_line(tmp_path: Path) -> None:
    result = run("pretrain", "--out", tmp_path / "m", "--init", tmp_path / "no")
    assert "no model.pt" in one_line_error(result)


def test_the_packaged_model_records_how_it_was_made() -> None:
    from dreamshard.method.checkpoint import packaged_model_dir

    provenance = json.loads((packaged_model_dir("cpu-zen4") / "provenance.json").read_text())
    assert provenance["config"]["profile"] == "cpu-zen4"
    config = provenance["config"]
    assert provenance["data"]["tasks"] == config["num_tasks"] + config["dlrm_tasks"]
    assert "simulated" in provenance["data"]["backend"]
    # Made in stages: each stage records the one it started from, down to fresh networks.
    stages = 1
    while provenance.get("init_provenance") is not None:
        provenance = provenance["init_provenance"]
        stages += 1
    assert provenance["config"].get("init") is None
    assert stages == 5
