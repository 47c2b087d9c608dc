"""Train, then compare: the sequence the demo, the CLI and the benchmark share.

A DreamShard model is trained on training tasks (resuming a checkpoint in its folder
when asked, :func:`train_model`), then placers are compared on unseen tasks, every
placement of a task measured together on one backend (:func:`compare_placers`). One task
placed and measured (``dreamshard place``) is :func:`place_and_measure`.

Torch is imported only to train, so placing and comparing stay light.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamshard.backends import BackendOptions, make_backend
from dreamshard.data.constraints import constraints_for
from dreamshard.evaluation.evaluate import Evaluation, evaluate
from dreamshard.placers.dreamshard import DreamShardPlacer
from dreamshard.placers.registry import PlacerOptions, make_placer
from dreamshard.types import (
    CostBackend,
    MeasurementConditions,
    Placement,
    PlacementCost,
    Placer,
    ReportsConditions,
    Task,
)

if TYPE_CHECKING:  # torch loads only when a model is trained, not to place or compare
    from dreamshard.method.checkpoint import DreamShardModel
    from dreamshard.method.train import IterationReport, TrainConfig

#: Receives one human-readable line per step.
Log = Callable[[str], None]
#: Called with (done, total) as work advances.
ProgressCallback = Callable[[int, int], None]
#: Given a description, a context manager yielding the (done, total) callback of that
#: piece of work (a progress bar, or printed lines); it ends when the work does.
Progress = Callable[[str], AbstractContextManager[ProgressCallback]]


@contextmanager
def _no_progress(description: str) -> Iterator[ProgressCallback | None]:
    yield None


def iteration_line(report: IterationReport) -> str:
    """One line describing a training iteration (the CLI and the benchmark print it)."""
    mape = f"{report.new_cost_mape:5.1f}%" if report.new_cost_mape is not None else "    -"
    shards = ""
    if report.shard_measurements:
        error = f"{report.new_shard_mape:.1f}%" if report.new_shard_mape is not None else "-"
        shards = f"shards {report.shard_measurements} (error on new {error})  "
    return (
        f"iter {report.iteration:3d}  measurements {report.measurements:5d}  "
        f"measured mean {report.measured_mean_cost_ms:8.3f} ms  cost-net error on new {mape}  "
        f"{shards}policy predicted {report.policy_predicted_cost_ms:8.3f} ms  "
        f"({report.wall_s:.1f} s)"
    )


@dataclass(frozen=True)
class TrainedModel:
    """A trained model and how its training went.

    Attributes:
        model: The model (also saved in ``out_dir``).
        out_dir: Its folder.
        history: One report per iteration, resumed iterations included.
        resumed_at: Iteration a resumed run continued from, or None for a fresh run.
    """

    model: DreamShardModel
    out_dir: Path
    history: tuple[IterationReport, ...]
    resumed_at: int | None

    @property
    def train_wall_s(self) -> float:
        """Wall time of all iterations."""
        return float(sum(r.wall_s for r in self.history))


def train_model(
    config: TrainConfig,
    tasks: Sequence[Task],
    backend: CostBackend,
    out_dir: str | Path,
    resume: bool = True,
    log: Log | None = None,
    indent: str = "",
    init: str | Path | None = None,
    profile: str = "cpu-zen4",
) -> TrainedModel:
    """Train DreamShard on ``tasks`` measured on ``backend``; checkpoints go to ``out_dir``.

    The measurement mix's reference placements are the expert rules'
    (``placers.rules``).

    Args:
        config: Training settings.
        tasks: Training tasks.
        backend: Where training measurements come from.
        out_dir: Model folder; a checkpoint there is continued when ``resume``.
        resume: Continue from a checkpoint in ``out_dir`` if there is one.
        log: Receives a line when training starts, resumes, after every iteration and at
            the end.
        indent: Prefix of every logged line.
        init: Start from this model (``"packaged"``: the packaged model of ``profile``;
            else a model folder) and fine-tune it, instead of fresh networks.
        profile: Hardware profile whose packaged model ``init="packaged"`` means.
    """
    from dreamshard.method.checkpoint import DreamShardModel, resolve_model_dir
    from dreamshard.method.train import Trainer, training_lock
    from dreamshard.placers.rules import PROXIES, GreedyPlacer

    folder = Path(out_dir)

    def on_iteration(report: IterationReport) -> None:
        if log is not None:
            log(indent + iteration_line(report))

    # The lock spans reading the checkpoint to writing the last one: a second run of the
    # folder is refused instead of interleaving its checkpoints with this one's.
    initial = None
    if init is not None:
        init_dir = resolve_model_dir(init, profile)
        initial = DreamShardModel.load(init_dir)
    references = [GreedyPlacer(proxy) for proxy in PROXIES]
    with training_lock(folder):
        trainer = Trainer(
            config,
            tasks,
            backend,
            folder,
            on_iteration=on_iteration,
            reference_placers=references,
            init=initial,
            init_source=None if init is None else str(init),
            on_note=None if log is None else (lambda line: log(indent + line)),
        )
        resumed_at = trainer.state.iteration if resume and trainer.resume() else None
        if log is not None:
            if resumed_at is not None:
                log(f"{indent}resumed {folder} at iteration {resumed_at}")
            start = "fresh networks" if init is None else f"the model {init}"
            log(
                f"{indent}training on {len(tasks)} tasks, backend {backend.name}, "
                f"{config.iterations} iterations x {config.measurements_per_iteration} "
                f"measurements, from {start}"
            )
        model = trainer.run()
    trained = TrainedModel(model, folder, tuple(trainer.state.history), resumed_at)
    if log is not None:
        log(
            f"{indent}trained: {model.info.get('measurements')} backend measurements, "
            f"{trained.train_wall_s:.1f} s; model in {folder}"
        )
    return trained


# -- placing and comparing --------------------------------------------------------------


@dataclass(frozen=True)
class PlacedTask:
    """One task placed by one placer and measured.

    Attributes:
        task: The task.
        placer: Name of the placer.
        placement: Its placement.
        place_time_ms: Wall time the placer took.
        backend: Name of the backend that measured it.
        cost: The measured cost.
        conditions: How quiet the machine was (measuring backends only).
        how: How a DreamShard placer chose it (None for other placers).
    """

    task: Task
    placer: str
    placement: Placement
    place_time_ms: float
    backend: str
    cost: PlacementCost
    conditions: MeasurementConditions | None = None
    how: str | None = None


def place_and_measure(
    task: Task,
    placer: str,
    placer_options: PlacerOptions,
    backend: str,
    backend_options: BackendOptions,
    progress: Progress | None = None,
) -> PlacedTask:
    """Place ``task`` with the placer called ``placer``, then measure it on ``backend``.

    Args:
        task: The task.
        placer: Placer name (see :data:`dreamshard.placers.registry.PLACERS`).
        placer_options: How to build the placer.
        backend: Backend name; built after placing, so a bad task fails first.
        backend_options: How to build the backend.
        progress: Shows the measurement's progress (timed shard-windows).
    """
    chosen = make_placer(placer, placer_options)
    start = time.perf_counter()
    placement = chosen.place(task)
    place_ms = (time.perf_counter() - start) * 1e3
    constraints_for(placer_options.constraints, task).check(placement, task)
    with (progress or _no_progress)(f"measuring on {backend}") as on_progress:
        cost_backend = make_backend(backend, backend_options, on_progress)
        (cost,) = cost_backend.measure(task, [placement])
    conditions = cost_backend.conditions() if isinstance(cost_backend, ReportsConditions) else None
    how = None
    if isinstance(chosen, DreamShardPlacer) and chosen.last_report is not None:
        report = chosen.last_report
        how = (
            f"{placer}: search {chosen.settings.search}, {report.candidates} candidates, "
            f"chose {report.chosen} (predicted {report.predicted_cost_ms:.3f} ms"
            + (f", measured {report.measured_cost_ms:.3f} ms" if report.measured_cost_ms else "")
            + ")"
            + (
                f"; sharding {chosen.split.sharding}: {report.split_tables} tables split"
                if chosen.split.sharding != "table"
                else ""
            )
            + (
                f" (split search: {report.split_score_ms:.3f} ms with these splits, "
                + (
                    f"{report.base_score_ms:.3f} ms"
                    if report.base_score_ms is not None
                    else "no placement"
                )
                + " with only the splits needed to fit)"
                if report.split_score_ms is not None
                else ""
            )
        )
    return PlacedTask(
        task, chosen.name, placement, place_ms, cost_backend.name, cost, conditions, how
    )


@dataclass(frozen=True)
class Comparison:
    """Placers compared on tasks: the evaluation and, when the ``torchrec`` placer took
    part, TorchRec's own estimate of every placement.

    Attributes:
        evaluation: Measured costs of every placer on every task.
        torchrec_estimates: JSON-ready estimates
            (:func:`dreamshard.evaluation.torchrec_estimates.torchrec_estimates`), or None.
    """

    evaluation: Evaluation
    torchrec_estimates: dict[str, Any] | None = None

    def to_json(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The evaluation file's payload: the evaluation, the ``config`` it ran with and
        the TorchRec estimates (when there are any)."""
        payload = self.evaluation.to_json()
        payload["config"] = dict(config)
        if self.torchrec_estimates is not None:
            payload["torchrec_estimates"] = self.torchrec_estimates
        return payload


def compare_placers(
    tasks: Sequence[Task],
    placers: Sequence[str],
    placer_options: PlacerOptions,
    backend: str,
    backend_options: BackendOptions,
    progress: Progress | None = None,
) -> Comparison:
    """Every placer on every task, measured on ``backend``
    (:func:`dreamshard.evaluation.evaluate.evaluate`); with TorchRec's estimates of the
    placements when ``torchrec`` is one of the placers.

    Args:
        tasks: Tasks to place.
        placers: Placer names (distinct).
        placer_options: How to build the placers.
        backend: Backend name.
        backend_options: How to build the backend; its batch size is also the one
            TorchRec's estimates assume.
        progress: Shows progress over the tasks.
    """
    placer_objs: list[Placer] = [make_placer(name, placer_options) for name in placers]
    description = f"evaluating {len(placer_objs)} placers on {backend}"
    with (progress or _no_progress)(description) as on_task_done:
        cost_backend: CostBackend = make_backend(backend, backend_options)
        result = evaluate(
            tasks,
            placer_objs,
            cost_backend,
            on_task_done=on_task_done,
            constraints=placer_options.constraints,
        )
    estimates = None
    if "torchrec" in placers:
        from dreamshard.evaluation.torchrec_estimates import torchrec_estimates

        estimates = torchrec_estimates(result, tasks, batch_size=backend_options.batch_size)
    return Comparison(result, estimates)
