"""DreamShard against a long search that measures on real FBGEMM (issue 11). Run it ALONE.

The yardstick of "how close to the best placement" on real kernels: per task, a local
search whose every decision is a measurement (no cost model decides anything).

1. Start: size-lookup, torchrec, DreamShard (packaged model, default search) and the
   simulator ORACLE's placement, measured together; the cheapest measured is the start.
2. Each round measures the current placement together with ``--neighbours`` neighbours
   (interleaved, so each comparison is paired; 2 windows x 3 calls per shard, as short
   as the budget allows: 300 measurements take about 5 minutes per task): moves of a
   table off the device that was measured slowest (its compute), and swaps of such a
   table with one elsewhere; half of them the simulator's best-ranked such neighbours,
   half drawn at random (seeded), all within memory and never measured before. The best
   neighbour replaces the current placement if it measured at least ``--margin``
   cheaper in the same round. Rounds go on until ``--budget`` measurements (default 300
   per task, the issue's minimum).
3. All placements of a task, the search's final one included, are then measured again
   together with more repetitions (8 windows x 8 calls; ``evaluate``: fresh windows, so
   the search's winner's curse does not carry over): every placer's mean, its geomean
   ratio to the real search with a bootstrap 95% CI, and per task DreamShard's % above
   the real search.

    .venv/bin/python benchmarks/bench_real_search.py --out benchmarks/results/real-search.json

Target (issue 11): DreamShard <= 2% above a real long search (>= 300 FBGEMM
measurements per task) on >= 4 tasks. ``--backend sim`` runs the same on the simulator
(a quick check of the procedure, not a result).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import SimOracle, print_paired, real_suite
from dreamshard.backends import BackendOptions, make_backend
from dreamshard.backends.sim.model import SimBackend
from dreamshard.errors import InvalidPlacementError
from dreamshard.evaluation.evaluate import evaluate
from dreamshard.fileio import write_json
from dreamshard.method.checkpoint import DreamShardModel, packaged_model_dir
from dreamshard.placers.dreamshard import DreamShardPlacer
from dreamshard.placers.rules import GreedyPlacer
from dreamshard.placers.torchrec import TorchRecPlacer
from dreamshard.types import CostBackend, Placement, PlacementCost, Placer, Task


class Fixed:
    """A placer that returns placements found beforehand (the real search's)."""

    def __init__(self, name: str, placements: dict[str, Placement]) -> None:
        self.name = name
        self._placements = placements

    def place(self, task: Task) -> Placement:
        return self._placements[task.name]


def _compute(cost: PlacementCost) -> list[float]:
    return [c.fwd_comp_ms + c.bwd_comp_ms for c in cost.per_device]


def _valid(task: Task, placement: Placement) -> bool:
    try:
        placement.validate(task)
    except InvalidPlacementError:
        return False
    return True


def neighbours(
    task: Task,
    current: Placement,
    slowest: int,
    count: int,
    seen: set[Placement],
    sim: SimBackend,
    rng: np.random.Generator,
) -> list[Placement]:
    """Up to ``count`` unseen valid neighbours of ``current``: moves of a table off
    ``slowest`` and swaps of one with a table elsewhere; half ranked best by ``sim``,
    the rest drawn at random."""
    device_of = list(current.device_of)
    on_slowest = [i for i, d in enumerate(device_of) if d == slowest]
    others = [i for i, d in enumerate(device_of) if d != slowest]
    pool: list[Placement] = []
    for i in on_slowest:
        for d in range(task.num_devices):
            if d != slowest:
                moved = list(device_of)
                moved[i] = d
                pool.append(Placement(tuple(moved)))
        for j in others:
            swapped = list(device_of)
            swapped[i], swapped[j] = device_of[j], device_of[i]
            pool.append(Placement(tuple(swapped)))
    fresh = list(dict.fromkeys(p for p in pool if p not in seen and _valid(task, p)))
    if not fresh:
        return []
    by_sim = sorted(fresh, key=lambda p: sim.cost_ms(task, p))
    chosen = by_sim[: (count + 1) // 2]
    taken = set(chosen)
    rest = [p for p in fresh if p not in taken]
    if rest:
        picks = rng.choice(len(rest), min(len(rest), count - len(chosen)), replace=False)
        chosen += [rest[int(k)] for k in sorted(picks)]
    return chosen


def real_search(
    task: Task,
    starts: dict[str, Placement],
    backend: CostBackend,
    sim: SimBackend,
    budget: int,
    count: int,
    margin: float,
    seed: int,
) -> tuple[Placement, dict[str, Any]]:
    """The measured local search of the module docstring: (final placement, its log)."""
    rng = np.random.default_rng(seed)
    names = list(starts)
    placements = list(dict.fromkeys(starts.values()))
    costs = backend.measure(task, placements)
    used = len(placements)
    k = int(np.argmin([c.cost_ms for c in costs]))
    current, current_cost = placements[k], costs[k]
    start_from = next(n for n in names if starts[n] == current)
    seen = set(placements)
    rounds = accepted = 0
    trace = [current_cost.cost_ms]
    while used + 2 <= budget:
        compute = _compute(current_cost)
        slowest = int(np.argmax(compute))
        batch = neighbours(task, current, slowest, min(count, budget - used - 1), seen, sim, rng)
        if not batch:
            break
        seen.update(batch)
        measured = backend.measure(task, [current, *batch])
        used += 1 + len(batch)
        rounds += 1
        here = measured[0]
        best = 1 + int(np.argmin([c.cost_ms for c in measured[1:]]))
        if measured[best].cost_ms < here.cost_ms * (1 - margin):
            current, current_cost = batch[best - 1], measured[best]
            accepted += 1
        else:
            current_cost = here
        trace.append(current_cost.cost_ms)
        if rounds % 5 == 0:
            print(
                f"  {task.name}: {used} measurements, {accepted} moves kept, "
                f"{current_cost.cost_ms:.2f} ms",
                flush=True,
            )
    log = {
        "start": start_from,
        "measurements": used,
        "rounds": rounds,
        "accepted": accepted,
        "trace_ms": trace,
    }
    return current, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tasks", type=int, default=4, help="Unseen test tasks.")
    parser.add_argument("--tables", type=int, default=40)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--memory", default="5GB")
    parser.add_argument("--budget", type=int, default=300, help="Measurements per task.")
    parser.add_argument("--neighbours", type=int, default=9, help="Neighbours per round.")
    parser.add_argument("--margin", type=float, default=0.01, help="Gain a move must show.")
    parser.add_argument("--row-cap", type=int, default=1_000_000)
    parser.add_argument(
        "--search-windows", type=int, default=2, help="Windows per measurement in the search."
    )
    parser.add_argument(
        "--search-calls", type=int, default=3, help="Calls per window in the search."
    )
    parser.add_argument("--model", type=Path, default=None, help="Default: packaged.")
    parser.add_argument(
        "--also-model",
        type=Path,
        default=None,
        help="Another model folder, measured beside the others as 'dreamshard-other' "
        "(not a start of the search).",
    )
    parser.add_argument("--backend", default="fbgemm", choices=("fbgemm", "sim"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    suite = real_suite(args.tables, args.devices, args.memory, args.row_cap, 0, args.tasks)
    tasks = list(suite.test)
    model_dir = args.model or packaged_model_dir("cpu-zen4")
    model = DreamShardModel.load(model_dir)
    sim = SimBackend()
    oracle = SimOracle()
    dreamshard = DreamShardPlacer(model)
    dreamshard.name = "dreamshard"
    placers: list[Placer] = [GreedyPlacer("size-lookup"), TorchRecPlacer(), dreamshard, oracle]
    search_options = BackendOptions(
        windows=args.search_windows, calls_per_window=args.search_calls, row_cap=args.row_cap
    )
    eval_options = BackendOptions(windows=8, calls_per_window=8, row_cap=args.row_cap)
    search_backend = make_backend(args.backend, search_options)
    found: dict[str, Placement] = {}
    logs: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for n, task in enumerate(tasks):
        starts = {p.name: p.place(task) for p in placers}
        found[task.name], logs[task.name] = real_search(
            task,
            starts,
            search_backend,
            sim,
            args.budget,
            args.neighbours,
            args.margin,
            seed=n,
        )
        trace = logs[task.name]["trace_ms"]
        print(
            f"task {n + 1}/{len(tasks)} ({task.name}): real search from "
            f"{logs[task.name]['start']}, {logs[task.name]['measurements']} measurements, "
            f"{logs[task.name]['accepted']} moves kept: {trace[0]:.2f} -> {trace[-1]:.2f} ms",
            flush=True,
        )
    search_s = time.perf_counter() - t0
    real = Fixed("real-search", found)
    measured: list[Placer] = [*placers, real]
    if args.also_model is not None:
        other = DreamShardPlacer(DreamShardModel.load(args.also_model))
        other.name = "dreamshard-other"
        measured.insert(3, other)
    backend = make_backend(args.backend, eval_options)
    evaluation = evaluate(
        tasks, measured, backend, on_task_done=lambda d, k: print(f"  measured {d}/{k}")
    )
    common = evaluation.common_tasks()
    print(f"\n{args.backend}: {len(common)} unseen tasks of {args.tables} tables on {args.devices}")
    per_task = {}
    for t in common:
        ref = evaluation.result("real-search", t).cost.cost_ms  # type: ignore[union-attr]
        per_task[t] = {
            p: evaluation.result(p, t).cost.cost_ms / ref - 1  # type: ignore[union-attr]
            for p in evaluation.placers
        }
        print(
            f"  {t}: % above the real search: "
            + ", ".join(f"{p} {v * 100:+.1f}" for p, v in per_task[t].items())
        )
    within = sum(per_task[t]["dreamshard"] <= 0.02 for t in common)
    print(f"dreamshard within 2% of the real search on {within} of {len(common)} tasks")
    paired = print_paired(evaluation, ("real-search", "size-lookup", "torchrec"))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        results = {
            "command": "benchmarks/bench_real_search.py",
            "args": {k: str(v) for k, v in vars(args).items()},
            "backend": (
                "fbgemm (measured; all-to-all stages from the fitted gloo model)"
                if args.backend == "fbgemm"
                else "sim (simulated, not measured)"
            ),
            "model": str(model_dir),
            "also_model": None if args.also_model is None else str(args.also_model),
            "search_wall_s": search_s,
            "search": logs,
            "pct_above_real_search": per_task,
            "dreamshard_within_2pct": within,
            "paired": paired,
            "evaluation": evaluation.to_json(),
        }
        write_json(args.out, results, default=str)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
