"""Export of placements as TorchRec plans: plan files, the loader's checks, the CLI."""

from __future__ import annotations

import dataclasses
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
from dreamshard.evaluation.placement_file import PlacementFile, write_placement_file
from dreamshard.torchrec.plan import (
    PLAN_FORMAT,
    PLAN_VERSION,
    PlannedTable,
    build_sharding_plan,
    load_plan_spec,
    load_sharding_plan,
    plan_from_placement,
    plan_from_placement_file,
    ranks_of_tables,
    save_plan,
)
from dreamshard.types import (
    Placement,
    PlacementCost,
    StageCosts,
    TableSpec,
    TableSplit,
    Task,
    row_split_sizes,
)

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
        "sharding": "table_wise",
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
        t.name: (d,) for t, d in zip(four_tables, device_of, strict=True)
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
    assert (payload.pop("format"), payload.pop("version")) == ("dreamshard-placement", 3)
    assert payload.pop("splits") == [] and payload.pop("devices_per_host") is None
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
        "version": 4,
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


# -- split tables: column-wise and row-wise ---------------------------------------------

#: b (dim 32) in column shards of 20 and 12 columns on ranks 1 and 0; d (8000 rows) in
#: TorchRec's row blocks on ranks 0 and 1; a and c whole on ranks 0 and 1.
SPLITS = (TableSplit(1, "column", (20, 12)), TableSplit(3, "row", (4000, 4000)))
SPLIT_DEVICE_OF = (0, 1, 0, 1, 0, 1)  # a, b#c0, b#c1, c, d#r0, d#r1


@pytest.fixture
def split_plan(four_tables: list[TableSpec], tmp_path: Path) -> Path:
    path = tmp_path / "split-plan.json"
    placed = task(four_tables, [10**6] * 2)
    save_plan(path, plan_from_placement(placed, Placement(SPLIT_DEVICE_OF, SPLITS)))
    return path


def test_split_plan_file_records_each_sharding(split_plan: Path) -> None:
    payload = json.loads(split_plan.read_text())
    assert payload["version"] == PLAN_VERSION == 3
    assert payload["local_world_size"] is None  # a task without hosts
    assert payload["modules"][""]["tables"] == [
        {"name": "a", "sharding": "table_wise", "rank": 0, "rows": 1000, "dim": 16},
        {"name": "b", "sharding": "column_wise", "ranks": [1, 0], "shard_dims": [20, 12],
         "rows": 250, "dim": 32},
        {"name": "c", "sharding": "table_wise", "rank": 1, "rows": 500, "dim": 8},
        {"name": "d", "sharding": "row_wise", "ranks": [0, 1], "shard_rows": [4000, 4000],
         "rows": 8000, "dim": 4},
    ]  # fmt: skip
    spec = load_plan_spec(split_plan)
    assert spec.ranks("") == {"a": (0,), "b": (1, 0), "c": (1,), "d": (0, 1)}
    assert spec.modules[""][1] == PlannedTable.split("b", 250, 32, "column_wise", [1, 0], [20, 12])


def test_split_plan_builds_torchrec_shardings_exactly(
    split_plan: Path, four_tables: list[TableSpec]
) -> None:
    plan = load_sharding_plan(split_plan, ebc(four_tables), world_size=2)
    shardings = plan.plan[""]  # type: ignore[index]
    got = {
        name: (
            sharding.sharding_type,
            sharding.compute_kernel,
            sharding.ranks,
            [
                (s.shard_offsets, s.shard_sizes, str(s.placement))
                for s in sharding.sharding_spec.shards
            ],
        )
        for name, sharding in shardings.items()  # type: ignore[attr-defined]
    }
    assert got == {
        "a": ("table_wise", "fused", [0], [([0, 0], [1000, 16], "rank:0/cpu")]),
        # Column order, each shard on its planned rank (shard 0 on rank 1).
        "b": ("column_wise", "fused", [1, 0],
              [([0, 0], [250, 20], "rank:1/cpu"), ([0, 20], [250, 12], "rank:0/cpu")]),
        "c": ("table_wise", "fused", [1], [([0, 0], [500, 8], "rank:1/cpu")]),
        "d": ("row_wise", "fused", [0, 1],
              [([0, 0], [4000, 4], "rank:0/cpu"), ([4000, 0], [4000, 4], "rank:1/cpu")]),
    }  # fmt: skip


def test_column_shards_on_one_rank_and_on_local_cuda_ranks(four_tables: list[TableSpec]) -> None:
    placed = task(four_tables, [10**6] * 4)
    placement = Placement((3, 2, 2, 1, 0), (TableSplit(0, "column", (8, 8)),))
    spec = plan_from_placement(placed, placement)
    plan = build_sharding_plan(spec, ebc(four_tables), local_world_size=2, device_type="cuda")
    shards = plan.plan[""]["a"].sharding_spec.shards  # type: ignore[index]
    assert [str(s.placement) for s in shards] == ["rank:3/cuda:1", "rank:2/cuda:0"]
    assert ranks_of_tables(plan)[""]["b"] == [2]


def test_version_1_plan_file_loads_as_table_wise(
    saved_plan: Path, four_tables: list[TableSpec], tmp_path: Path
) -> None:
    payload = json.loads(saved_plan.read_text())
    payload.update(version=1, sharding_type="table_wise")
    for record in payload["modules"][""]["tables"]:
        del record["sharding"]
    old = tmp_path / "v1.json"
    old.write_text(json.dumps(payload))
    assert load_plan_spec(old) == load_plan_spec(saved_plan)
    assert ranks_of_tables(load_sharding_plan(old, ebc(four_tables), world_size=2)) == {
        "": {"a": [0], "b": [1], "c": [0], "d": [1]}
    }


def _edit_table(
    path: Path,
    tmp_path: Path,
    index: int,
    plan_edits: dict[str, object] | None = None,
    **edits: object,
) -> Path:
    """A copy of the plan file ``path`` with table ``index`` (and, with ``plan_edits``,
    the plan's own fields) changed."""
    payload = json.loads(path.read_text())
    payload.update(plan_edits or {})
    payload["modules"][""]["tables"][index].update(edits)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(payload))
    return bad


def _assert_refused_in_one_line(bad: Path, part: str) -> None:
    """Loading ``bad`` raises one line that names the file and holds ``part``."""
    with pytest.raises(InputError) as caught:
        load_plan_spec(bad)
    message = str(caught.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message
    assert part in message


@pytest.mark.parametrize(
    ("index", "edits", "part"),
    [
        (1, {"shard_dims": [20, 8]}, "table 'b': field 'shard_dims' is [20, 8], summing to 28, "
         "not to its dim 32"),
        (1, {"shard_dims": [18, 14]}, "table 'b': field 'shard_dims' is [18, 14]; every column "
         "shard's dim must be a positive multiple of 4"),
        (1, {"ranks": [1, 2]}, "table 'b' is on rank 2, the plan has ranks 0..1"),
        (1, {"ranks": [1]}, "table 'b': column_wise needs at least 2 shards, as many 'ranks' (1) "
         "as 'shard_dims' (2)"),
        (1, {"shard_dims": None}, "table 'b': field 'shard_dims' must be a non-empty list"),
        (3, {"shard_rows": [5000, 3000]}, "table 'd': row_wise over ranks [0, 1] in blocks of "
         "[5000, 3000] rows ('shard_rows'), but TorchRec cuts 8000 rows over the plan's 2 ranks "
         "as [4000, 4000] on ranks 0..1"),
        (3, {"ranks": [1, 0]}, "table 'd': row_wise over ranks [1, 0]"),
        (0, {"sharding": "data_parallel"}, "table 'a': field 'sharding' is 'data_parallel', use "
         "one of table_wise, column_wise, row_wise"),
    ],
)  # fmt: skip
def test_bad_split_tables_are_refused_in_one_line(
    split_plan: Path, tmp_path: Path, index: int, edits: dict[str, object], part: str
) -> None:
    _assert_refused_in_one_line(_edit_table(split_plan, tmp_path, index, **edits), part)


def test_row_wise_plan_for_another_world_size(
    split_plan: Path, four_tables: list[TableSpec], tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=r"field 'world_size' is 2 but the job runs on 4 ranks "
                       r"\(row-wise table 'd' is cut into 2 blocks\)"):  # fmt: skip
        load_sharding_plan(split_plan, ebc(four_tables), world_size=4)
    payload = json.loads(split_plan.read_text())
    payload["world_size"] = 3  # the blocks of a 2-rank plan
    bad = tmp_path / "three.json"
    bad.write_text(json.dumps(payload))
    with pytest.raises(InputError, match=r"table 'd': row_wise over ranks \[0, 1\] .* the plan's "
                       r"3 ranks as \[2667, 2667, 2666\] .*another world size"):  # fmt: skip
        load_plan_spec(bad)


def test_split_plan_for_another_model(split_plan: Path, four_tables: list[TableSpec]) -> None:
    other = [four_tables[0], table("b", rows=250, dim=16), *four_tables[2:]]
    with pytest.raises(InputError, match=r"table 'b' was planned with 250 rows x dim 32.*250 x 16"):
        load_sharding_plan(split_plan, ebc(other), world_size=2)


def test_split_placement_file_exports(four_tables: list[TableSpec], tmp_path: Path) -> None:
    save_tables(tmp_path / "tables.json", four_tables)
    placed = task(four_tables, [10**6] * 2, name="tables")
    cost = PlacementCost(per_device=(StageCosts(0, 0, 0, 0),) * 2, backend="sim")
    record = PlacementFile.of(
        placed, Placement(SPLIT_DEVICE_OF, SPLITS), cost, placer="x", backend="sim",
        tables_file=tmp_path / "tables.json", place_time_ms=1.0,
    )  # fmt: skip
    write_placement_file(tmp_path / "placement.json", record)
    spec = plan_from_placement_file(tmp_path / "placement.json", module_path="sparse.ebc")
    assert spec.ranks("sparse.ebc") == {"a": (0,), "b": (1, 0), "c": (1,), "d": (0, 1)}
    assert [t.shard_sizes for t in spec.modules["sparse.ebc"]] == [(), (20, 12), (), (4000, 4000)]
    # A row split that is not TorchRec's blocks: the file and the field are named.
    payload = json.loads((tmp_path / "placement.json").read_text())
    payload["splits"][1]["sizes"] = [6000, 2000]
    (tmp_path / "bad.json").write_text(json.dumps(payload))
    with pytest.raises(InputError) as caught:
        plan_from_placement_file(tmp_path / "bad.json")
    assert str(caught.value).startswith(f"{tmp_path / 'bad.json'}: splits[1]: field 'sizes': ")


def test_split_placement_that_does_not_fit_is_rejected(four_tables: list[TableSpec]) -> None:
    # d (128,000 bytes) whole fits neither device; its row blocks (64,000 each) fit.
    placed = task(four_tables[2:], [100_000, 100_000])
    with pytest.raises(InvalidPlacementError, match="device 1"):
        plan_from_placement(placed, Placement((0, 1)))
    spec = plan_from_placement(placed, Placement((0, 0, 1), (TableSplit(1, "row", (4000, 4000)),)))
    assert spec.ranks("") == {"c": (0,), "d": (0, 1)}


# -- hosts: table-row-wise ---------------------------------------------------------------

#: d (8,001 rows) in TorchRec's table-row blocks (4,001, 4,000) on host 1 (ranks 2 and 3),
#: b in column shards on ranks 3 and 0, a whole on rank 1, c whole on rank 2.
HOST_SPLITS = (TableSplit(1, "column", (16, 16)), TableSplit(3, "table_row", (4001, 4000), host=1))
HOST_DEVICE_OF = (1, 3, 0, 2, 2, 3)  # a, b#c0, b#c1, c, d#h0, d#h1


def _two_hosts(four_tables: list[TableSpec]) -> Task:
    """4 devices, 2 per host; d of 8,001 rows (uneven blocks)."""
    tables = [*four_tables[:3], table("d", rows=8001, dim=4)]
    return dataclasses.replace(task(tables, [10**6] * 4), devices_per_host=2)


@pytest.fixture
def host_plan(four_tables: list[TableSpec], tmp_path: Path) -> Path:
    path = tmp_path / "host-plan.json"
    placed = _two_hosts(four_tables)
    save_plan(path, plan_from_placement(placed, Placement(HOST_DEVICE_OF, HOST_SPLITS)))
    return path


def test_table_row_split_is_torchrecs_table_row_wise_on_its_host(
    four_tables: list[TableSpec],
) -> None:
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_row_wise

    placed = _two_hosts(four_tables)
    spec = plan_from_placement(placed, Placement(HOST_DEVICE_OF, HOST_SPLITS))
    assert spec.local_world_size == 2
    model = ebc(list(placed.tables))
    plan = build_sharding_plan(spec, model, world_size=4)
    d = plan.plan[""]["d"]  # type: ignore[index]
    shards = [(s.shard_offsets, s.shard_sizes, str(s.placement)) for s in d.sharding_spec.shards]
    assert (d.sharding_type, d.compute_kernel, d.ranks) == ("table_row_wise", "fused", [2, 3])
    assert shards == [([0, 0], [4001, 4], "rank:2/cpu"), ([4001, 0], [4000, 4], "rank:3/cpu")]
    # The shards TorchRec's own helper makes for host 1 of hosts of 2 ranks.
    torchrec = construct_module_sharding_plan(
        model,
        {**{t.name: _parameter_of(plan, t.name) for t in placed.tables[:3]},
         "d": table_row_wise(host_index=1)},
        local_size=2,
        world_size=4,
        device_type="cpu",
    )  # fmt: skip
    assert torchrec["d"].sharding_spec.shards == d.sharding_spec.shards
    assert torchrec["d"].ranks == d.ranks
    # On cuda each block is on its rank's local device (the plan's 2 ranks per host).
    cuda = build_sharding_plan(spec, model, device_type="cuda")
    placements = [str(s.placement) for s in cuda.plan[""]["d"].sharding_spec.shards]  # type: ignore[index]
    assert placements == ["rank:2/cuda:0", "rank:3/cuda:1"]
    assert ranks_of_tables(plan)[""] == {"a": [1], "b": [3, 0], "c": [2], "d": [2, 3]}


def _parameter_of(plan: object, name: str) -> object:
    """A generator returning the ``ParameterSharding`` ``plan`` has for table ``name``."""
    sharding = plan.plan[""][name]  # type: ignore[attr-defined]
    return lambda *args: sharding


def test_torchrecs_table_row_blocks_are_row_split_sizes_over_a_host() -> None:
    from torchrec.distributed.sharding_plan import calculate_shard_sizes_and_offsets

    for local in (2, 3, 4):
        for rows in range(local, 40):
            try:
                ours = row_split_sizes(rows, local)
            except InvalidPlacementError:
                continue  # an empty block: a table_row split refuses it
            sizes, offsets = calculate_shard_sizes_and_offsets(
                torch.empty(rows, 4, device="meta"), 2 * local, local, "table_row_wise"
            )
            assert tuple(size for size, _ in sizes) == ours
            assert [offset for offset, _ in offsets] == [sum(ours[:j]) for j in range(local)]


def test_host_plan_file_round_trips(host_plan: Path) -> None:
    payload = json.loads(host_plan.read_text())
    assert (payload["version"], payload["world_size"], payload["local_world_size"]) == (3, 4, 2)
    assert payload["modules"][""]["tables"][3] == {
        "name": "d", "sharding": "table_row_wise", "ranks": [2, 3], "shard_rows": [4001, 4000],
        "rows": 8001, "dim": 4,
    }  # fmt: skip
    spec = load_plan_spec(host_plan)
    assert spec.local_world_size == 2
    assert spec.modules[""][3] == PlannedTable.split(
        "d", 8001, 4, "table_row_wise", [2, 3], [4001, 4000]
    )
    assert load_plan_spec(host_plan) == spec
    save_plan(host_plan.with_name("again.json"), spec)
    assert json.loads(host_plan.with_name("again.json").read_text()) == payload


def test_version_2_plan_file_loads_for_one_host(split_plan: Path, tmp_path: Path) -> None:
    payload = json.loads(split_plan.read_text())
    payload["version"] = 2
    del payload["local_world_size"]
    old = tmp_path / "v2.json"
    old.write_text(json.dumps(payload))
    assert load_plan_spec(old) == load_plan_spec(split_plan)
    assert load_plan_spec(old).local_world_size is None


def test_version_2_has_no_table_row_wise(host_plan: Path, tmp_path: Path) -> None:
    payload = json.loads(host_plan.read_text())
    payload["version"] = 2
    old = tmp_path / "v2.json"
    old.write_text(json.dumps(payload))
    with pytest.raises(InputError) as caught:
        load_plan_spec(old)
    assert str(caught.value) == (
        f"{old}: modules['']: table 'd': field 'sharding' is 'table_row_wise', which version 2 "
        "plan files do not have (from version 3 on)"
    )


@pytest.mark.parametrize(
    ("edits", "table_edits", "part"),
    [
        ({}, {"ranks": [1, 2]}, "table 'd': table_row_wise over ranks [1, 2] in blocks of "
         "[4001, 4000] rows ('shard_rows'), but TorchRec cuts 8001 rows over a host's 2 ranks as "
         "[4001, 4000] on ranks 0..1 (host 0; a plan for other hosts?)"),
        ({}, {"ranks": [3, 2]}, "table 'd': table_row_wise over ranks [3, 2] in blocks of "
         "[4001, 4000] rows ('shard_rows'), but TorchRec cuts 8001 rows over a host's 2 ranks as "
         "[4001, 4000] on ranks 2..3 (host 1;"),
        ({}, {"shard_rows": [4000, 4001]}, "table 'd': table_row_wise over ranks [2, 3] in blocks "
         "of [4000, 4001] rows"),
        ({}, {"ranks": [2, 3, 0], "shard_rows": [2667, 2667, 2667]}, "table 'd': table_row_wise "
         "over ranks [2, 3, 0] in blocks of [2667, 2667, 2667] rows"),
        ({"local_world_size": None}, {}, "table 'd': table_row_wise needs two hosts or more, but "
         "the plan gives no field 'local_world_size' (4 ranks)"),
        ({"local_world_size": 4}, {}, "table 'd': table_row_wise needs two hosts or more, but "
         "the plan has one host by its field 'local_world_size' (4 ranks)"),
        ({"local_world_size": 3}, {}, "plan: field 'local_world_size' is 3, which does not "
         "divide the world size 4"),
        ({"local_world_size": "2"}, {}, "field 'local_world_size' must be an integer, got '2'"),
        ({}, {"ranks": [4, 5]}, "table 'd' is on rank 4, the plan has ranks 0..3"),
    ],
)  # fmt: skip
def test_bad_table_row_wise_tables_are_refused_in_one_line(
    host_plan: Path,
    tmp_path: Path,
    edits: dict[str, object],
    table_edits: dict[str, object],
    part: str,
) -> None:
    bad = _edit_table(host_plan, tmp_path, 3, edits, **table_edits)
    _assert_refused_in_one_line(bad, part)


def test_host_plan_for_other_ranks_per_host_is_refused(
    host_plan: Path, four_tables: list[TableSpec]
) -> None:
    model = ebc(list(_two_hosts(four_tables).tables))
    with pytest.raises(InputError) as caught:
        load_sharding_plan(host_plan, model, world_size=4, local_world_size=4)
    assert str(caught.value) == (
        f"{host_plan}: plan: field 'local_world_size' is 2 but the job runs 4 ranks per host"
    )
    plan = load_sharding_plan(host_plan, model, world_size=4, local_world_size=2)
    assert plan.plan[""]["d"].sharding_type == "table_row_wise"  # type: ignore[index]


def test_table_row_placement_file_exports(four_tables: list[TableSpec], tmp_path: Path) -> None:
    placed = dataclasses.replace(_two_hosts(four_tables), name="tables")
    save_tables(tmp_path / "tables.json", list(placed.tables))
    cost = PlacementCost(per_device=(StageCosts(0, 0, 0, 0),) * 4, backend="sim")
    record = PlacementFile.of(
        placed, Placement(HOST_DEVICE_OF, HOST_SPLITS), cost, placer="x", backend="sim",
        tables_file=tmp_path / "tables.json", place_time_ms=1.0,
    )  # fmt: skip
    write_placement_file(tmp_path / "placement.json", record)
    spec = plan_from_placement_file(tmp_path / "placement.json")
    assert spec.local_world_size == 2
    assert spec.modules[""][3] == PlannedTable.split(
        "d", 8001, 4, "table_row_wise", [2, 3], [4001, 4000]
    )
