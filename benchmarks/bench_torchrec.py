"""TorchRec benchmark: DreamShard against TorchRec's own planner, the targets of issue 5.

(a) Planning time for 1,000 DLRM-like tables on 128 devices: DreamShard (greedy policy)
    vs TorchRec's ``EmbeddingShardingPlanner`` restricted to table-wise sharding (the
    ``torchrec`` placer) and TorchRec's planner with its default search (every sharding
    type and kernel), which users run; a run past ``--torchrec-timeout`` is stopped and
    reported as ">= N s". Target: DreamShard at least 10x faster.
(b) Mean measured cost on unseen test tasks, DreamShard vs the ``torchrec`` placer (and
    the expert rules), with TorchRec's own estimate of each placer's plans beside it.
    ``--backend sim``: the learning benchmark's 50 test tasks (50 tables, 4 devices,
    5 GB); ``--backend fbgemm``: the demo's test tasks (``--tasks runs/demo/tasks.json``,
    or the demo's default suite regenerated). Target: DreamShard lower.

The model: ``--model DIR`` (e.g. one trained by ``bench_learning.py`` or ``dreamshard
demo``), else trained here on sim like the learning benchmark (``--quick``: briefly).
Run: ``.venv/bin/python benchmarks/bench_torchrec.py [--quick] [--model DIR]
[--backend sim|fbgemm]``; writes ``benchmarks/results/torchrec.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import GB, line, suite_tasks
from dreamshard.backends import BackendOptions, make_backend
from dreamshard.backends.sim.model import SimBackend
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import load_suite, make_devices
from dreamshard.evaluation.evaluate import evaluate
from dreamshard.evaluation.torchrec_estimates import torchrec_estimates
from dreamshard.fileio import write_json
from dreamshard.method.checkpoint import DreamShardModel
from dreamshard.method.train import TrainConfig
from dreamshard.placers.dreamshard import DreamShardPlacer
from dreamshard.placers.registry import BASELINE_PLACERS, make_placer
from dreamshard.placers.torchrec import TorchRecPlacer, task_module, torchrec_planner
from dreamshard.types import Placer, Task
from dreamshard.workflows.demo import DemoConfig, prepare_demo
from dreamshard.workflows.experiment import train_model

RESULTS = Path(__file__).parent / "results" / "torchrec.json"


# -- (a) planning time -------------------------------------------------------------------


def scale_task(num_tables: int, num_devices: int, memory_bytes: int, seed: int) -> Task:
    pool = generate_table_pool(num_tables=num_tables, seed=seed)
    return Task(
        f"scale-{num_tables}x{num_devices}", tuple(pool), make_devices(num_devices, memory_bytes)
    )


def median_seconds(placer: Placer, task: Task, repeats: int) -> float:
    placer.place(task)  # warm-up: first calls load kernels and modules
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        placer.place(task)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _default_planner_run(task: Task, compute_device: str, queue: Any) -> None:
    """In a child process: TorchRec's planner with its default search space."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    warnings.simplefilter("ignore")
    planner = torchrec_planner(task, compute_device, table_wise_only=False)
    module = task_module(task)
    start = time.perf_counter()
    plan = planner.plan(module, [EmbeddingBagCollectionSharder()])
    elapsed = time.perf_counter() - start
    types: dict[str, int] = {}
    for sharding in plan.plan[""].values():
        types[sharding.sharding_type] = types.get(sharding.sharding_type, 0) + 1
    queue.put({"seconds": elapsed, "sharding_types": types})


def default_planner_seconds(task: Task, compute_device: str, timeout_s: float) -> dict[str, Any]:
    """Wall time of TorchRec's default planner, stopped after ``timeout_s``."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_default_planner_run, args=(task, compute_device, queue))
    start = time.perf_counter()
    process.start()
    process.join(timeout_s)
    if process.is_alive():
        process.terminate()
        process.join()
        return {"seconds": time.perf_counter() - start, "timed_out": True}
    if process.exitcode != 0 or queue.empty():
        return {"seconds": None, "timed_out": False, "error": f"exit code {process.exitcode}"}
    result: dict[str, Any] = queue.get()
    result["timed_out"] = False
    return result


def planning_time(
    model: DreamShardModel, args: argparse.Namespace, results: dict[str, Any]
) -> None:
    task = scale_task(
        args.scale_tables, args.scale_devices, int(args.scale_memory_gb * GB), args.seed
    )
    print(
        f"(a) planning {task.num_tables} tables on {task.num_devices} devices "
        f"({args.scale_memory_gb:g} GB each), TorchRec estimating for {args.compute_device}"
    )
    dreamshard_s = median_seconds(DreamShardPlacer(model), task, args.repeats)
    line("  DreamShard (greedy policy), median (s)", f"{dreamshard_s:.3f}")
    table_wise_s = median_seconds(TorchRecPlacer(args.compute_device), task, args.repeats)
    line("  TorchRec planner, table-wise only (torchrec placer) (s)", f"{table_wise_s:.3f}")
    default = default_planner_seconds(task, args.compute_device, args.torchrec_timeout)
    if default["seconds"] is None:
        shown = f"failed ({default['error']})"
    elif default["timed_out"]:
        shown = f">= {default['seconds']:.0f}"
    else:
        shown = f"{default['seconds']:.2f}"
    line("  TorchRec planner, default search (all sharding types) (s)", shown)
    if default.get("sharding_types"):
        line("    its plan's sharding types", json.dumps(default["sharding_types"]))
    ratio_tw = table_wise_s / dreamshard_s
    line(
        "DreamShard faster than TorchRec table-wise (x)", f"{ratio_tw:.1f}", ">= 10", ratio_tw >= 10
    )
    if default["seconds"] is not None:
        ratio = default["seconds"] / dreamshard_s
        prefix = ">= " if default["timed_out"] else ""
        line(
            "DreamShard faster than TorchRec default search (x)",
            f"{prefix}{ratio:.1f}",
            ">= 10",
            ratio >= 10,
        )
    results["planning_time"] = {
        "num_tables": task.num_tables,
        "num_devices": task.num_devices,
        "memory_bytes": task.devices[0].memory_bytes,
        "compute_device": args.compute_device,
        "dreamshard_s": dreamshard_s,
        "torchrec_table_wise_s": table_wise_s,
        "torchrec_default": default,
        "torchrec_timeout_s": args.torchrec_timeout,
    }


# -- (b) quality on unseen tasks ------------------------------------------------------------


def learning_suite(seed: int) -> tuple[list[Task], list[Task]]:
    """Exactly the learning benchmark's suite: 50 train and 50 test tasks of 50 tables."""
    return suite_tasks(generate_table_pool(num_tables=856, seed=seed), 50, 4, 5, 50, seed)


def test_tasks(args: argparse.Namespace, folder: str) -> list[Task]:
    """The unseen test tasks the comparison runs on (see the module docstring)."""
    if args.tasks is not None:
        tasks = list(load_suite(args.tasks).test)
    elif args.backend == "sim":
        _, tasks = learning_suite(args.seed)
    else:
        _, suite = prepare_demo(DemoConfig(out_dir=folder, seed=args.seed))
        tasks = list(suite.test)
    return tasks[: args.num_tasks] if args.num_tasks else tasks


def train_here(args: argparse.Namespace, folder: str) -> DreamShardModel:
    """Train like the learning benchmark (sim); ``--quick`` trains briefly."""
    train_tasks, _ = learning_suite(args.seed)
    config = TrainConfig(
        iterations=3 if args.quick else args.iterations,
        measurements_per_iteration=10 if args.quick else args.measurements,
        cost_steps=100 if args.quick else 300,
        policy_batches=5 if args.quick else args.policy_batches,
        seed=args.seed,
    )
    start = time.perf_counter()
    # A fresh run each time (an old checkpoint in --save-model is overwritten, not resumed).
    trained = train_model(
        config, train_tasks, SimBackend(), args.save_model or folder, resume=False
    )
    line("trained DreamShard on sim (s)", f"{time.perf_counter() - start:.0f}")
    return trained.model


def quality(
    model: DreamShardModel,
    tasks: Sequence[Task],
    args: argparse.Namespace,
    results: dict[str, Any],
) -> None:
    names = [p.strip() for p in args.placers.split(",") if p.strip()]
    placers: list[Placer] = [make_placer(n) for n in names if n != "dreamshard"]
    placers.append(DreamShardPlacer(model))
    options = BackendOptions(seed=args.seed)
    backend = make_backend(args.backend, options)
    shown = ", ".join(p.name for p in placers)
    print(f"(b) {len(tasks)} unseen test tasks on {args.backend}: {shown}")
    result = evaluate(
        tasks,
        placers,
        backend,
        on_task_done=lambda done, total: (
            print(f"    task {done}/{total}", flush=True)
            if done % max(1, total // 5) == 0 or done == total
            else None
        ),
    )
    estimates = torchrec_estimates(result, tasks, batch_size=options.batch_size)
    summary = {s.placer: s for s in result.summary()}
    for name, s in summary.items():
        line(
            f"  {name}: mean cost (ms) / TorchRec's estimate (ms)",
            f"{s.mean_cost_ms:.3f} / {estimates['mean_estimate_ms'][name]:.3f}",
        )
        line(
            f"  {name}: mean planning time (ms), failures",
            f"{s.mean_place_time_ms:.1f}, {s.failures}",
        )
    ds, tr = summary["dreamshard"].mean_cost_ms, summary["torchrec"].mean_cost_ms
    gain = 1 - ds / tr
    wins = 0
    for t in result.common_tasks():
        mine, theirs = result.result("dreamshard", t).cost, result.result("torchrec", t).cost
        wins += mine is not None and theirs is not None and mine.cost_ms < theirs.cost_ms
    line(
        f"DreamShard cost below TorchRec's planner ({args.backend})",
        f"{gain * 100:+.1f}%",
        "> 0%",
        gain > 0,
    )
    line("  tasks where DreamShard is cheaper", f"{wins}/{len(result.common_tasks())}")
    results["quality"] = {
        "backend": args.backend,
        "num_tasks": len(tasks),
        "common_tasks": len(result.common_tasks()),
        "mean_cost_ms": {n: s.mean_cost_ms for n, s in summary.items()},
        "mean_rel_spread": {n: s.mean_rel_spread for n, s in summary.items()},
        "mean_place_time_ms": {n: s.mean_place_time_ms for n, s in summary.items()},
        "failures": {n: s.failures for n, s in summary.items()},
        "dreamshard_below_torchrec": gain,
        "dreamshard_cheaper_tasks": wins,
        "torchrec_estimates": estimates,
        "evaluation": result.to_json(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run, not the targets")
    parser.add_argument("--model", type=Path, help="trained DreamShard model folder to reuse")
    parser.add_argument("--save-model", help="where to keep the model trained here")
    parser.add_argument("--iterations", type=int, default=30, help="training (without --model)")
    parser.add_argument("--measurements", type=int, default=100, help="per training iteration")
    parser.add_argument("--policy-batches", type=int, default=100, help="per training iteration")
    parser.add_argument("--backend", choices=("sim", "fbgemm"), default="sim")
    parser.add_argument("--tasks", type=Path, help="suite file whose test split to use")
    parser.add_argument("--num-tasks", type=int, help="only the first N test tasks")
    parser.add_argument(
        "--placers",
        default=",".join((*BASELINE_PLACERS, "torchrec", "dreamshard")),
        help="placers of (b); torchrec and dreamshard are needed",
    )
    parser.add_argument("--scale-tables", type=int, default=1000)
    parser.add_argument("--scale-devices", type=int, default=128)
    parser.add_argument("--scale-memory-gb", type=float, default=80.0)
    parser.add_argument(
        "--compute-device",
        choices=("cpu", "cuda"),
        default="cuda",
        help="hardware TorchRec's planner assumes in (a)",
    )
    parser.add_argument(
        "--torchrec-timeout",
        type=float,
        default=600.0,
        help="stop TorchRec's default search after this many seconds",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.num_tasks = args.num_tasks or 10
        args.torchrec_timeout = min(args.torchrec_timeout, 60.0)
    names = {p.strip() for p in args.placers.split(",")}
    if not {"torchrec", "dreamshard"} <= names:
        parser.error("--placers must include torchrec and dreamshard")
    if args.backend == "fbgemm" and args.model is None:
        parser.error("--backend fbgemm needs --model DIR (e.g. runs/demo/model)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    results: dict[str, Any] = {
        "quick": args.quick,
        "args": {k: str(v) for k, v in vars(args).items()},
    }

    with tempfile.TemporaryDirectory() as folder:
        model = DreamShardModel.load(args.model) if args.model else train_here(args, folder)
        results["model"] = str(args.model) if args.model else "trained here on sim"
        if not args.skip_timing:
            planning_time(model, args, results)
        if not args.skip_quality:
            quality(model, test_tasks(args, folder), args, results)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
