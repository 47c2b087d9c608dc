"""How close to the best placement each placer gets, on the simulator (issue 11).

Every suite's test tasks are drawn from a DLRM-like pool with a seed unlike the
project's own (so neither the packaged model nor anything tuned saw them). Each placer
places every task; every placement is costed by the simulator (labelled: simulated,
not measured). The yardstick is ORACLE (``placers/oracle.py``): a long search on the
simulator's own cost (greedy on the true cost, local search, 3 annealing restarts of
20,000 proposals each), over whole tables. Every placer places whole tables too
(``dreamshard*`` with ``sharding="table"``); ``dreamshard-auto`` is the product's
default, which may split tables (column or row shards) and so may go below the
whole-table ORACLE. Printed per suite: every placer's mean % above ORACLE and its
geometric-mean ratio to ORACLE; the packaged cost network's ranking quality over the
whole-table placements of each task (Spearman, pairwise ordering accuracy, MAPE); and the
planning time of one placement call (DreamShard's default search, splits allowed, and
TorchRec's table-wise planner, same run).

    .venv/bin/python benchmarks/bench_quality.py --out benchmarks/results/quality.json
    .venv/bin/python benchmarks/bench_quality.py --quick   # 4 tasks per suite, no rnn

20 test tasks per suite (10 on the 200- and 1,000-table suites, where the ORACLE alone
takes 20-70 s per task); rnn (500 measurements per task) on the three smaller suites.

Targets (issue 11): DreamShard (packaged model, default search) <= 2% above ORACLE on
every suite and better than size-lookup, torchrec and rnn; Spearman >= 0.9, pairwise
accuracy >= 90%, MAPE <= 5%; planning 100 x 8 <= 50 ms, 1,000 x 128 <= 0.5 s,
5,000 x 1,024 <= 10 s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from dreamshard.backends.sim.model import SimBackend
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import SuiteConfig, generate_suite, make_devices, make_task
from dreamshard.fileio import write_json
from dreamshard.method.checkpoint import DreamShardModel, packaged_model_dir
from dreamshard.placers.dreamshard import DreamShardPlacer
from dreamshard.placers.oracle import OraclePlacer
from dreamshard.placers.rnn import RnnConfig, RnnPlacer
from dreamshard.placers.rules import GreedyPlacer
from dreamshard.placers.torchrec import TorchRecPlacer
from dreamshard.types import Placement, Placer, TableSplit, Task
from dreamshard.units import parse_memory

#: The test pool's seed: unlike the project's (0) and the pretraining's (2026-2027).
POOL_SEED = 4242
SUITE_SEED = 99


@dataclass(frozen=True)
class Suite:
    name: str
    tables: int
    devices: int
    memory: str
    dims: tuple[int, ...]
    max_rows: int | None
    rnn: bool
    #: Most test tasks (the ORACLE takes 20-70 s per task on the large suites).
    max_tasks: int | None = None


SUITES = (
    Suite("paper-40x4", 40, 4, "5GB", (16,), None, True),
    Suite("mixed-40x4-binding", 40, 4, "1.75GB", (16, 32, 64, 128), None, True),
    Suite("mixed-80x8", 80, 8, "5GB", (16, 32, 64, 128), 5_000_000, True),
    Suite("mixed-200x32", 200, 32, "5GB", (16, 32, 64, 128), 5_000_000, False, 10),
    Suite("mixed-1000x128", 1000, 128, "5GB", (16, 32, 64, 128), 5_000_000, False, 10),
)

#: Planning-time tasks: (tables, devices, target seconds).
TIMING = ((100, 8, 0.05), (1000, 128, 0.5), (5000, 1024, 10.0))


def suite_tasks(suite: Suite, count: int, split: str = "test") -> list[Task]:
    """The suite's tasks: ``split="test"`` the unseen ones; ``"train"`` tasks of the same
    kind from the other half of the pool (what ``--finetune-sim`` trains on)."""
    pool = generate_table_pool(
        max(856, 2 * suite.tables + 200), seed=POOL_SEED, dims=suite.dims, max_rows=suite.max_rows
    )
    config = SuiteConfig(
        num_train=count if split == "train" else 0,
        num_test=count,
        min_tables=suite.tables,
        max_tables=suite.tables,
        num_devices=suite.devices,
        memory_bytes=parse_memory(suite.memory, "memory"),
        seed=SUITE_SEED,
    )
    return list(generate_suite(pool, config).split(split))


def finetuned(model_dir: Path, suite: Suite, measurements: int, out: Path) -> DreamShardModel:
    """The model fine-tuned on the simulator on 20 training tasks of ``suite`` (10
    iterations of ``measurements / 10``)."""
    from dreamshard.method.train import TrainConfig
    from dreamshard.workflows.experiment import train_model

    config = TrainConfig(
        iterations=10, measurements_per_iteration=max(1, measurements // 10), policy_batches=20
    )
    trained = train_model(
        config, suite_tasks(suite, 20, "train"), SimBackend(), out, init=str(model_dir)
    )
    return trained.model


def ranking(predicted: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(Spearman, share of pairs with different true costs ordered right)."""
    rho = float(spearmanr(predicted, true)[0]) if len(set(true.tolist())) > 1 else float("nan")
    right = total = 0
    for i, j in itertools.combinations(range(len(true)), 2):
        if abs(true[i] - true[j]) <= 1e-9 * max(true[i], true[j]):
            continue
        total += 1
        right += (predicted[i] - predicted[j]) * (true[i] - true[j]) > 0
    return rho, (right / total if total else float("nan"))


#: Placers that do not depend on the model: ``--reference`` can reuse their placements.
REFERENCE_PLACERS = ("size-lookup", "torchrec", "rnn", "oracle")


def placement_json(placement: Placement) -> dict[str, object]:
    """A placement in the results: devices as one string of numbers (a 1,000-table
    placement per line keeps the file small and readable)."""
    return {
        "device_of": " ".join(map(str, placement.device_of)),
        "splits": [[s.table, s.kind, list(s.sizes)] for s in placement.splits],
    }


def placement_from_json(payload: dict[str, Any]) -> Placement:
    splits = tuple(
        TableSplit(int(t), kind, tuple(int(x) for x in sizes))
        for t, kind, sizes in payload["splits"]
    )
    devices = payload["device_of"]
    if isinstance(devices, str):
        devices = devices.split()
    return Placement(tuple(int(d) for d in devices), splits)


def reused(
    reference: dict[str, Any] | None, suite: Suite, tasks: list[Task], backend: SimBackend
) -> dict[str, list[tuple[Placement, float]]]:
    """The reference run's placements (and planning times) of the model-free placers for
    ``suite``, checked: same tasks, and each placement's simulated cost recomputed equal
    to the one recorded (so a changed simulator or pool is refused, not mixed in)."""
    if reference is None or suite.name not in reference["suites"]:
        return {}
    records = reference["suites"][suite.name].get("per_task")
    if records is None or [r["task"] for r in records] != [t.name for t in tasks]:
        raise SystemExit(f"--reference: suite {suite.name} has other tasks than this run")
    out: dict[str, list[tuple[Placement, float]]] = {}
    for name in REFERENCE_PLACERS:
        if not all(name in r["placements"] for r in records):
            continue
        rows = []
        for task, r in zip(tasks, records, strict=True):
            placement = placement_from_json(r["placements"][name])
            cost = backend.cost_ms(task, placement)
            if abs(cost - r["costs"][name]) > 1e-9 * cost:
                raise SystemExit(
                    f"--reference: {name} on {task.name} costs {cost} ms now, "
                    f"{r['costs'][name]} ms in the reference: the simulator changed"
                )
            rows.append((placement, float(r["times"][name])))
        out[name] = rows
    return out


def run_suite(
    suite: Suite,
    count: int,
    model: DreamShardModel,
    backend: SimBackend,
    quick: bool,
    reference: dict[str, Any] | None = None,
) -> dict[str, object]:
    tasks = suite_tasks(suite, min(count, suite.max_tasks or count))
    placers: list[Placer] = [
        GreedyPlacer("size-lookup"),
        TorchRecPlacer(),
        # Whole tables, like the ORACLE and the baselines; the default search is local.
        DreamShardPlacer(model, search="none", sharding="table"),
        DreamShardPlacer(model, search="greedy", sharding="table"),
        DreamShardPlacer(model, sharding="table"),
        DreamShardPlacer(model),  # the product's default: splits allowed (auto)
        OraclePlacer(backend),
    ]
    names = ["size-lookup", "torchrec", "dreamshard-none", "dreamshard-greedy", "dreamshard"]
    names += ["dreamshard-auto", "oracle"]
    if suite.rnn and not quick:
        placers.insert(2, RnnPlacer(backend, RnnConfig(budget=500)))
        names.insert(2, "rnn")
    previous = reused(reference, suite, tasks, backend)
    costs: dict[str, list[float]] = {n: [] for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    per_task: list[dict[str, object]] = []
    rho, pairs, mape = [], [], []
    for k, task in enumerate(tasks):
        placements = []
        for name, placer in zip(names, placers, strict=True):
            if name in previous:
                placement, wall = previous[name][k]
            else:
                t0 = time.perf_counter()
                placement = placer.place(task)
                wall = time.perf_counter() - t0
            times[name].append(wall)
            placements.append(placement)
            costs[name].append(backend.cost_ms(task, placement))
        per_task.append(
            {
                "task": task.name,
                "costs": {n: costs[n][-1] for n in names},
                "times": {n: times[n][-1] for n in names},
                "placements": {
                    n: placement_json(p) for n, p in zip(names, placements, strict=True)
                },
            }
        )
        # The ranking is rated on the whole-table placements (as before splits existed).
        ranked = [p for n, p in zip(names, placements, strict=True) if n != "dreamshard-auto"]
        true = np.array([backend.cost_ms(task, p) for p in ranked])
        predicted = model.predict_cost_ms([task] * len(ranked), ranked)
        r, a = ranking(predicted, true)
        rho.append(r)
        pairs.append(a)
        mape.append(float(np.mean(np.abs(predicted - true) / true) * 100))
        print(f"  {suite.name} task {k + 1}/{len(tasks)} done", file=sys.stderr, flush=True)
    oracle = np.array(costs["oracle"])
    placer_rows = {}
    for name in names:
        ratio = np.array(costs[name]) / oracle
        placer_rows[name] = {
            "mean_cost_ms": float(np.mean(costs[name])),
            "pct_above_oracle": float((ratio.mean() - 1) * 100),
            "geomean_ratio_to_oracle": float(np.exp(np.log(ratio).mean())),
            "worst_pct_above_oracle": float((ratio.max() - 1) * 100),
            "mean_place_s": float(np.mean(times[name])),
        }
    return {
        "suite": suite.__dict__,
        "tasks": len(tasks),
        "placers": placer_rows,
        "cost_model": {
            "spearman_mean": float(np.nanmean(rho)),
            "pairwise_accuracy_mean": float(np.nanmean(pairs)),
            "mape_mean": float(np.mean(mape)),
            "placements_per_task": len(names) - 1,
        },
        "reused_from_reference": sorted(previous),
        "per_task": per_task,
    }


def planning_times(
    model: DreamShardModel, repeats: int, searches: tuple[str, ...] = ("local",)
) -> list[dict[str, object]]:
    """Median wall time of one placement call per task size: DreamShard (splits allowed)
    with each of ``searches`` (the default's, ``local``, as ``dreamshard``; others as
    ``dreamshard-<search>``) and TorchRec's table-wise planner, in the same run, the
    placers taking turns in each of ``repeats`` rounds."""
    rows = []
    for tables, devices, target in TIMING:
        pool = generate_table_pool(tables, seed=POOL_SEED + tables, dims=(16, 32, 64, 128))
        memory = 2 * max(t.size_bytes for t in pool) + sum(t.size_bytes for t in pool) // devices
        task = make_task(f"time-{tables}x{devices}", pool, make_devices(devices, memory))
        row: dict[str, object] = {"tables": tables, "devices": devices, "target_s": target}
        placers: list[tuple[str, Placer]] = [
            ("dreamshard" if search == "local" else f"dreamshard-{search}",
             DreamShardPlacer(model, search=search))
            for search in searches
        ]  # fmt: skip
        timed_placers = (*placers, ("torchrec", TorchRecPlacer()))
        walls: dict[str, list[float]] = {name: [] for name, _ in timed_placers}
        for _ in range(repeats):  # interleaved: a slow spell of the machine hits every placer
            for name, placer in timed_placers:
                t0 = time.perf_counter()
                placer.place(task)
                walls[name].append(time.perf_counter() - t0)
        for name, _ in timed_placers:
            row[f"{name}_median_s"] = statistics.median(walls[name])
        rows.append(row)
        timed = ", ".join(f"{name} {row[f'{name}_median_s']:.3f} s" for name, _ in placers)
        print(
            f"planning {tables} x {devices}: {timed}, torchrec "
            f"{row['torchrec_median_s']:.3f} s (target {target} s)",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Write the results here (JSON).")
    parser.add_argument("--quick", action="store_true", help="4 tasks per suite, no rnn.")
    parser.add_argument("--tasks", type=int, default=20, help="Test tasks per suite.")
    parser.add_argument("--suites", default=",".join(s.name for s in SUITES))
    parser.add_argument("--no-timing", action="store_true", help="Skip the planning times.")
    parser.add_argument(
        "--timing-only", action="store_true", help="Only the planning times (no suites)."
    )
    parser.add_argument(
        "--timing-searches",
        default="local",
        help="Comma-separated search modes to time DreamShard with (none, greedy, local).",
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="Model folder (default: packaged)."
    )
    parser.add_argument(
        "--finetune-sim",
        type=int,
        default=0,
        help="First fine-tune the model on this many simulated measurements of 20 training "
        "tasks of each suite (from the other half of its pool).",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="A previous --out of this script: reuse its size-lookup, torchrec, rnn and "
        "ORACLE placements (checked against the simulator) instead of recomputing them.",
    )
    args = parser.parse_args()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    reference = json.loads(args.reference.read_text()) if args.reference else None
    logging.basicConfig(level=logging.WARNING)
    count = 4 if args.quick else args.tasks
    model_dir = args.model or packaged_model_dir("cpu-zen4")
    model = DreamShardModel.load(model_dir)
    backend = SimBackend()
    wanted = set(args.suites.split(","))
    results: dict[str, object] = {
        "backend": "sim (cpu-zen4), simulated, not measured",
        "model": str(model_dir),
        "finetune_sim_measurements": args.finetune_sim,
        "command": " ".join(["benchmarks/bench_quality.py", *sys.argv[1:]]),
        "suites": {},
    }
    t0 = time.perf_counter()
    for suite in SUITES:
        if suite.name not in wanted or args.timing_only:
            continue
        suite_model = model
        if args.finetune_sim:
            folder = Path(f"runs/quality-finetune/{suite.name}")
            suite_model = finetuned(model_dir, suite, args.finetune_sim, folder)
        row = run_suite(suite, count, suite_model, backend, args.quick, reference)
        results["suites"][suite.name] = row  # type: ignore[index]
        print(f"{suite.name} ({row['tasks']} unseen tasks), % above ORACLE (mean / worst):")
        for name, st in row["placers"].items():  # type: ignore[attr-defined]
            print(
                f"  {name:18s} {st['pct_above_oracle']:+6.2f}% / "
                f"{st['worst_pct_above_oracle']:+6.2f}%  mean {st['mean_cost_ms']:8.2f} ms  "
                f"place {st['mean_place_s'] * 1e3:9.1f} ms"
            )
        cm = row["cost_model"]
        print(
            f"  cost model: Spearman {cm['spearman_mean']:.3f}, pairwise accuracy "  # type: ignore[index]
            f"{cm['pairwise_accuracy_mean'] * 100:.1f}%, MAPE {cm['mape_mean']:.1f}%",  # type: ignore[index]
            flush=True,
        )
        if args.out is not None:  # after every suite: a long run keeps what it finished
            write_json(args.out, results)
    if not args.no_timing:
        searches = tuple(s.strip() for s in args.timing_searches.split(",") if s.strip())
        results["planning"] = planning_times(model, 1 if args.quick else 5, searches)
    results["wall_s"] = time.perf_counter() - t0
    if args.out is not None:
        write_json(args.out, results)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
