from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from dreamshard.backends.sim.model import SimBackend
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import make_devices, make_task
from dreamshard.method.checkpoint import CheckpointError, DreamShardModel
from dreamshard.method.mdp import rollout, task_tensors
from dreamshard.method.policy import PolicyNet
from dreamshard.method.train import IterationReport, TrainConfig, Trainer
from dreamshard.types import Placement, Task

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = TrainConfig(
    iterations=3,
    measurements_per_iteration=4,
    cost_steps=40,
    cost_batch_size=8,
    policy_batches=20,
    episodes_per_batch=8,
    learning_rate=5e-3,
    seed=0,
)


def training_tasks() -> list[Task]:
    """Three tasks of 6 tables on 2 devices with ample memory."""
    pool = generate_table_pool(num_tables=40, seed=0, max_rows=10000)
    return [
        make_task(f"task{k}", pool[6 * k : 6 * k + 6], make_devices(2, 10**9)) for k in range(3)
    ]


def train(out_dir: Path, config: TrainConfig = CONFIG, **kwargs: Any) -> Trainer:
    trainer = Trainer(config, training_tasks(), SimBackend(), out_dir, **kwargs)
    trainer.run()
    return trainer


def weights(model: DreamShardModel) -> dict[str, torch.Tensor]:
    return {
        **{f"costnet.{k}": v for k, v in model.costnet.state_dict().items()},
        **{f"policy.{k}": v for k, v in model.policy.state_dict().items()},
    }


def same_weights(a: DreamShardModel, b: DreamShardModel) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def history_without_time(history: list[IterationReport]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(r).items() if k != "wall_s"} for r in history]


def greedy_placements(model: DreamShardModel, tasks: list[Task]) -> list[tuple[int, ...]]:
    out = []
    with torch.no_grad():
        for t in tasks:
            tt = task_tensors(t, model.normalizer, model.costnet)
            result = rollout(model.policy, model.costnet, tt, 1, greedy=True)
            out.append(tuple(result.device_of[0].tolist()))
    return out


@dataclass
class Run:
    trainer: Trainer
    untrained_policy: PolicyNet
    out_dir: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One training run of CONFIG, shared by the tests that only read it."""
    out_dir = tmp_path_factory.mktemp("train")
    trainer = Trainer(CONFIG, training_tasks(), SimBackend(), out_dir)
    untrained = copy.deepcopy(trainer.model.policy)
    trainer.run()
    return Run(trainer, untrained, out_dir)


def test_training_lowers_the_policys_cost(run: Run) -> None:
    model = run.trainer.model
    backend = SimBackend()
    scale = model.costnet.cost_scale_ms
    predicted: dict[str, list[float]] = {"before": [], "after": []}
    greedy: dict[str, list[float]] = {"before": [], "after": []}
    measured: dict[str, list[float]] = {"before": [], "after": []}
    for t in training_tasks():
        tt = task_tensors(t, model.normalizer, model.costnet)
        for when, policy in (("before", run.untrained_policy), ("after", model.policy)):
            with torch.no_grad():
                gen = torch.Generator().manual_seed(1)
                sampled = rollout(policy, model.costnet, tt, 64, False, gen)
                best = rollout(policy, model.costnet, tt, 1, greedy=True)
            predicted[when].append(float(sampled.predicted_cost.mean()) * scale)
            greedy[when].append(float(best.predicted_cost[0]) * scale)
            costs = backend.measure(t, [Placement(tuple(p.tolist())) for p in sampled.device_of])
            measured[when].append(sum(c.cost_ms for c in costs) / len(costs))
    # Per task, the policy's samples are rated cheaper by the (trained) cost network...
    for before, after in zip(predicted["before"], predicted["after"], strict=True):
        assert after < before
    # ... its greedy placements too, over the tasks together, and the simulator agrees.
    assert sum(greedy["after"]) < sum(greedy["before"])
    assert sum(measured["after"]) < sum(measured["before"])


def test_same_seed_same_model_and_placements(run: Run, tmp_path: Path) -> None:
    again = train(tmp_path)
    assert same_weights(again.model, run.trainer.model)
    assert history_without_time(again.state.history) == history_without_time(
        run.trainer.state.history
    )
    tasks = training_tasks()
    assert greedy_placements(again.model, tasks) == greedy_placements(run.trainer.model, tasks)


def test_other_seed_other_model(run: Run, tmp_path: Path) -> None:
    other = train(tmp_path, replace(CONFIG, iterations=1, seed=1))
    assert not same_weights(other.model, run.trainer.model)


def test_checkpoint_files_after_run(run: Run) -> None:
    for name in ("model.pt", "train_state.pt", "history.json", "config.json"):
        assert (run.out_dir / name).is_file(), name
    history = json.loads((run.out_dir / "history.json").read_text())
    assert [r["iteration"] for r in history] == [1, 2, 3]
    config = json.loads((run.out_dir / "config.json").read_text())
    assert config["config"] == asdict(CONFIG)
    loaded = DreamShardModel.load(run.out_dir)
    assert same_weights(loaded, run.trainer.model)


def test_measurements_reported_equal_iterations_times_per_iteration(run: Run) -> None:
    per_iteration = CONFIG.measurements_per_iteration
    assert [r.measurements for r in run.trainer.state.history] == [
        per_iteration * k for k in range(1, CONFIG.iterations + 1)
    ]
    assert run.trainer.model.info["measurements"] == CONFIG.iterations * per_iteration
    assert len(run.trainer.state.buffer) == CONFIG.iterations * per_iteration


def test_resume_continues_to_more_iterations(tmp_path: Path) -> None:
    first = train(tmp_path, replace(CONFIG, iterations=2))
    assert len(first.state.history) == 2
    more = Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path)
    assert more.resume()
    assert more.state.iteration == 2
    more.run()
    assert [r.iteration for r in more.state.history] == [1, 2, 3]
    assert history_without_time(more.state.history[:2]) == history_without_time(first.state.history)
    assert more.state.history[-1].measurements == 3 * CONFIG.measurements_per_iteration
    assert len(json.loads((tmp_path / "history.json").read_text())) == 3
    # Training went on: the weights moved past the 2-iteration model.
    assert not same_weights(more.model, first.model)


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_model(run: Run, tmp_path: Path) -> None:
    def stop_after_two(report: IterationReport) -> None:
        if report.iteration == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(tmp_path, on_iteration=stop_after_two)
    resumed = Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path)
    assert resumed.resume()
    resumed.run()
    assert history_without_time(resumed.state.history) == history_without_time(
        run.trainer.state.history
    )
    assert same_weights(resumed.model, run.trainer.model)


def test_resume_without_checkpoint_returns_false(tmp_path: Path) -> None:
    assert not Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path).resume()


@pytest.mark.parametrize(
    "change", [{"learning_rate": 1e-3}, {"seed": 1}, {"cost_steps": 41}], ids=str
)
def test_resume_with_another_config_raises(run: Run, change: dict[str, Any]) -> None:
    config = replace(CONFIG, iterations=5, **change)
    trainer = Trainer(config, training_tasks(), SimBackend(), run.out_dir)
    with pytest.raises(CheckpointError, match="only --iterations may change"):
        trainer.resume()


def test_resume_with_other_tasks_raises(run: Run) -> None:
    trainer = Trainer(CONFIG, training_tasks()[:2], SimBackend(), run.out_dir)
    with pytest.raises(CheckpointError, match="other training tasks"):
        trainer.resume()


def test_resume_from_a_file_that_is_not_a_checkpoint_raises_checkpoint_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "train_state.pt").write_bytes(b"not a torch file")
    trainer = Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path)
    with pytest.raises(CheckpointError, match="cannot read"):
        trainer.resume()
