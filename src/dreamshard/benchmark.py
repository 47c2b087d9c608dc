"""The reproducible benchmark: the DreamShard paper's evaluation, end to end (METHOD.md s. 7).

One config file names the backend, the task suites (tables x devices x memory), the
training families (a DreamShard model is trained once per family on training tasks from
one half of a table pool) and the placers. Every placer places every test task of every
suite (tables from the other half), all placements of a task are measured together on
the backend, and every family's model is also evaluated on every suite (the
generalisation matrix). Compared costs are always backend measurements, never the cost
network's estimates.

Outputs (into one folder): ``results.json`` (every number), ``report.md``, PNG plots
(:mod:`dreamshard.plots`), ``config.json`` (the resolved config) and the trained models
(``models/<family>/``; an interrupted run resumes their training).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamshard import __version__
from dreamshard.backends import BACKEND_NAMES, BackendOptions, make_backend
from dreamshard.costnet import PlacementBatch
from dreamshard.errors import InputError
from dreamshard.evaluate import Evaluation, evaluate
from dreamshard.fileio import atomic_write_text, read_json, write_json
from dreamshard.model import DreamShardModel
from dreamshard.placers import PLACER_FACTORIES, PlacerOptions, make_placer
from dreamshard.rnn_placer import RnnConfig, RnnPlacer
from dreamshard.runtime import one_thread
from dreamshard.search import DreamShardPlacer
from dreamshard.synthetic import generate_table_pool
from dreamshard.tasks import SuiteConfig, generate_suite, make_devices
from dreamshard.train import IterationReport, TrainConfig, Trainer
from dreamshard.types import CostBackend, Placer, TableSpec, Task
from dreamshard.units import parse_memory

RESULTS_FORMAT = "dreamshard-benchmark"
RESULTS_VERSION = 1


#: Placers that are DreamShard itself (everything else is a baseline).
LEARNED = "dreamshard"

#: Expert rules used to decide whether memory binds on a task.
_BINDING_CHECK_PLACERS = ("dim", "lookup", "size-lookup")

#: The packaged default config (``--config`` may name any other file).
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "benchmark-default.toml"


# -- config ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilySpec:
    """A training family: one DreamShard model trained on its training tasks.

    Attributes:
        name: Identifier, referred to by suites.
        min_tables: Fewest tables per training task.
        max_tables: Most tables per training task.
        devices: Devices per training task.
        memory: Memory per device, e.g. ``"1GB"``.
        train: Training settings.
    """

    name: str
    min_tables: int
    max_tables: int
    devices: int
    memory: str
    train: TrainConfig


@dataclass(frozen=True)
class SuiteSpec:
    """A test suite: tasks of a fixed shape, placed by every placer.

    Attributes:
        name: Identifier (shown in tables and plots).
        tables: Tables per task.
        devices: Devices per task.
        memory: Memory per device, e.g. ``"1GB"``.
        family: The training family whose model is this suite's ``dreamshard``.
    """

    name: str
    tables: int
    devices: int
    memory: str
    family: str


@dataclass(frozen=True)
class QuickSpec:
    """What ``--quick`` shrinks (everything else stays as configured)."""

    num_train_tasks: int = 10
    num_test_tasks: int = 4
    rnn_budget: int = 100
    iterations: int = 4
    measurements_per_iteration: int = 30
    cost_steps: int = 100
    policy_batches: int = 20


@dataclass(frozen=True)
class BenchmarkConfig:
    """Resolved benchmark config (saved as ``config.json`` next to the results).

    Attributes:
        backend: Cost backend name (``sim`` or ``fbgemm``).
        backend_options: Its options (the seed is the benchmark's).
        seed: Seed of the pool, the suites, training, the random and rnn placers.
        pool_tables: Tables in the synthetic DLRM-like pool.
        dim: Embedding dim of every table.
        max_rows: Cap on rows per table (None: uncapped).
        num_train_tasks: Training tasks per family.
        num_test_tasks: Test tasks per suite.
        placers: Placer names, in display order.
        rnn: Settings of the ``rnn`` placer.
        dreamshard_samples: Extra sampled placements DreamShard rates with its cost network.
        breakdown_suite: Suite whose first test task the stage-cost plot shows.
        families: Training families.
        suites: Test suites.
        quick: Whether ``--quick`` shrank this config.
    """

    backend: str
    backend_options: BackendOptions
    seed: int
    pool_tables: int
    dim: int
    max_rows: int | None
    num_train_tasks: int
    num_test_tasks: int
    placers: tuple[str, ...]
    rnn: RnnConfig
    dreamshard_samples: int
    breakdown_suite: str
    families: tuple[FamilySpec, ...]
    suites: tuple[SuiteSpec, ...]
    quick_spec: QuickSpec = field(default_factory=QuickSpec)
    quick: bool = False

    def family(self, name: str) -> FamilySpec:
        return next(f for f in self.families if f.name == name)

    def shrunk(self) -> BenchmarkConfig:
        """The ``--quick`` variant: fewer tasks, smaller training and rnn budgets."""
        q = self.quick_spec
        train_changes = {
            "iterations": q.iterations,
            "measurements_per_iteration": q.measurements_per_iteration,
            "cost_steps": q.cost_steps,
            "policy_batches": q.policy_batches,
        }
        families = tuple(
            dataclasses.replace(f, train=dataclasses.replace(f.train, **train_changes))
            for f in self.families
        )
        return dataclasses.replace(
            self,
            num_train_tasks=q.num_train_tasks,
            num_test_tasks=q.num_test_tasks,
            rnn=dataclasses.replace(self.rnn, budget=q.rnn_budget),
            families=families,
            quick=True,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Reader:
    """Typed access to one table of a config file; errors name the field."""

    def __init__(self, data: Any, where: str, known: Sequence[str]) -> None:
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a table of fields")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(
                f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})"
            )
        self.data = data
        self.where = where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get_int(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.data.get(key, default)
        if value is None:
            raise InputError(f"{self._name(key)}: missing (an integer >= {minimum})")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InputError(f"{self._name(key)}: must be an integer >= {minimum}, got {value!r}")
        return value

    def get_opt_int(self, key: str, minimum: int = 1) -> int | None:
        if self.data.get(key) is None:
            return None
        return self.get_int(key, minimum=minimum)

    def get_float(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{self._name(key)}: must be a number, got {value!r}")
        return float(value)

    def get_str(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise InputError(f"{self._name(key)}: missing (a string)")
        if not isinstance(value, str) or not value:
            raise InputError(f"{self._name(key)}: must be a non-empty string, got {value!r}")
        return value

    def get_memory(self, key: str) -> str:
        value = self.data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            text = str(value)
        else:
            text = self.get_str(key)
        parse_memory(text, self._name(key))
        return text

    def table(self, key: str, known: Sequence[str]) -> _Reader:
        return _Reader(self.data.get(key, {}), self._name(key), known)

    def tables(self, key: str, known: Sequence[str]) -> list[_Reader]:
        value = self.data.get(key)
        if not isinstance(value, list) or not value:
            raise InputError(f"{self._name(key)}: must be a non-empty list of tables")
        return [_Reader(v, f"{self._name(key)}[{i}]", known) for i, v in enumerate(value)]


_TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed")
_QUICK_FIELDS = tuple(f.name for f in dataclasses.fields(QuickSpec))
_TOP_FIELDS = (
    "backend",
    "seed",
    "pool",
    "num_train_tasks",
    "num_test_tasks",
    "placers",
    "rnn",
    "dreamshard_samples",
    "breakdown_suite",
    "families",
    "suites",
    "quick",
)


def _train_config(reader: _Reader, seed: int) -> TrainConfig:
    defaults = TrainConfig()
    values: dict[str, Any] = {}
    for name in _TRAIN_FIELDS:
        default = getattr(defaults, name)
        if isinstance(default, float):
            values[name] = reader.get_float(name, default)
        else:
            values[name] = reader.get_int(name, default)
    try:
        return TrainConfig(seed=seed, **values)
    except InputError as err:
        raise InputError(f"{reader.where}: {err}") from None


def parse_config(data: Any, where: str) -> BenchmarkConfig:
    """Validate a parsed config file; errors are one line naming the field.

    Raises:
        InputError: naming ``where`` and the bad field.
    """
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a table of fields at the top level")
    try:
        return _parse(_Reader(data, "", _TOP_FIELDS))
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


def _parse(top: _Reader) -> BenchmarkConfig:
    seed = top.get_int("seed", 0, minimum=0)
    backend = top.table(
        "backend",
        ("name", "batch_size", "profile", "row_cap", "windows", "calls_per_window", "device"),
    )
    backend_name = backend.get_str("name", "sim")
    if backend_name not in BACKEND_NAMES:
        raise InputError(
            f"backend.name: unknown backend {backend_name!r} (known: {', '.join(BACKEND_NAMES)})"
        )
    defaults = BackendOptions()
    options = BackendOptions(
        batch_size=backend.get_int("batch_size", defaults.batch_size),
        seed=seed,
        profile=backend.get_str("profile", defaults.profile),
        row_cap=backend.get_opt_int("row_cap", minimum=100),
        windows=backend.get_int("windows", defaults.windows),
        calls_per_window=backend.get_int("calls_per_window", defaults.calls_per_window),
        device=backend.get_str("device", defaults.device),
    )
    pool = top.table("pool", ("num_tables", "dim", "max_rows"))
    dim = pool.get_int("dim", 16)
    if dim % 4:
        raise InputError(f"pool.dim: must be a multiple of 4 for FBGEMM, got {dim}")

    placers = top.data.get("placers")
    if (
        not isinstance(placers, list)
        or not placers
        or not all(isinstance(p, str) and p for p in placers)
    ):
        raise InputError(f"placers: must be a non-empty list of placer names, got {placers!r}")
    if len(set(placers)) != len(placers):
        raise InputError("placers: a placer is named twice")
    for name in placers:
        if name not in PLACER_FACTORIES:
            raise InputError(
                f"placers: unknown placer {name!r} (known: {', '.join(PLACER_FACTORIES)})"
            )

    rnn_reader = top.table(
        "rnn",
        (
            "budget",
            "samples_per_update",
            "hidden",
            "learning_rate",
            "baseline_decay",
            "entropy_weight",
        ),
    )
    rnn_defaults = RnnConfig()
    try:
        rnn = RnnConfig(
            budget=rnn_reader.get_int("budget", rnn_defaults.budget),
            samples_per_update=rnn_reader.get_int(
                "samples_per_update", rnn_defaults.samples_per_update, minimum=2
            ),
            hidden=rnn_reader.get_int("hidden", rnn_defaults.hidden),
            learning_rate=rnn_reader.get_float("learning_rate", rnn_defaults.learning_rate),
            baseline_decay=rnn_reader.get_float("baseline_decay", rnn_defaults.baseline_decay),
            entropy_weight=rnn_reader.get_float("entropy_weight", rnn_defaults.entropy_weight),
        )
    except InputError as err:
        raise InputError(f"rnn: {err}") from None

    families = []
    for reader in top.tables("families", ("name", "tables", "devices", "memory", "train")):
        tables = reader.data.get("tables")
        if isinstance(tables, list) and len(tables) == 2:
            low = _Reader({"tables": tables[0]}, reader.where, ("tables",)).get_int("tables")
            high = _Reader({"tables": tables[1]}, reader.where, ("tables",)).get_int("tables")
            if low > high:
                raise InputError(f"{reader.where}.tables: range [min, max] has min > max")
        else:
            low = high = reader.get_int("tables")
        families.append(
            FamilySpec(
                name=reader.get_str("name"),
                min_tables=low,
                max_tables=high,
                devices=reader.get_int("devices"),
                memory=reader.get_memory("memory"),
                train=_train_config(reader.table("train", _TRAIN_FIELDS), seed),
            )
        )
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        raise InputError("families: a family name is used twice")

    suites = []
    for reader in top.tables("suites", ("name", "tables", "devices", "memory", "family")):
        spec = SuiteSpec(
            name=reader.get_str("name"),
            tables=reader.get_int("tables"),
            devices=reader.get_int("devices"),
            memory=reader.get_memory("memory"),
            family=reader.get_str("family"),
        )
        if spec.family not in names:
            raise InputError(
                f"{reader.where}.family: unknown family {spec.family!r} (known: {', '.join(names)})"
            )
        suites.append(spec)
    suite_names = [s.name for s in suites]
    if len(set(suite_names)) != len(suite_names):
        raise InputError("suites: a suite name is used twice")
    breakdown = top.get_str("breakdown_suite", suite_names[-1])
    if breakdown not in suite_names:
        raise InputError(f"breakdown_suite: unknown suite {breakdown!r}")

    quick = top.table("quick", _QUICK_FIELDS)
    quick_spec = QuickSpec(
        **{
            name: quick.get_int(
                name, getattr(QuickSpec(), name), minimum=2 if "tasks" in name else 1
            )
            for name in _QUICK_FIELDS
        }
    )
    return BenchmarkConfig(
        backend=backend_name,
        backend_options=options,
        seed=seed,
        pool_tables=pool.get_int("num_tables", 856),
        dim=dim,
        max_rows=pool.get_opt_int("max_rows", minimum=100),
        num_train_tasks=top.get_int("num_train_tasks", 50),
        num_test_tasks=top.get_int("num_test_tasks", 20),
        placers=tuple(placers),
        rnn=rnn,
        dreamshard_samples=top.get_int("dreamshard_samples", 0, minimum=0),
        breakdown_suite=breakdown,
        families=tuple(families),
        suites=tuple(suites),
        quick_spec=quick_spec,
    )


def load_config(path: str | Path) -> BenchmarkConfig:
    """Read a benchmark config from a TOML or JSON file (by extension) and validate it.

    Raises:
        InputError: A missing or malformed file, or a bad field (named).
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    text = source.read_text(encoding="utf-8")
    if source.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{source}: line {err.lineno}: invalid JSON ({err.msg})") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise InputError(f"{source}: invalid TOML ({err})") from None
    return parse_config(data, str(source))


# -- running -----------------------------------------------------------------------------


Log = Callable[[str], None]


def environment() -> dict[str, Any]:
    """Hardware and versions this run used."""

    def version_of(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "dreamshard": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fbgemm_gpu_cpu": version_of("fbgemm-gpu-cpu"),
        "torchrec": version_of("torchrec"),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
    }


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
    every placement in ``evaluation`` (tasks the model never trained on)."""
    by_name = {t.name: t for t in tasks}
    errors: list[float] = []
    for task_name in evaluation.tasks:
        results = [r for r in evaluation.results if r.task == task_name and r.cost and r.placement]
        if not results:
            continue
        task = by_name[task_name]
        batch = PlacementBatch.build(
            [model.normalizer.transform(task.tables)] * len(results),
            [r.placement for r in results if r.placement is not None],
            [task.num_devices] * len(results),
        )
        with torch.no_grad(), one_thread():
            _, overall = model.costnet(batch)
        predicted = overall.numpy() * model.costnet.cost_scale_ms
        measured = np.array([r.cost.cost_ms for r in results if r.cost is not None])
        errors.extend((np.abs(predicted - measured) / measured * 100).tolist())
    return float(np.mean(errors)) if errors else float("nan")


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


def _ds_name(family: str, own: str) -> str:
    return LEARNED if family == own else f"{LEARNED}@{family}"


def summarize_suite(evaluation: Evaluation, main_placers: Sequence[str]) -> dict[str, Any]:
    """Per-placer statistics on the tasks every placer placed, the strongest baselines,
    DreamShard's speedup and every baseline it does not beat."""
    common = evaluation.common_tasks()
    costs = {
        p: np.array([evaluation.result(p, t).cost.cost_ms for t in common])  # type: ignore[union-attr]
        for p in evaluation.placers
    }
    baselines = [p for p in main_placers if not p.startswith(LEARNED)]
    means = {p: float(costs[p].mean()) if len(common) else float("nan") for p in costs}
    strongest = min(baselines, key=lambda p: means[p]) if baselines and common else None
    free = [p for p in baselines if p != "rnn"]
    strongest_free = min(free, key=lambda p: means[p]) if free and common else None
    per_placer: dict[str, Any] = {}
    for p in evaluation.placers:
        mine = [r for r in evaluation.results if r.placer == p]
        ratio = costs[p] / costs[strongest] if strongest else np.array([])
        spreads = [r.cost.rel_spread for r in mine if r.cost and r.cost.rel_spread is not None]
        per_placer[p] = {
            "mean_cost_ms": means[p],
            "std_cost_ms": float(costs[p].std()) if len(common) else float("nan"),
            "mean_ratio_to_strongest": float(ratio.mean()) if len(ratio) else None,
            "std_ratio_to_strongest": float(ratio.std()) if len(ratio) else None,
            "mean_measurement_rel_spread": float(np.mean(spreads)) if spreads else None,
            "mean_place_time_ms": float(np.mean([r.place_time_ms for r in mine])),
            "failures": sum(r.cost is None for r in mine),
        }
    out: dict[str, Any] = {
        "common_tasks": len(common),
        "strongest_baseline": strongest,
        "strongest_measurement_free_baseline": strongest_free,
        "placers": per_placer,
    }
    if LEARNED in costs and strongest is not None and len(common):
        ds = costs[LEARNED]
        out["dreamshard_speedup"] = means[strongest] / means[LEARNED]
        out["dreamshard_speedup_vs_measurement_free"] = (
            means[strongest_free] / means[LEARNED] if strongest_free else None
        )
        out["dreamshard_not_better_than"] = [p for p in baselines if means[p] <= means[LEARNED]]
        out["dreamshard_task_wins"] = {
            p: {"wins": int((ds < costs[p]).sum()), "ties": int((ds == costs[p]).sum())}
            for p in baselines
        }
    return out


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | Path,
    command: str,
    log: Log = print,
    progress: Callable[[str], Callable[[int, int], None]] | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark and write its files into ``out_dir``; returns the results.

    Args:
        config: Resolved config (already shrunk for ``--quick``).
        out_dir: Folder for results.json, report.md, plots and models.
        command: The exact command line, recorded in the report.
        log: Receives one line per step.
        progress: Given a description, returns a (done, total) callback.
    """
    from dreamshard.plots import write_plots
    from dreamshard.report import render_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.to_json())
    start = time.perf_counter()
    backend = make_backend(config.backend, config.backend_options)
    placers = list(config.placers)

    pool = generate_table_pool(
        num_tables=config.pool_tables,
        seed=config.seed,
        dim=config.dim,
        max_rows=config.max_rows,
        batch_size=config.backend_options.batch_size,
    )
    log(
        f"pool: {len(pool)} DLRM-like tables (dim {config.dim}); backend {config.backend}; "
        f"{config.num_train_tasks} training tasks per family, {config.num_test_tasks} test "
        f"tasks per suite"
    )

    # 1. Train one DreamShard model per family.
    models: dict[str, DreamShardModel] = {}
    families: dict[str, Any] = {}
    if LEARNED in placers:
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
    suites: dict[str, Any] = {}
    evaluations: dict[str, Evaluation] = {}
    rnn_config = config.rnn
    for spec in config.suites:
        tasks = _suite_tasks(
            pool,
            config,
            "test",
            min_tables=spec.tables,
            max_tables=spec.tables,
            num_devices=spec.devices,
            memory_bytes=parse_memory(spec.memory, f"suite {spec.name} memory"),
        )
        objs: list[Placer] = []
        rnn: RnnPlacer | None = None
        for name in placers:
            if name == LEARNED:
                continue
            if name == "rnn":
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
                        ),
                    )
                )
        main = [p.name for p in objs]
        if LEARNED in placers:
            for fam_name, model in models.items():
                ds = DreamShardPlacer(model, samples=config.dreamshard_samples, seed=config.seed)
                ds.name = _ds_name(fam_name, spec.family)
                objs.append(ds)
            main.insert(placers.index(LEARNED), LEARNED)
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
        summary = summarize_suite(evaluation, main)
        binding = sum(_memory_binds(t) for t in tasks)
        summary.update(
            spec=asdict(spec),
            tasks=len(tasks),
            memory_binds_tasks=binding,
            rnn_measurements=rnn_measurements,
            wall_s=time.perf_counter() - t0,
            main_placers=main,
        )
        if spec.family in models:
            summary["cost_net_mape"] = cost_net_mape(models[spec.family], evaluation, tasks)
        suites[spec.name] = summary
        _log_suite(spec.name, summary, main, log)

    # 3. Generalisation: each family's model on each suite, vs that suite's strongest baseline.
    generalisation: dict[str, Any] = {"families": list(models), "suites": [], "speedup": []}
    if models:
        generalisation["suites"] = [s.name for s in config.suites]
        matrix = []
        for fam_name in models:
            row = []
            for spec in config.suites:
                summary = suites[spec.name]
                name = _ds_name(fam_name, spec.family)
                strongest = summary["strongest_baseline"]
                stats = summary["placers"]
                row.append(
                    stats[strongest]["mean_cost_ms"] / stats[name]["mean_cost_ms"]
                    if strongest
                    else None
                )
            matrix.append(row)
        generalisation["speedup"] = matrix

    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "command": command,
        "quick": config.quick,
        "backend": config.backend,
        "config": config.to_json(),
        "environment": environment(),
        "families": families,
        "suites": suites,
        "generalisation": generalisation,
        "evaluations": {name: ev.to_json() for name, ev in evaluations.items()},
        "wall_s": time.perf_counter() - start,
    }
    plots = write_plots(results, out)
    results["plots"] = [p.relative_to(out).as_posix() for p in plots]
    write_json(out / "results.json", results)
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
) -> tuple[DreamShardModel, dict[str, Any]]:
    cfg = fam.train
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
        f"{fam.devices} devices ({fam.memory} each); {cfg.iterations} iterations x "
        f"{cfg.measurements_per_iteration} measurements"
    )

    def report(r: IterationReport) -> None:
        mape = f"{r.new_cost_mape:5.1f}%" if r.new_cost_mape is not None else "    -"
        log(
            f"  iter {r.iteration:3d}  measurements {r.measurements:5d}  measured mean "
            f"{r.measured_mean_cost_ms:8.3f} ms  cost-net error on new {mape}  ({r.wall_s:.1f} s)"
        )

    trainer = Trainer(cfg, tasks, backend, model_dir, on_iteration=report)
    if trainer.resume():
        log(f"  resumed at iteration {trainer.state.iteration}")
    model = trainer.run()
    history = [asdict(r) for r in trainer.state.history]
    mapes = [r["new_cost_mape"] for r in history if r["new_cost_mape"] is not None]
    return model, {
        "spec": asdict(fam),
        "train_tasks": len(tasks),
        "train_wall_s": float(sum(r["wall_s"] for r in history)),
        "measurements": int(model.info.get("measurements", 0)),
        "final_cost_mape_on_new": mapes[-1] if mapes else None,
        "history": history,
    }


def _range(fam: FamilySpec) -> str:
    if fam.min_tables == fam.max_tables:
        return str(fam.min_tables)
    return f"{fam.min_tables}-{fam.max_tables}"


def _log_suite(name: str, summary: dict[str, Any], main: Sequence[str], log: Log) -> None:
    strongest = summary["strongest_baseline"]
    parts = [
        f"{p} {summary['placers'][p]['mean_cost_ms']:.2f}" for p in main if p in summary["placers"]
    ]
    line = f"  {name}: mean ms " + ", ".join(parts) + f"; strongest baseline {strongest}"
    if "dreamshard_speedup" in summary:
        line += f"; dreamshard speedup {summary['dreamshard_speedup']:.3f}x"
    log(line)


def command_line() -> str:
    """The command this process was started with, for the report."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m dreamshard"
    elif argv:
        argv[0] = Path(argv[0]).name
    return " ".join(argv)
