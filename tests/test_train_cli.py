"""`train` and `place --placer dreamshard` on what a new user may throw at them, through
the real CLI: one line, exit code 2, nothing written; or simply working."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .test_cli import assert_one_line_error, run

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = [
    "--backend",
    "sim",
    "--iterations",
    "1",
    "--measurements",
    "2",
    "--cost-steps",
    "4",
    "--cost-batch",
    "4",
    "--policy-batches",
    "2",
    "--episodes",
    "2",
]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("suite")
    assert run("gen-tables", "--out", folder / "pool.json", "--num", "24").exit_code == 0
    result = run(
        "gen-tasks",
        *("--tables", folder / "pool.json", "--out", folder / "suite.json"),
        *("--num-train", "2", "--num-test", "1", "--tables-per-task", "4"),
        *("--devices", "2", "--memory", "1GB"),
    )
    assert result.exit_code == 0, result.output
    return folder / "suite.json"


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--lr", "inf", "learning_rate"),
        ("--lr", "nan", "learning_rate"),
        ("--entropy", "nan", "entropy_weight"),
    ],
)
def test_non_finite_settings_are_one_line_and_write_nothing(
    suite: Path, tmp_path: Path, option: str, value: str, field: str
) -> None:
    out = tmp_path / "model"
    result = run("train", "--tasks", suite, "--out", out, *TINY, option, value)
    assert_one_line_error(result, field, "finite")
    assert not out.exists()


def test_resuming_from_a_foreign_state_is_one_line(suite: Path, tmp_path: Path) -> None:
    tmp_path.joinpath("model").mkdir()
    torch.save({"a": 1}, tmp_path / "model" / "train_state.pt")
    result = run("train", "--tasks", suite, "--out", tmp_path / "model", *TINY)
    assert_one_line_error(result, "train_state.pt", "not a DreamShard training state")


def test_place_with_an_unrelated_model_file_is_one_line(tmp_path: Path) -> None:
    assert run("gen-tables", "--out", tmp_path / "pool.json", "--num", "4").exit_code == 0
    (tmp_path / "model").mkdir()
    torch.save({"a": 1}, tmp_path / "model" / "model.pt")
    result = run(
        "place",
        *("--tables", tmp_path / "pool.json", "--devices", "2", "--memory", "1GB"),
        *("--placer", "dreamshard", "--model", tmp_path / "model", "--backend", "sim"),
    )
    line = assert_one_line_error(result, "model.pt", "not a DreamShard model file")
    assert "format None" not in line


def test_placing_on_devices_beyond_int64_bytes_works(suite: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    assert run("train", "--tasks", suite, "--out", model, *TINY).exit_code == 0
    assert run("gen-tables", "--out", tmp_path / "pool.json", "--num", "4").exit_code == 0
    result = run(
        "place",
        *("--tables", tmp_path / "pool.json", "--devices", "2", "--memory", "1e19"),
        *("--placer", "dreamshard", "--model", model, "--backend", "sim"),
    )
    assert result.exit_code == 0, result.output
