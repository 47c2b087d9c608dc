from __future__ import annotations

import copy
import errno
import fcntl
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dreamshard.backends.sim.model import SimBackend, shard_timing
from dreamshard.data.features import FeatureNormalizer
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import make_devices, make_task
from dreamshard.errors import InputError
from dreamshard.method.checkpoint import CheckpointError, DreamShardModel
from dreamshard.method.mdp import rollout, task_tensors
from dreamshard.method.policy import PolicyNet
from dreamshard.method.train import (
    LOCK_FILE,
    IterationReport,
    TrainConfig,
    Trainer,
    shard_task,
    training_lock,
)
from dreamshard.types import Placement, Task
from dreamshard.workflows.experiment import train_model

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


# -- robustness: settings, foreign files, crashes, concurrent runs, changed tasks --------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", float("inf")),
        ("learning_rate", float("nan")),
        ("entropy_weight", float("nan")),
        ("entropy_weight", float("inf")),
    ],
)
def test_non_finite_settings_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(InputError, match=f"training config: {field} must be finite"):
        changes: dict[str, Any] = {field: value}
        replace(CONFIG, **changes)


def test_an_unknown_device_error_is_refused_naming_the_field() -> None:
    with pytest.raises(InputError, match="training config: device_error must be one of"):
        replace(CONFIG, device_error="own")


def test_training_with_device_errors_fits_and_differs(tmp_path: Path) -> None:
    """The trainer passes ``device_error`` to the loss: same seed, same data, another fit."""
    losses = {}
    for mode in ("placement", "device"):
        trainer = train(tmp_path / mode, replace(CONFIG, iterations=1, device_error=mode))
        losses[mode] = trainer.state.history[-1].cost_loss
        assert np.isfinite(losses[mode])
    assert losses["placement"] != losses["device"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"shard_measurements": -1}, "shard_measurements must be >= 0"),
        ({"shard_weight": -1.0}, "shard_weight must be >= 0"),
        ({"shard_weight": float("nan")}, "shard_weight must be >= 0"),
    ],
    ids=str,
)
def test_bad_shard_settings_are_refused_naming_the_field(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=f"training config: {message}"):
        replace(CONFIG, **change)


def test_a_shard_task_is_its_tables_on_one_device_of_their_memory() -> None:
    task = replace(training_tasks()[0], optimizer="rowwise_adagrad")
    shard = shard_task(task, [4, 1])
    assert shard.tables == (task.tables[4], task.tables[1])
    assert shard.num_devices == 1 and shard.optimizer == "rowwise_adagrad"
    assert shard.devices[0].memory_bytes == sum(task.table_memory_bytes(t) for t in shard.tables)


SHARDS = replace(CONFIG, shard_measurements=12)


@pytest.fixture(scope="module")
def shard_run(tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    return train(tmp_path_factory.mktemp("shards"), SHARDS)


def test_training_with_shards_measures_them_on_the_backend(shard_run: Trainer) -> None:
    shards = shard_run.state.shards
    assert len(shards) == SHARDS.iterations * SHARDS.shard_measurements
    tasks = {t.name: t for t in training_tasks()}
    for s in shards:
        task = tasks[s.task.name]
        assert 1 <= len(s.tables) <= task.num_tables and len(set(s.tables)) == len(s.tables)
        timing = shard_timing(SimBackend().profile, [task.tables[i] for i in s.tables])
        assert (s.fwd_comp_ms, s.bwd_comp_ms) == pytest.approx(
            (timing.fwd_comp_ms, timing.bwd_comp_ms), rel=1e-12
        )
    # A device's share here is 3 tables: shards of several sizes around it.
    assert len({len(s.tables) for s in shards}) >= 3
    history = shard_run.state.history
    assert [r.shard_measurements for r in history] == [12, 24, 36]
    assert history[0].new_shard_mape is None
    assert all(r.new_shard_mape is not None and r.new_shard_mape > 0 for r in history[1:])
    assert shard_run.model.info["shard_measurements"] == 36


def test_training_with_shards_makes_the_computation_heads_context_free(
    shard_run: Trainer, tmp_path: Path
) -> None:
    assert not shard_run.model.costnet.compute_context
    assert not DreamShardModel.load(shard_run.out_dir).costnet.compute_context
    # ... and the shards' loss is part of the fit: the same run without it fits otherwise.
    plain = train(tmp_path, replace(SHARDS, shard_weight=0.0))
    assert plain.state.history[-1].cost_loss != shard_run.state.history[-1].cost_loss


def test_a_run_with_shards_resumes_to_the_same_model(shard_run: Trainer, tmp_path: Path) -> None:
    def stop_after_two(report: IterationReport) -> None:
        if report.iteration == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(tmp_path, SHARDS, on_iteration=stop_after_two)
    resumed = Trainer(SHARDS, training_tasks(), SimBackend(), tmp_path)
    assert resumed.resume()
    assert len(resumed.state.shards) == 2 * SHARDS.shard_measurements
    resumed.run()
    assert resumed.state.shards == shard_run.state.shards
    assert same_weights(resumed.model, shard_run.model)


def test_diverging_training_stops_with_one_line_and_saves_nothing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"training diverged in iteration 1.*lower the learning"):
        train(tmp_path, replace(CONFIG, iterations=1, learning_rate=1e30))
    assert not (tmp_path / "model.pt").exists()


def test_training_on_devices_with_huge_memory_works(tmp_path: Path) -> None:
    pool = generate_table_pool(num_tables=12, seed=0, max_rows=10000)
    tasks = [
        make_task(f"task{k}", pool[6 * k : 6 * k + 6], make_devices(2, 10**30)) for k in (0, 1)
    ]
    Trainer(replace(CONFIG, iterations=1), tasks, SimBackend(), tmp_path).run()
    assert DreamShardModel.load(tmp_path).info["iterations_done"] == 1


def test_resume_from_a_foreign_torch_file_raises_one_line(tmp_path: Path) -> None:
    torch.save({"a": 1}, tmp_path / "train_state.pt")
    trainer = Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path)
    with pytest.raises(CheckpointError, match=r"train_state.pt: not a DreamShard training state"):
        trainer.resume()


def test_resume_from_a_damaged_training_state_raises_one_line(run: Run, tmp_path: Path) -> None:
    state = torch.load(run.out_dir / "train_state.pt", weights_only=False)
    del state["buffer"]
    torch.save(state, tmp_path / "train_state.pt")
    trainer = Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path)
    with pytest.raises(CheckpointError, match=r"train_state.pt: damaged training state"):
        trainer.resume()


def test_resume_from_a_state_of_an_older_version_is_refused(run: Run, tmp_path: Path) -> None:
    # What train_state.pt held before it had a format (and a task fingerprint).
    state = torch.load(run.out_dir / "train_state.pt", weights_only=False)
    old = {k: v for k, v in state.items() if k in OLD_STATE_KEYS}
    old["task_names"] = [t.name for t in training_tasks()]
    torch.save(old, tmp_path / "train_state.pt")
    (tmp_path / "model.pt").write_bytes((run.out_dir / "model.pt").read_bytes())
    trainer = Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path)
    with pytest.raises(CheckpointError, match=r"older dreamshard.*--no-resume"):
        trainer.resume()


OLD_STATE_KEYS = (
    "iteration",
    "config",
    "buffer",
    "history",
    "cost_opt",
    "policy_opt",
    "cost_sched",
    "policy_sched",
    "numpy_rng",
    "torch_generator",
    "torch_rng",
)


def changed_memory(tasks: list[Task]) -> list[Task]:
    devices = make_devices(2, 10**8)
    return [replace(tasks[0], devices=devices), *tasks[1:]]


def changed_table(tasks: list[Task]) -> list[Task]:
    tables = (replace(tasks[1].tables[0], rows=tasks[1].tables[0].rows + 1), *tasks[1].tables[1:])
    return [tasks[0], replace(tasks[1], tables=tables), *tasks[2:]]


def changed_optimizer(tasks: list[Task]) -> list[Task]:
    return [*tasks[:2], replace(tasks[2], optimizer="rowwise_adagrad")]


@pytest.mark.parametrize(
    ("change", "name"),
    [(changed_memory, "task0"), (changed_table, "task1"), (changed_optimizer, "task2")],
)
def test_resume_with_same_task_names_but_other_content_raises(
    run: Run, change: Any, name: str
) -> None:
    trainer = Trainer(CONFIG, change(training_tasks()), SimBackend(), run.out_dir)
    with pytest.raises(CheckpointError, match=f"task '{name}' is not the one it was trained on"):
        trainer.resume()


class Killed(Exception):
    """Stands for the process dying at that point."""


@pytest.mark.parametrize("fatal_write", [3, 4])
def test_crash_between_checkpoint_writes_resumes_to_the_same_model(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fatal_write: int
) -> None:
    # Each iteration writes two torch files; dying at either write of iteration 2 (after
    # the bytes reach the disk, before anything else) must leave a checkpoint that either
    # refuses to resume or resumes exactly (the run then equals an uninterrupted one).
    real_save = torch.save
    writes = []

    def dying_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        writes.append(f)
        real_save(obj, f, *args, **kwargs)
        if len(writes) == fatal_write:
            raise Killed

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Killed):
        train(tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    resumed = Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path)
    assert resumed.resume()
    resumed.run()
    assert history_without_time(resumed.state.history) == history_without_time(
        run.trainer.state.history
    )
    assert same_weights(resumed.model, run.trainer.model)
    assert same_weights(DreamShardModel.load(tmp_path), run.trainer.model)


@pytest.mark.parametrize("stale", ["model.pt", "train_state.pt"])
def test_model_and_state_of_different_iterations_never_resume_silently(
    run: Run, tmp_path: Path, stale: str
) -> None:
    # A folder whose two files come from iterations 1 and 2 (what a kill between the two
    # writes left before checkpoints were one unit): resume refuses, or repairs and then
    # trains exactly like an uninterrupted run.
    old = {}

    def keep_first_then_stop(report: IterationReport) -> None:
        if report.iteration == 1:
            old[stale] = (tmp_path / stale).read_bytes()
        if report.iteration == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(tmp_path, on_iteration=keep_first_then_stop)
    (tmp_path / stale).write_bytes(old[stale])
    resumed = Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path)
    try:
        resumed.resume()
    except CheckpointError as err:
        assert "\n" not in str(err)
        return
    resumed.run()
    assert same_weights(resumed.model, run.trainer.model)


def test_stale_temporary_files_are_removed_when_training_starts(tmp_path: Path) -> None:
    for name in (".model.pt.tmp", ".train_state.pt.tmp", ".model.pt.x1y2.tmp"):
        (tmp_path / name).write_bytes(b"left by a killed run")
    (tmp_path / "notes.tmp").write_text("the user's own file")
    with training_lock(tmp_path):
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert left == ["notes.tmp"]


def test_a_second_training_of_the_same_folder_is_refused(tmp_path: Path) -> None:
    with training_lock(tmp_path):
        message = f"{tmp_path} is being trained by another process \\(pid {os.getpid()}\\)"
        with pytest.raises(InputError, match=message):
            train_model(replace(CONFIG, iterations=1), training_tasks(), SimBackend(), tmp_path)
    assert not (tmp_path / "model.pt").exists()


def test_the_training_lock_is_released_on_exit_and_on_error(tmp_path: Path) -> None:
    with pytest.raises(Interrupted), training_lock(tmp_path):
        raise Interrupted
    with training_lock(tmp_path):
        pass
    trained = train_model(replace(CONFIG, iterations=1), training_tasks(), SimBackend(), tmp_path)
    assert trained.history[-1].iteration == 1
    with training_lock(tmp_path):
        pass


def test_another_process_holding_the_lock_is_named(tmp_path: Path) -> None:
    # The lock's protocol without importing torch (seconds): flock the lock file, pid in it.
    code = (
        "import fcntl, os, sys\n"
        "with open(sys.argv[1], 'a+') as f:\n"
        "    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    f.write(str(os.getpid())); f.flush()\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / LOCK_FILE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with (
            pytest.raises(InputError, match=f"another process \\(pid {holder.pid}\\)"),
            training_lock(tmp_path),
        ):
            pass
    finally:
        holder.communicate("\n", timeout=30)
    with training_lock(tmp_path):
        pass


def test_training_tables_whose_features_overflow_are_named(tmp_path: Path) -> None:
    tasks = training_tasks()
    tables = (*tasks[1].tables[:2], replace(tasks[1].tables[2], pooling_factor=1e308))
    tasks[1] = replace(tasks[1], tables=tables)
    with (
        np.errstate(over="ignore", invalid="ignore"),
        pytest.raises(InputError, match=f"task 'task1': table '{tables[2].name}': its features"),
    ):
        Trainer(CONFIG, tasks, SimBackend(), tmp_path)


def test_a_model_without_a_training_state_is_not_trained_over(run: Run, tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes((run.out_dir / "model.pt").read_bytes())
    trainer = Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path)
    with pytest.raises(CheckpointError, match=r"model.pt but no train_state.pt.*--no-resume"):
        trainer.resume()
    assert (tmp_path / "model.pt").read_bytes() == (run.out_dir / "model.pt").read_bytes()


def test_resume_from_a_pickle_of_a_class_that_no_longer_exists_raises_one_line(
    tmp_path: Path,
) -> None:
    # A pickle naming a module that cannot be imported (here: one that never existed).
    payload = b"\x80\x02cno_such_module_here\nThing\nq\x00)\x81q\x01."
    (tmp_path / "train_state.pt").write_bytes(payload)
    trainer = Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path)
    with pytest.raises(CheckpointError, match=r"train_state.pt: cannot read training state"):
        trainer.resume()


def test_a_folder_that_cannot_be_locked_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with (
        pytest.raises(InputError, match="cannot lock the model folder \\(No locks available\\)"),
        training_lock(tmp_path),
    ):
        pass


def test_a_policy_that_dead_ends_falls_back_to_a_memory_packing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import dreamshard.method.train as train_module
    from dreamshard.data.tasks import first_fit_decreasing

    def dead_ends(*args: Any, **kwargs: Any) -> Any:
        result = rollout(*args, **kwargs)
        return replace(result, feasible=torch.zeros_like(result.feasible))

    monkeypatch.setattr(train_module, "rollout", dead_ends)
    tasks = training_tasks()
    paper = replace(CONFIG, mix_policy=1.0, mix_search=0.0, mix_perturbed=0.0, mix_reference=0.0)
    trainer = Trainer(paper, tasks, SimBackend(), tmp_path)
    with caplog.at_level("WARNING", logger="dreamshard.method.train"):
        new = trainer.collect()
    assert trainer.fallback_placements == CONFIG.measurements_per_iteration
    assert all(m.placement == first_fit_decreasing(m.task) for m in new)
    (record,) = [r for r in caplog.records if "first-fit-decreasing" in r.getMessage()]
    assert "for 4 of 4 sampled tasks" in record.getMessage()


def test_a_task_nothing_can_pack_is_one_clear_error(tmp_path: Path) -> None:
    pool = generate_table_pool(num_tables=40, seed=0, max_rows=10000)
    tables = pool[:4]
    largest = max(t.size_bytes for t in tables)
    # Every table fits a device alone, but not all of them on 2 such devices.
    packed = Task("tight", tuple(tables), make_devices(2, largest))
    assert sum(t.size_bytes for t in tables) > 2 * largest  # so no packing exists
    trainer = Trainer(CONFIG, [packed], SimBackend(), tmp_path)
    with pytest.raises(InputError, match="nor did first-fit decreasing"):
        trainer.sample_placement(packed)


def test_the_mix_splits_measurements_by_largest_remainder() -> None:
    from dreamshard.method.train import _split

    assert _split(10, TrainConfig().mix) == {
        "policy": 4,
        "search": 3,
        "perturbed": 2,
        "reference": 1,
    }
    assert _split(4, TrainConfig().mix) == {
        "policy": 2,
        "search": 1,
        "perturbed": 1,
        "reference": 0,
    }
    paper = TrainConfig(mix_policy=1, mix_search=0, mix_perturbed=0, mix_reference=0)
    assert _split(7, paper.mix) == {"policy": 7, "search": 0, "perturbed": 0, "reference": 0}


def test_bad_mix_is_refused() -> None:
    with pytest.raises(InputError, match="mix shares"):
        TrainConfig(mix_policy=0, mix_search=0, mix_perturbed=0, mix_reference=0)
    with pytest.raises(InputError, match="mix shares"):
        TrainConfig(mix_policy=-1)


def test_reference_share_measures_each_reference_placement_once(tmp_path: Path) -> None:
    from dreamshard.placers.rules import GreedyPlacer

    config = replace(
        CONFIG, iterations=2, mix_policy=0, mix_search=0, mix_perturbed=0, mix_reference=1
    )
    references = [GreedyPlacer(p) for p in ("size", "dim", "lookup", "size-lookup")]
    trainer = train(tmp_path, config, reference_placers=references)
    expected = {
        (t.name, references[i].place(t)) for t in trainer.tasks for i in range(len(references))
    }
    measured = [(m.task.name, m.placement) for m in trainer.state.buffer]
    reference_measured = [m for m in measured if m in expected]
    # Each reference placement at most once; the rest (when a task's references are all
    # measured) come from the search.
    assert len(reference_measured) == len(set(reference_measured)) > 0


def test_fine_tuning_starts_from_the_given_model(run: Run, tmp_path: Path) -> None:
    init = run.trainer.model
    trainer = Trainer(CONFIG, training_tasks(), SimBackend(), tmp_path, init=init, init_source="x")
    assert same_weights(trainer.model, init)
    assert trainer.model.normalizer.to_dict() == init.normalizer.to_dict()
    trainer.run()
    assert trainer.model.costnet.cost_scale_ms == init.costnet.cost_scale_ms
    assert not same_weights(trainer.model, init)
    assert trainer.model.info["init"] == "x"
    # The given model is not changed by fine-tuning.
    assert same_weights(init, run.trainer.model)


def test_pairwise_loss_compares_placements_of_one_task_only() -> None:
    from dreamshard.method.costnet import CostNet, CostTargets, PlacementBatch
    from dreamshard.types import PlacementCost, StageCosts

    torch.manual_seed(0)
    net = CostNet()
    t = training_tasks()[0]
    features = FeatureNormalizer.fit(list(t.tables)).transform(t.tables)
    placements = [Placement((0, 0, 0, 1, 1, 1)), Placement((0, 1, 0, 1, 0, 1))]
    batch = PlacementBatch.build([features] * 2, placements, [2, 2])
    costs = [PlacementCost((StageCosts(c, 0.0, 0.0, c),) * 2, "sim", None) for c in (1.0, 3.0)]
    targets = CostTargets.build(costs, 2, 1.0)
    base = net.loss(batch, targets)
    same = net.loss(batch, targets, torch.tensor([0, 0]), 1.0)
    apart = net.loss(batch, targets, torch.tensor([0, 1]), 1.0)
    assert torch.equal(apart, base)  # no pair of one task
    assert same > base


def test_warmup_measures_the_backend_searchs_optimum_of_each_chosen_task(
    tmp_path: Path,
) -> None:
    from dreamshard.method.search import greedy_placement, local_search
    from dreamshard.method.train import TRAINING_SEARCH, WARMUP_MOVES
    from dreamshard.placers.rules import GreedyPlacer

    notes: list[str] = []
    config = replace(CONFIG, iterations=1, warmup_tasks=2)
    backend = SimBackend()
    trainer = Trainer(
        config, training_tasks(), backend, tmp_path,
        reference_placers=[GreedyPlacer("size")], on_note=notes.append,
    )  # fmt: skip
    warm = trainer.warmup()
    tasks = {m.task.name for m in warm}
    assert len(tasks) == 2
    for name in tasks:
        task = next(t for t in trainer.tasks if t.name == name)
        mine = [m for m in warm if m.task.name == name]
        placements = [m.placement for m in mine]
        # greedy start, optimum, placer, policy sample, 1 reference, the perturbations
        assert len(placements) == len(set(placements)) <= 4 + 1 + 2 * len(WARMUP_MOVES)
        model = backend.stage_model(task)
        start = greedy_placement(task, model)
        assert start is not None
        best, _ = local_search(
            task, model, start, max_passes=TRAINING_SEARCH.max_passes,
            max_evaluations=TRAINING_SEARCH.max_evaluations,
        )  # fmt: skip
        assert start in placements and best in placements
        assert GreedyPlacer("size").place(task) in placements
        # Measured on the backend: the costs are the simulator's own.
        for m in mine:
            assert m.cost.cost_ms == pytest.approx(backend.cost_ms(task, m.placement))
    assert notes == [f"warm-up: 2/2 tasks, {len(warm)} measurements, " + notes[0].split(", ")[-1]]


def test_a_warmed_up_run_keeps_its_measurements_and_resumes(tmp_path: Path) -> None:
    config = replace(CONFIG, iterations=1, warmup_tasks=2)
    trainer = train(tmp_path, config)
    count = len(trainer.state.buffer)
    assert count > config.measurements_per_iteration  # warm-up + the iteration's own
    again = Trainer(replace(config, iterations=2), training_tasks(), SimBackend(), tmp_path)
    assert again.resume()
    again.run()  # no second warm-up: one more iteration's measurements only
    assert len(again.state.buffer) == count + config.measurements_per_iteration


def test_a_state_saved_before_a_setting_existed_resumes_with_its_default(run: Run) -> None:
    state = torch.load(run.out_dir / "train_state.pt", weights_only=False)
    del state["config"]["warmup_tasks"]
    trainer = Trainer(CONFIG, training_tasks(), SimBackend(), run.out_dir)
    trainer._restore(state, run.out_dir / "train_state.pt")
    assert trainer.state.iteration == CONFIG.iterations
