"""The demo workflow end to end on a tiny config, on the simulator."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dreamshard.method.train import TrainConfig
from dreamshard.workflows.demo import DemoConfig, run_demo


def test_run_demo_trains_compares_and_writes_its_files(tmp_path: Path) -> None:
    config = DemoConfig(
        out_dir=str(tmp_path / "demo"),
        num_tables=40,
        max_rows=2000,
        num_train_tasks=2,
        num_test_tasks=2,
        tables_per_task=4,
        num_devices=2,
        memory="1GB",
        backend="sim",
        placers=("size", "dreamshard"),
        train=TrainConfig(
            iterations=1, measurements_per_iteration=2, cost_steps=3, policy_batches=1
        ),
    )
    lines: list[str] = []
    steps: list[tuple[str, str]] = []
    progress_seen: list[str] = []

    @contextmanager
    def progress(description: str) -> Iterator[Callable[[int, int], None]]:
        progress_seen.append(description)
        yield lambda done, total: progress_seen.append(f"{done}/{total}")

    result = run_demo(
        config, log=lines.append, progress=progress, step=lambda t, d: steps.append((t, d))
    )
    out = tmp_path / "demo"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "evaluation.json", "model", "tables.json", "tasks.json",
    ]  # fmt: skip
    assert [t for t, _ in steps] == [
        "1. fine-tuning the packaged DreamShard model",
        "2. evaluating every placer on the unseen test tasks",
    ]
    assert (
        lines[0] == f"wrote {out / 'tables.json'}, {out / 'tasks.json'} and {out / 'config.json'}"
    )
    assert any(line.startswith("iter   1  measurements") for line in lines)
    assert lines[-1].startswith("trained: 2 backend measurements")
    assert progress_seen == ["evaluating 2 placers on sim", "1/2", "2/2"]

    assert result.evaluation_path == out / "evaluation.json"
    assert len(result.trained.history) == 1
    evaluation = result.comparison.evaluation
    assert evaluation.placers == ("size", "dreamshard")
    assert evaluation.tasks == ("test-0", "test-1")
    assert result.comparison.torchrec_estimates is None  # no torchrec placer
    payload = json.loads(result.evaluation_path.read_text())
    assert payload["config"]["demo"] == str(out / "config.json")
    assert payload["config"]["windows"] == 8 and payload["config"]["batch_size"] == 4096
    assert payload == result.comparison.to_json(payload["config"])
    assert "torchrec_estimates" not in payload
