"""The reproducible benchmark: the DreamShard paper's evaluation, end to end (METHOD.md s. 7).

One config file (:mod:`dreamshard.bench.config`) names the backend, the task suites
(tables x devices x memory), the training families (a DreamShard model is trained once
per family on training tasks from one half of a table pool) and the placers. Every
placer places every test task of every suite (tables from the other half), all
placements of a task are measured together on the backend, and every family's model is
also evaluated on every suite (the generalisation matrix). Compared costs are always
backend measurements, never the cost network's estimates.

Outputs (into one folder): ``results.json`` (every number, :mod:`dreamshard.bench.results`),
``report.md``, PNG plots (:mod:`dreamshard.bench.plots`), ``config.json`` (the resolved
config) and the trained models (``models/<family>/``; an interrupted run resumes their
training).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamshard import __version__
from dreamshard.backends import make_backend
from dreamshard.bench.config import BenchmarkConfig, FamilySpec, SuiteSpec
from dreamshard.bench.results import (
    BenchmarkResults,
    DreamShardStanding,
    Environment,
    FamilySummary,
    Generalisation,
    PlacerStats,
    SuiteSummary,
    TaskWins,
)
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import SuiteConfig, generate_suite, make_devices
from dreamshard.errors import InputError
from dreamshard.evaluation.evaluate import Evaluation, evaluate
from dreamshard.fileio import atomic_write_text, read_json, write_json
from dreamshard.method.checkpoint import DreamShardModel
from dreamshard.placers.dreamshard import DreamShardPlacer
from dreamshard.placers.registry import (
    LEARNED_PLACER,
    PlacerOptions,
    is_baseline,
    is_reference,
    make_placer,
    spends_measurements,
)
from dreamshard.placers.rnn import RnnPlacer
from dreamshard.runtime import cpu_model
from dreamshard.types import CostBackend, Placer, TableSpec, Task
from dreamshard.units import parse_memory
from dreamshard.workflows.experiment import train_model

#: Receives one human-readable line per step.
Log = Callable[[str], None]

#: Expert rules used to decide whether memory binds on a task.
_BINDING_CHECK_PLACERS = ("dim", "lookup", "size-lookup")


def environment() -> Environment:
    """Hardware and versions this run used."""

    def version_of(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return Environment(
        dreamshard=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        fbgemm_gpu_cpu=version_of("fbgemm-gpu-cpu"),
        torchrec=version_of("torchrec"),
        numpy=np.__version__,
        platform=platform.platform(),
        cpu_model=cpu_model(default=platform.processor() or platform.machine()),
        cpu_count=os.cpu_count(),
    )


def _memory_binds(task: Task) -> bool:
    """Whether an expert rule ignoring memory would overflow a device of ``task``."""
    free = Task(task.name, task.tables, make_devices(task.num_devices, 2**62))
    for name in _BINDING_CHECK_PLACERS:
        placement = make_placer(name).place(free)
        used = [0] * task.num_devices
        for table, d in zip(task.tables, placement.device_of, strict=True):
            used[d] += task.table_memory_bytes(table)
        if any(u > dev.memory_bytes for u, dev in zip(used, task.devices, strict=True)):
            return True
    return False


def cost_net_mape(model: DreamShardModel, evaluation: Evaluation, tasks: Sequence[Task]) -> float:
    """MAPE (%) of the cost network's predicted overall cost against the measured costs of
    every placement in ``evaluation`` (tasks the model never trained on); NaN if none
    (:meth:`DreamShardModel.cost_mape`)."""
    by_name = {t.name: t for t in tasks}
    measured = [
        (by_name[r.task], r.placement, r.cost.cost_ms)
        for task_name in evaluation.tasks
        for r in evaluation.results
        if r.task == task_name and r.cost is not None and r.placement is not None
    ]
    return model.cost_mape(
        [task for task, _, _ in measured],
        [placement for _, placement, _ in measured],
        [cost for _, _, cost in measured],
    )


def _suite_tasks(
    pool: Sequence[TableSpec], cfg: BenchmarkConfig, split: str, **shape: Any
) -> list[Task]:
    # One seed for every suite and family: generate_suite's first draw is the pool's
    # split, so every training task draws from one half and every test task from the other.
    suite = generate_suite(
        pool,
        SuiteConfig(
            num_train=cfg.num_train_tasks if split == "train" else 0,
            num_test=cfg.num_test_tasks if split == "test" else 0,
            seed=cfg.seed,
            **shape,
        ),
    )
    return list(suite.split(split))


def table_pool(config: BenchmarkConfig) -> list[TableSpec]:
    """The benchmark's synthetic DLRM-like pool (both halves)."""
    return generate_table_pool(
        num_tables=config.pool_tables,
        seed=config.seed,
        dim=config.dim,
        max_rows=config.max_rows,
        batch_size=config.backend_options.batch_size,
    )


def suite_test_tasks(
    pool: Sequence[TableSpec], config: BenchmarkConfig, spec: SuiteSpec
) -> list[Task]:
    """The test tasks of one suite (tables from the pool's test half)."""
    return _suite_tasks(
        pool,
        config,
        "test",
        min_tables=spec.tables,
        max_tables=spec.tables,
        num_devices=spec.devices,
        memory_bytes=parse_memory(spec.memory, f"suite {spec.name} memory"),
    )


def _ds_name(family: str, own: str) -> str:
    return LEARNED_PLACER if family == own else f"{LEARNED_PLACER}@{family}"


def summarize_suite(
    evaluation: Evaluation,
    main_placers: Sequence[str],
    spec: SuiteSpec,
    memory_binds_tasks: int,
    rnn_measurements: int,
    wall_s: float,
    cost_net_mape: float | None = None,
) -> SuiteSummary:
    """Per-placer statistics on the tasks every placer placed, the strongest baselines,
    DreamShard's speedup and every baseline it does not beat.

    Baselines are the main placers the registry calls baselines
    (:func:`~dreamshard.placers.registry.is_baseline`); the measurement-free ones are
    those that do not search on backend measurements per task.
    """
    common = evaluation.common_tasks()
    costs = {
        p: np.array([evaluation.result(p, t).cost.cost_ms for t in common])  # type: ignore[union-attr]
        for p in evaluation.placers
    }
    baselines = [p for p in main_placers if is_baseline(p)]
    means = {p: float(costs[p].mean()) if len(common) else float("nan") for p in costs}
    strongest = min(baselines, key=lambda p: means[p]) if baselines and common else None
    free = [p for p in baselines if not spends_measurements(p)]
    strongest_free = min(free, key=lambda p: means[p]) if free and common else None
    paired = {c.placer: c for c in evaluation.paired(strongest)} if strongest else {}
    reference = next((p for p in evaluation.placers if is_reference(p)), None)
    per_placer: dict[str, PlacerStats] = {}
    for p in evaluation.placers:
        mine = [r for r in evaluation.results if r.placer == p]
        ratio = costs[p] / costs[strongest] if strongest else np.array([])
        spreads = [r.cost.rel_spread for r in mine if r.cost and r.cost.rel_spread is not None]
        per_placer[p] = PlacerStats(
            mean_cost_ms=means[p],
            std_cost_ms=float(costs[p].std()) if len(common) else float("nan"),
            mean_ratio_to_strongest=float(ratio.mean()) if len(ratio) else None,
            std_ratio_to_strongest=float(ratio.std()) if len(ratio) else None,
            mean_measurement_rel_spread=float(np.mean(spreads)) if spreads else None,
            mean_place_time_ms=float(np.mean([r.place_time_ms for r in mine])),
            failures=sum(r.cost is None for r in mine),
            paired_to_strongest=paired.get(p),
            pct_above_reference=(
                float(np.exp(np.log(costs[p] / costs[reference]).mean()) - 1) * 100
                if reference is not None and len(common)
                else None
            ),
        )
    standing = None
    if LEARNED_PLACER in costs and strongest is not None and len(common):
        ds = costs[LEARNED_PLACER]
        standing = DreamShardStanding(
            speedup=means[strongest] / means[LEARNED_PLACER],
            speedup_vs_measurement_free=(
                means[strongest_free] / means[LEARNED_PLACER] if strongest_free else None
            ),
            not_better_than=tuple(p for p in baselines if means[p] <= means[LEARNED_PLACER]),
            task_wins={
                p: TaskWins(wins=int((ds < costs[p]).sum()), ties=int((ds == costs[p]).sum()))
                for p in baselines
            },
        )
    return SuiteSummary(
        spec=spec,
        tasks=len(evaluation.tasks),
        common_tasks=len(common),
        strongest_baseline=strongest,
        strongest_measurement_free_baseline=strongest_free,
        placers=per_placer,
        main_placers=tuple(main_placers),
        memory_binds_tasks=memory_binds_tasks,
        rnn_measurements=rnn_measurements,
        wall_s=wall_s,
        dreamshard=standing,
        cost_net_mape=cost_net_mape,
        reference=reference,
    )


def _generalisation(
    config: BenchmarkConfig, families: Sequence[str], suites: dict[str, SuiteSummary]
) -> Generalisation:
    """Each family's model on each suite, vs that suite's strongest baseline."""
    if not families:
        return Generalisation()
    matrix = []
    for fam_name in families:
        row: list[float | None] = []
        for spec in config.suites:
            summary = suites[spec.name]
            strongest = summary.strongest_baseline
            stats = summary.placers
            name = _ds_name(fam_name, spec.family)
            row.append(
                stats[strongest].mean_cost_ms / stats[name].mean_cost_ms if strongest else None
            )
        matrix.append(tuple(row))
    return Generalisation(
        families=tuple(families),
        suites=tuple(s.name for s in config.suites),
        speedup=tuple(matrix),
    )


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | Path,
    command: str,
    log: Log = print,
    progress: Callable[[str], Callable[[int, int], None]] | None = None,
) -> BenchmarkResults:
    """Run the whole benchmark and write its files into ``out_dir``; returns the results.

    Args:
        config: Resolved config (already shrunk for ``--quick``).
        out_dir: Folder for results.json, report.md, plots and models.
        command: The exact command line, recorded in the report.
        log: Receives one line per step.
        progress: Given a description, returns a (done, total) callback.
    """
    from dreamshard.bench.plots import write_plots
    from dreamshard.bench.report import render_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.to_json())
    start = time.perf_counter()
    backend = make_backend(config.backend, config.backend_options)
    placers = list(config.placers)

    pool = table_pool(config)
    log(
        f"pool: {len(pool)} DLRM-like tables (dim {config.dim}); backend {config.backend}; "
        f"{config.num_train_tasks} training tasks per family, {config.num_test_tasks} test "
        f"tasks per suite"
    )

    # 1. Train one DreamShard model per family.
    models: dict[str, DreamShardModel] = {}
    families: dict[str, FamilySummary] = {}
    if LEARNED_PLACER in placers:
        for fam in config.families:
            tasks = _suite_tasks(
                pool,
                config,
                "train",
                min_tables=fam.min_tables,
                max_tables=fam.max_tables,
                num_devices=fam.devices,
                memory_bytes=parse_memory(fam.memory, f"family {fam.name} memory"),
            )
            models[fam.name], families[fam.name] = _train_family(
                fam, tasks, backend, out / "models" / fam.name, _fingerprint(config, fam), log
            )

    # 2. Every placer on every suite, measured together per task.
    suites: dict[str, SuiteSummary] = {}
    evaluations: dict[str, Evaluation] = {}
    rnn_config = config.rnn
    for spec in config.suites:
        tasks = suite_test_tasks(pool, config, spec)
        objs: list[Placer] = []
        rnn: RnnPlacer | None = None
        for name in placers:
            if name == LEARNED_PLACER:
                continue
            if name == "rnn":
                # Built here (not by the registry) to count its measurements.
                rnn = RnnPlacer(backend, rnn_config, seed=config.seed)
                objs.append(rnn)
            else:
                objs.append(
                    make_placer(
                        name,
                        PlacerOptions(
                            seed=config.seed,
                            backend=config.backend,
                            backend_options=config.backend_options,
                            budget=rnn_config.budget,
                            oracle_evaluations=config.oracle_evaluations,
                        ),
                    )
                )
        main = [p.name for p in objs]
        if LEARNED_PLACER in placers:
            for fam_name, model in models.items():
                ds = DreamShardPlacer(model, samples=config.dreamshard_samples, seed=config.seed)
                ds.name = _ds_name(fam_name, spec.family)
                objs.append(ds)
            main.insert(placers.index(LEARNED_PLACER), LEARNED_PLACER)
        log(
            f"suite {spec.name}: {len(tasks)} test tasks of {spec.tables} tables on "
            f"{spec.devices} devices ({spec.memory} each); placers "
            + ", ".join(p.name for p in objs)
        )
        callback = progress(f"  {spec.name}") if progress else None
        t0 = time.perf_counter()
        evaluation = evaluate(tasks, objs, backend, on_task_done=callback)
        rnn_measurements = rnn.total_measurements if rnn is not None else 0
        evaluations[spec.name] = evaluation
        binding = sum(_memory_binds(t) for t in tasks)
        wall_s = time.perf_counter() - t0
        summary = summarize_suite(
            evaluation,
            main,
            spec=spec,
            memory_binds_tasks=binding,
            rnn_measurements=rnn_measurements,
            wall_s=wall_s,
            cost_net_mape=(
                cost_net_mape(models[spec.family], evaluation, tasks)
                if spec.family in models
                else None
            ),
        )
        suites[spec.name] = summary
        _log_suite(spec.name, summary, main, log)

    # 3. Generalisation: each family's model on each suite, vs that suite's strongest baseline.
    results = BenchmarkResults(
        command=command,
        config=config,
        environment=environment(),
        families=families,
        suites=suites,
        generalisation=_generalisation(config, list(models), suites),
        evaluations=evaluations,
        wall_s=time.perf_counter() - start,
    )
    plots = write_plots(results, out)
    results = dataclasses.replace(
        results, plots=tuple(p.relative_to(out).as_posix() for p in plots)
    )
    write_json(out / "results.json", results.to_json())
    atomic_write_text(out / "report.md", render_report(results))
    log(f"wrote {out / 'results.json'}, {out / 'report.md'} and {len(plots)} plots")
    return results


def _fingerprint(config: BenchmarkConfig, fam: FamilySpec) -> dict[str, Any]:
    """Everything a family's training depends on (a resumed run must match it)."""
    # Through JSON, so it compares equal to the copy read back from family.json.
    stamp: dict[str, Any] = json.loads(
        json.dumps(
            {
                "family": asdict(fam),
                "seed": config.seed,
                "num_train_tasks": config.num_train_tasks,
                "pool": [config.pool_tables, config.dim, config.max_rows],
                "backend": config.backend,
                "backend_options": asdict(config.backend_options),
            }
        )
    )
    return stamp


def _train_family(
    fam: FamilySpec,
    tasks: list[Task],
    backend: CostBackend,
    model_dir: Path,
    fingerprint: dict[str, Any],
    log: Log,
) -> tuple[DreamShardModel, FamilySummary]:
    stamp = model_dir / "family.json"
    if model_dir.exists() and any(model_dir.iterdir()):
        if not stamp.is_file() or read_json(stamp) != fingerprint:
            raise InputError(
                f"{model_dir}: holds a model trained with another config; remove the folder "
                "or use another --out"
            )
    else:
        write_json(stamp, fingerprint)
    log(
        f"training family {fam.name}: {len(tasks)} tasks of {_range(fam)} tables on "
        f"{fam.devices} devices ({fam.memory} each)"
    )
    trained = train_model(fam.train, tasks, backend, model_dir, resume=True, log=log, indent="  ")
    mapes = [r.new_cost_mape for r in trained.history if r.new_cost_mape is not None]
    return trained.model, FamilySummary(
        spec=fam,
        train_tasks=len(tasks),
        train_wall_s=trained.train_wall_s,
        measurements=int(trained.model.info.get("measurements", 0)),
        final_cost_mape_on_new=mapes[-1] if mapes else None,
        history=trained.history,
    )


def _range(fam: FamilySpec) -> str:
    if fam.min_tables == fam.max_tables:
        return str(fam.min_tables)
    return f"{fam.min_tables}-{fam.max_tables}"


def _log_suite(name: str, summary: SuiteSummary, main: Sequence[str], log: Log) -> None:
    parts = [f"{p} {summary.placers[p].mean_cost_ms:.2f}" for p in main if p in summary.placers]
    line = (
        f"  {name}: mean ms " + ", ".join(parts) + f"; strongest baseline "
        f"{summary.strongest_baseline}"
    )
    if summary.dreamshard is not None:
        line += f"; dreamshard speedup {summary.dreamshard.speedup:.3f}x"
    log(line)


def command_line() -> str:
    """The command this process was started with, for the report."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m dreamshard"
    elif argv:
        argv[0] = Path(argv[0]).name
    return " ".join(argv)
