"""Learning benchmark: prints the targets of the learning issue, met or not.

On the ``sim`` backend (CPU profile), with 50 training and 50 unseen test tasks of 50
DLRM-like tables on 4 devices (5 GB each):

- quality: DreamShard's mean test cost vs the strongest expert baseline;
- headroom: DreamShard vs simulated annealing with 20,000 backend evaluations per task;
- generalisation: the same model on 20/100 tables and 2/8 devices, no retraining;
- cost-network accuracy on held-out measured placements (MAPE of the overall cost);
- inference speed (100 tables on 8 devices, 1,000 tables on 128 devices);
- training wall time and backend measurements spent.

All costs compared are the backend's, never the cost network's. Run:
``.venv/bin/python benchmarks/bench_learning.py [--quick]``; writes
``benchmarks/results/learning.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common import line, suite_tasks
from dreamshard.backends.sim.model import SimBackend
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import make_devices
from dreamshard.evaluation.evaluate import evaluate
from dreamshard.fileio import write_json
from dreamshard.method.checkpoint import DreamShardModel
from dreamshard.method.train import TrainConfig
from dreamshard.placers.dreamshard import DreamShardPlacer
from dreamshard.placers.registry import BASELINE_PLACERS, make_placer
from dreamshard.runtime import one_thread
from dreamshard.types import Placement, Task
from dreamshard.workflows.experiment import train_model

RESULTS = Path(__file__).parent / "results" / "learning.json"


def compare(tasks: Sequence[Task], model: DreamShardModel, samples: int) -> dict[str, float]:
    """Mean backend cost per placer on ``tasks`` (sim), DreamShard included."""
    placers = [make_placer(p) for p in BASELINE_PLACERS]
    placers.append(DreamShardPlacer(model))
    if samples:
        sampled = DreamShardPlacer(model, samples=samples)
        sampled.name = f"dreamshard-k{samples}"
        placers.append(sampled)
    result = evaluate(tasks, placers, SimBackend())
    return {s.placer: s.mean_cost_ms for s in result.summary()}


def best_baseline(means: dict[str, float]) -> tuple[str, float]:
    name = min(BASELINE_PLACERS, key=lambda p: means[p])
    return name, means[name]


def anneal(task: Task, start: Placement, evaluations: int, seed: int) -> float:
    """Simulated annealing on the backend itself: single-table moves, memory respected."""
    sim = SimBackend()
    rng = np.random.default_rng(seed)
    current = np.array(start.device_of)
    memory = np.array([task.table_memory_bytes(t) for t in task.tables])
    capacity = np.array([d.memory_bytes for d in task.devices])
    used = np.bincount(current, weights=memory, minlength=task.num_devices)
    cost = best = sim.cost_ms(task, current)
    temperature0 = 0.03 * cost
    for k in range(evaluations):
        temperature = temperature0 * (1 - k / evaluations) + 1e-9
        i = int(rng.integers(task.num_tables))
        d = int(rng.integers(task.num_devices))
        old = int(current[i])
        if d == old or used[d] + memory[i] > capacity[d]:
            continue
        current[i] = d
        new = sim.cost_ms(task, current)
        if new < cost or rng.random() < np.exp((cost - new) / temperature):
            used[old] -= memory[i]
            used[d] += memory[i]
            cost = new
            best = min(best, cost)
        else:
            current[i] = old
    return best


def cost_net_mape(model: DreamShardModel, tasks: Sequence[Task], seed: int) -> float:
    """MAPE of the predicted overall cost on held-out tasks' measured placements
    (random placements and DreamShard's own), in percent (``DreamShardModel.cost_mape``)."""
    sim = SimBackend()
    rng = np.random.default_rng(seed)
    placer = DreamShardPlacer(model, samples=0)
    of_task: list[Task] = []
    placed: list[Placement] = []
    measured: list[float] = []
    for task in tasks:
        placements = [placer.place(task)]
        placements += [
            Placement(tuple(int(d) for d in rng.integers(task.num_devices, size=task.num_tables)))
            for _ in range(3)
        ]
        of_task += [task] * len(placements)
        placed += placements
        measured += [c.cost_ms for c in sim.measure(task, placements)]
    return model.cost_mape(of_task, placed, measured)


def inference_seconds(model: DreamShardModel, num_tables: int, num_devices: int) -> float:
    pool = generate_table_pool(num_tables=max(num_tables, 856), seed=7)
    task = Task(f"speed-{num_tables}", tuple(pool[:num_tables]), make_devices(num_devices, 10**13))
    placer = DreamShardPlacer(model)
    placer.place(task)  # warm-up (first call loads kernels)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        placer.place(task)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run, not the targets")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--measurements", type=int, default=100)
    parser.add_argument("--policy-batches", type=int, default=100)
    parser.add_argument("--samples", type=int, default=32, help="dreamshard-kK sampled variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    num_tasks = 10 if args.quick else 50
    config = TrainConfig(
        iterations=3 if args.quick else args.iterations,
        measurements_per_iteration=10 if args.quick else args.measurements,
        cost_steps=100 if args.quick else 300,
        policy_batches=5 if args.quick else args.policy_batches,
        seed=args.seed,
    )
    results: dict[str, Any] = {"quick": args.quick, "train_config": vars(config)}
    print(
        f"Learning benchmark on sim (profile cpu-zen4); {num_tasks} train + {num_tasks} test tasks"
    )
    pool = generate_table_pool(num_tables=856, seed=args.seed)
    train, test = suite_tasks(pool, 50, 4, 5, num_tasks, args.seed)

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        model = train_model(config, train, SimBackend(), folder, resume=False).model
        train_s = time.perf_counter() - start
    line("training wall time on sim (s)", f"{train_s:.0f}", "<= 900", train_s <= 900)
    line("backend measurements spent", str(model.info["measurements"]))
    results.update(train_wall_s=train_s, measurements=model.info["measurements"])

    means = compare(test, model, args.samples)
    name, base = best_baseline(means)
    for placer, mean in means.items():
        line(f"  mean test cost, {placer} (ms)", f"{mean:.3f}")
    for variant in [p for p in means if p.startswith("dreamshard")]:
        gain = 1 - means[variant] / base
        line(
            f"{variant}: cost below best baseline ({name}), 50 tables x 4 dev",
            f"{gain * 100:+.1f}%",
            ">= +10%",
            gain >= 0.10,
        )
    results["quality"] = {"means_ms": means, "best_baseline": name}

    # Headroom: a long search on the backend itself, from the best placer's placement.
    gaps = []
    with one_thread():
        for k, task in enumerate(test[: 3 if args.quick else 10]):
            ds = DreamShardPlacer(model).place(task)
            ds_cost = SimBackend().cost_ms(task, ds)
            starts = [make_placer(name).place(task), ds]
            found = min(anneal(task, s, 20_000, seed=k) for s in starts)
            gaps.append(ds_cost / found - 1)
            base_gap = SimBackend().cost_ms(task, starts[0]) / found - 1
            results.setdefault("headroom", []).append(
                {"task": task.name, "dreamshard_gap": gaps[-1], "baseline_gap": base_gap}
            )
    gap = float(np.mean(gaps))
    base_gap = float(np.mean([h["baseline_gap"] for h in results["headroom"]]))
    line("headroom: best baseline above annealing (20k evals)", f"{base_gap * 100:.1f}%")
    line(
        "headroom: DreamShard above annealing (20k evals)",
        f"{gap * 100:.1f}%",
        "<= 3%",
        gap <= 0.03,
    )

    # Generalisation: no retraining.
    matrix = {}
    for tables, devices in ((20, 4), (100, 4), (50, 2), (50, 8)):
        memory_gb = 5 * (4 / devices) * (tables / 50)
        _, tasks = suite_tasks(pool, tables, devices, memory_gb, num_tasks // 2, args.seed + 1)
        cell = compare(tasks, model, 0)
        cell_name, cell_base = best_baseline(cell)
        gain = 1 - cell["dreamshard"] / cell_base
        matrix[f"{tables}x{devices}"] = {"means_ms": cell, "best_baseline": cell_name, "gain": gain}
        line(
            f"generalisation {tables} tables x {devices} devices vs {cell_name}",
            f"{gain * 100:+.1f}%",
            "> 0%",
            gain > 0,
        )
    results["generalisation"] = matrix

    mape = cost_net_mape(model, test[:20], args.seed)
    line(
        "cost network MAPE, held-out placements of test tasks (%)", f"{mape:.1f}", "<= 5", mape <= 5
    )
    results["cost_net_mape"] = mape

    small = inference_seconds(model, 100, 8)
    large = inference_seconds(model, 1000, 128)
    line("inference: 100 tables x 8 devices (ms)", f"{small * 1e3:.1f}", "<= 50", small <= 0.05)
    line("inference: 1,000 tables x 128 devices (s)", f"{large:.2f}", "<= 1", large <= 1)
    results.update(inference_100x8_s=small, inference_1000x128_s=large)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
