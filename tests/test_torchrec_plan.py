"""Export of placements as TorchRec plans: plan files, the loader's checks, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torchrec")

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from typer.testing import CliRunner

from dreamshard.cli.app import app
from dreamshard.data.tables import save_tables
from dreamshard.data.tasks import SuiteConfig
from dreamshard.errors import InputError, InvalidPlacementError
from dreamshard.torchrec.plan import (
    PLAN_FORMAT,
    build_sharding_plan,
    load_plan_spec,
    load_sharding_plan,
    plan_from_placement,
    plan_from_placement_file,
    ranks_of_tables,
    save_plan,
)
from dreamshard.types import Placement, TableSpec

from .conftest import table, task


def ebc(tables: list[TableSpec]) -> EmbeddingBagCollection:
    configs = [
        EmbeddingBagConfig(
            name=t.name, num_embeddings=t.rows, embedding_dim=t.dim, feature_names=[f"f_{t.name}"]
        )
        for t in tables
    ]
    return EmbeddingBagCollection(tables=configs, device=torch.device("meta"))


def test_plan_puts_each_table_on_its_rank_table_wise_fused(
    four_tables: list[TableSpec], tmp_path: Path
) -> None:
    placed = task(four_tables, [10**6] * 3)
    spec = plan_from_placement(placed, Placement((2, 0, 0, 1)))
    save_plan(tmp_path / "plan.json", spec)
    plan = load_sharding_plan(tmp_path / "plan.json", ebc(four_tables), world_size=3)

    assert ranks_of_tables(plan) == {"": {"a": [2], "b": [0], "c": [0], "d": [1]}}
    for sharding in plan.plan[""].values():  # type: ignore[attr-defined]
        assert sharding.sharding_type == "table_wise"
        assert sharding.compute_kernel == "fused"
    # The shard is the whole table, placed on rank 2's CPU.
    (shard,) = plan.plan[""]["a"].sharding_spec.shards  # type: ignore[index]
    assert shard.shard_sizes == [1000, 16]
    assert str(shard.placement) == "rank:2/cpu"


def test_plan_file_round_trips(four_tables: list[TableSpec], tmp_path: Path) -> None:
    spec = plan_from_placement(
        task(four_tables, [10**6] * 2), Placement((0, 1, 1, 0)), "sparse.ebc", {"placer": "x"}
    )
    save_plan(tmp_path / "plan.json", spec)
    payload = json.loads((tmp_path / "plan.json").read_text())
    assert payload["format"] == PLAN_FORMAT
    assert payload["modules"]["sparse.ebc"]["tables"][0] == {
        "name": "a",
        "rank": 0,
        "rows": 1000,
        "dim": 16,
    }
    assert load_plan_spec(tmp_path / "plan.json") == spec


def test_cuda_plan_places_on_local_ranks(four_tables: list[TableSpec]) -> None:
    spec = plan_from_placement(task(four_tables, [10**6] * 4), Placement((3, 2, 1, 0)))
    plan = build_sharding_plan(spec, ebc(four_tables), local_world_size=2, device_type="cuda")
    (shard,) = plan.plan[""]["a"].sharding_spec.shards  # type: ignore[index]
    assert str(shard.placement) == "rank:3/cuda:1"


def test_nested_module_plan_keyed_by_path(four_tables: list[TableSpec]) -> None:
    model = nn.Module()
    model.sparse = nn.Module()
    model.sparse.ebc = ebc(four_tables)
    spec = plan_from_placement(
        task(four_tables, [10**6] * 2), Placement((0, 1, 0, 1)), "sparse.ebc"
    )
    plan = build_sharding_plan(spec, model, world_size=2)
    assert list(plan.plan) == ["sparse.ebc"]


def test_placement_that_does_not_fit_is_rejected(four_tables: list[TableSpec]) -> None:
    with pytest.raises(InvalidPlacementError, match="device 0"):
        plan_from_placement(task(four_tables, [100_000, 10**6]), Placement((0, 0, 0, 1)))


# -- bad input: a clear error naming the table or field --------------------------------


@pytest.fixture
def saved_plan(four_tables: list[TableSpec], tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    save_plan(path, plan_from_placement(task(four_tables, [10**6] * 2), Placement((0, 1, 0, 1))))
    return path


def test_world_size_mismatch_names_the_field(
    saved_plan: Path, four_tables: list[TableSpec]
) -> None:
    with pytest.raises(InputError, match=r"plan.json: plan: field 'world_size' is 2 .* 4 ranks"):
        load_sharding_plan(saved_plan, ebc(four_tables), world_size=4)


def test_model_with_an_unplanned_table_is_named(
    saved_plan: Path, four_tables: list[TableSpec]
) -> None:
    model = ebc([*four_tables, table("extra")])
    with pytest.raises(InputError, match="table 'extra' is not in the plan"):
        load_sharding_plan(saved_plan, model, world_size=2)


def test_model_missing_a_planned_table_is_named(
    saved_plan: Path, four_tables: list[TableSpec]
) -> None:
    with pytest.raises(InputError, match="table 'd' is planned but not in the model"):
        load_sharding_plan(saved_plan, ebc(four_tables[:3]), world_size=2)


def test_plan_for_another_model_is_detected(saved_plan: Path, four_tables: list[TableSpec]) -> None:
    other = [table("a", rows=999), *four_tables[1:]]
    with pytest.raises(InputError, match=r"table 'a' was planned with 1000 rows x dim 16.*999"):
        load_sharding_plan(saved_plan, ebc(other), world_size=2)


def test_plan_for_another_module_path_is_named(
    saved_plan: Path, four_tables: list[TableSpec]
) -> None:
    model = nn.Module()
    model.ebc = ebc(four_tables)
    with pytest.raises(InputError, match="module '' is not an EmbeddingBagCollection"):
        load_sharding_plan(saved_plan, model, world_size=2)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"format": "other"}, "not a plan file"),
        ({"version": 99}, "version 99"),
        ({"world_size": "2"}, "field 'world_size' must be an integer"),
        ({"modules": {}}, "field 'modules' must be a non-empty object"),
    ],
)
def test_malformed_plan_files(
    saved_plan: Path, edit: dict[str, object], message: str, tmp_path: Path
) -> None:
    payload = json.loads(saved_plan.read_text())
    payload.update(edit)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(payload))
    with pytest.raises(InputError, match=message):
        load_plan_spec(bad)


def test_rank_outside_world_names_the_table(saved_plan: Path, tmp_path: Path) -> None:
    payload = json.loads(saved_plan.read_text())
    payload["modules"][""]["tables"][2]["rank"] = 5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(payload))
    with pytest.raises(InputError, match=r"table .c. is on rank 5, the plan has ranks 0\.\.1"):
        load_plan_spec(bad)


# -- CLI: place --out, then export -----------------------------------------------------


def test_cli_export_of_a_placement(four_tables: list[TableSpec], tmp_path: Path) -> None:
    runner = CliRunner()
    save_tables(tmp_path / "tables.json", four_tables)
    placed = runner.invoke(
        app,
        [
            "place",
            "--tables",
            str(tmp_path / "tables.json"),
            "--devices",
            "2",
            "--memory",
            "1MB",
            "--placer",
            "size",
            "--backend",
            "sim",
            "--out",
            str(tmp_path / "placement.json"),
        ],
    )
    assert placed.exit_code == 0, placed.output
    result = runner.invoke(
        app,
        [
            "export",
            "--placement",
            str(tmp_path / "placement.json"),
            "--out",
            str(tmp_path / "plan.json"),
            "--module-path",
            "sparse.ebc",
        ],
    )
    assert result.exit_code == 0, result.output
    device_of = json.loads((tmp_path / "placement.json").read_text())["device_of"]
    spec = load_plan_spec(tmp_path / "plan.json")
    assert spec.world_size == 2
    assert spec.ranks("sparse.ebc") == {
        t.name: d for t, d in zip(four_tables, device_of, strict=True)
    }


def test_cli_export_rejects_placement_for_other_tables(
    four_tables: list[TableSpec], tmp_path: Path
) -> None:
    save_tables(tmp_path / "tables.json", four_tables[:3])
    placement = {
        "tables_file": str(tmp_path / "tables.json"),
        "devices": [{"name": "dev0", "memory_bytes": 10**6}],
        "placement": {"a": "dev0", "b": "dev0", "zzz": "dev0"},
    }
    (tmp_path / "placement.json").write_text(json.dumps(placement))
    result = CliRunner().invoke(
        app,
        ["export", "--placement", str(tmp_path / "placement.json"), "--out", str(tmp_path / "p")],
    )
    assert result.exit_code == 2
    assert "table 'zzz' is placed but not in" in result.output
    assert not (tmp_path / "p").exists()


def test_export_of_unplaced_table_names_it(four_tables: list[TableSpec], tmp_path: Path) -> None:
    save_tables(tmp_path / "tables.json", four_tables)
    placement = {
        "devices": [{"name": "dev0", "memory_bytes": 10**6}],
        "placement": {"a": "dev0", "b": "dev0", "c": "dev0"},
    }
    (tmp_path / "placement.json").write_text(json.dumps(placement))
    with pytest.raises(InputError, match=r"table .d. of .* is not placed"):
        plan_from_placement_file(tmp_path / "placement.json", tmp_path / "tables.json")


def test_export_of_placement_written_before_the_format(
    four_tables: list[TableSpec], tmp_path: Path
) -> None:
    # `place --out` wrote no 'format' and 'version' before: such files still export alike.
    save_tables(tmp_path / "tables.json", four_tables)
    runner = CliRunner()
    placed = runner.invoke(
        app,
        ["place", "--tables", str(tmp_path / "tables.json"), "--devices", "2", "--memory",
         "1MB", "--placer", "size", "--backend", "sim", "--out", str(tmp_path / "new.json")],
    )  # fmt: skip
    assert placed.exit_code == 0, placed.output
    payload = json.loads((tmp_path / "new.json").read_text())
    assert (payload.pop("format"), payload.pop("version")) == ("dreamshard-placement", 1)
    (tmp_path / "old.json").write_text(json.dumps(payload))
    old = plan_from_placement_file(tmp_path / "old.json")
    new = plan_from_placement_file(tmp_path / "new.json")
    assert old.modules == new.modules and old.world_size == new.world_size == 2
    assert old.source["placer"] == "size" and old.source["task"] == "tables"


def test_cli_export_refuses_a_newer_placement_file(
    four_tables: list[TableSpec], tmp_path: Path
) -> None:
    save_tables(tmp_path / "tables.json", four_tables)
    placement = {
        "format": "dreamshard-placement",
        "version": 2,
        "tables_file": str(tmp_path / "tables.json"),
        "devices": [{"name": "dev0", "memory_bytes": 10**6}],
        "placement": {t.name: "dev0" for t in four_tables},
    }
    (tmp_path / "placement.json").write_text(json.dumps(placement))
    result = CliRunner().invoke(
        app,
        ["export", "--placement", str(tmp_path / "placement.json"), "--out", str(tmp_path / "p")],
    )
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert str(tmp_path / "placement.json") in line and "field 'version'" in line
    assert not (tmp_path / "p").exists()


def test_cli_evaluate_shows_torchrec_estimates(
    four_tables: list[TableSpec], tmp_path: Path
) -> None:
    from dreamshard.data.tasks import TaskSuite, save_suite

    suite = TaskSuite(
        config=SuiteConfig(0, 2, 4, 4, 2, 10**6, 0),
        train=(),
        test=tuple(task(four_tables, [10**6] * 2, name=f"test-{k}") for k in range(2)),
    )
    save_suite(tmp_path / "suite.json", suite)
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--tasks",
            str(tmp_path / "suite.json"),
            "--backend",
            "sim",
            "--placers",
            "size,torchrec",
            "--out",
            str(tmp_path / "eval.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "TorchRec's estimate" in result.output
    payload = json.loads((tmp_path / "eval.json").read_text())
    estimates = payload["torchrec_estimates"]
    assert set(estimates["per_task"]) == {"size", "torchrec"}
    assert set(estimates["per_task"]["torchrec"]) == {"test-0", "test-1"}
    assert all(v > 0 for v in estimates["mean_estimate_ms"].values())
    measured = {s["placer"]: s["mean_cost_ms"] for s in payload["summary"]}
    assert estimates["mean_measured_ms"] == measured


def _place(args: list[str]) -> None:
    placed = CliRunner().invoke(
        app, ["place", *args, "--devices", "2", "--memory", "1MB", "--backend", "sim"]
    )
    assert placed.exit_code == 0, placed.output


def test_cli_export_from_another_folder(
    four_tables: list[TableSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The placement file names its table file absolutely: export finds it from anywhere.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_tables(tmp_path / "a" / "tables.json", four_tables)
    monkeypatch.chdir(tmp_path / "a")
    _place(["--tables", "tables.json", "--out", "../placement.json"])
    monkeypatch.chdir(tmp_path / "b")
    result = CliRunner().invoke(
        app, ["export", "--placement", "../placement.json", "--out", "plan.json"]
    )
    assert result.exit_code == 0, result.output
    assert load_plan_spec(tmp_path / "b" / "plan.json").world_size == 2


def test_relative_tables_file_is_found_beside_the_placement(
    four_tables: list[TableSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files written before names were absolute: relative to cwd, else to the placement.
    save_tables(tmp_path / "tables.json", four_tables)
    placement = {
        "tables_file": "tables.json",
        "devices": [{"name": "dev0", "memory_bytes": 10**6}],
        "placement": {t.name: "dev0" for t in four_tables},
    }
    (tmp_path / "placement.json").write_text(json.dumps(placement))
    monkeypatch.chdir(tmp_path.parent)
    spec = plan_from_placement_file(tmp_path / "placement.json")
    assert spec.source["tables_file"] == str(tmp_path / "tables.json")


def test_missing_tables_file_names_the_field(tmp_path: Path) -> None:
    placement = {
        "tables_file": "gone.json",
        "devices": [{"name": "dev0", "memory_bytes": 10**6}],
        "placement": {"a": "dev0"},
    }
    path = tmp_path / "placement.json"
    path.write_text(json.dumps(placement))
    with pytest.raises(InputError) as caught:
        plan_from_placement_file(path)
    assert str(caught.value) == (
        f"{path}: field 'tables_file': gone.json: file not found (also looked in {tmp_path}); "
        "pass the table file with --tables"
    )


@pytest.mark.parametrize("which", ["placement", "tables"])
def test_cli_export_refuses_to_overwrite_an_input(
    four_tables: list[TableSpec], tmp_path: Path, which: str
) -> None:
    tables = tmp_path / "tables.json"
    save_tables(tables, four_tables)
    _place(["--tables", str(tables), "--out", str(tmp_path / "placement.json")])
    out = tmp_path / f"{which}.json"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = CliRunner().invoke(
        app, ["export", "--placement", str(tmp_path / "placement.json"), "--out", str(out)]
    )
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --out {out}: is the input file ")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    ("device_of", "part"),
    [
        ([0, 0, 0, 7], "table 'd' is on device 7, the file has devices 0..1"),
        ([0, 0], "field 'device_of' has 2 entries"),
        ([0, 0, "x", 0], "field 'device_of' must be a list of device indices"),
    ],
)
def test_cli_export_checks_device_of(
    four_tables: list[TableSpec], tmp_path: Path, device_of: list[object], part: str
) -> None:
    save_tables(tmp_path / "tables.json", four_tables)
    placement = {
        "tables_file": str(tmp_path / "tables.json"),
        "devices": [{"name": "dev0", "memory_bytes": 10**6}, {"name": "dev1", "memory_bytes": 1}],
        "placement": {t.name: "dev0" for t in four_tables},
        "device_of": device_of,
    }
    path = tmp_path / "placement.json"
    path.write_text(json.dumps(placement))
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(app, ["export", "--placement", str(path), "--out", str(out)])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: field 'device_of'") and part in line
    assert not out.exists()
