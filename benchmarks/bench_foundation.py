"""Foundation benchmark: prints the targets of the foundation issue, met or not.

- measurement precision of the real ``fbgemm`` backend (same placement measured 5 times);
- simulator accuracy against ``fbgemm`` on held-out shards and on 100 random placements;
- simulator speed (placement evaluations per second, 50 tables on 4 devices);
- table pool generation time (856 tables).

Run: ``make bench`` (or ``.venv/bin/python benchmarks/bench_foundation.py [--quick]``).
Writes every number to ``benchmarks/results/foundation.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from common import line, random_placements
from dreamshard.backends.calibrate import CalibrationConfig, measure_samples, sample_shards
from dreamshard.backends.fbgemm import FbgemmBackend, FbgemmConfig
from dreamshard.backends.sim.fit import prediction_errors
from dreamshard.backends.sim.model import SimBackend
from dreamshard.backends.sim.profile import load_profile
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import make_devices
from dreamshard.fileio import write_json
from dreamshard.placers.rules import GreedyPlacer
from dreamshard.types import Task

RESULTS = Path(__file__).parent / "results" / "foundation.json"
#: Seed of the benchmark's own draws, distinct from the calibration's (seed 0), so the
#: simulator is judged on tables and shards it was not fitted on.
BENCH_SEED = 1000


def bench_pool_generation() -> dict[str, Any]:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        generate_table_pool(num_tables=856, seed=0)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    line("table pool generation, 856 tables (s, median of 3)", f"{seconds:.3f}", "< 2", seconds < 2)
    return {"pool_generation_s": seconds}


def dlrm_task(num_tables: int, num_devices: int, seed: int, max_rows: int = 1_000_000) -> Task:
    pool = generate_table_pool(num_tables=856, seed=seed, max_rows=max_rows)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(pool), size=num_tables, replace=False))
    return Task(
        name=f"bench-{num_tables}x{num_devices}",
        tables=tuple(pool[i] for i in chosen),
        devices=make_devices(num_devices, 10**12),
    )


def bench_sim_speed() -> dict[str, Any]:
    task = dlrm_task(50, 4, BENCH_SEED)
    sim = SimBackend()
    placements = random_placements(task, 2000, BENCH_SEED)
    sim.cost_ms(task, placements[0])  # precompute per-table terms once, as search code does
    start = time.perf_counter()
    for p in placements:
        sim.cost_ms(task, p)
    per_second = len(placements) / (time.perf_counter() - start)
    start = time.perf_counter()
    for p in placements[:500]:
        sim.measure(task, [p])
    measure_per_second = 500 / (time.perf_counter() - start)
    line(
        "sim placement evaluations / s (50 tables, 4 devices)",
        f"{per_second:,.0f}",
        ">= 2,000",
        per_second >= 2000,
    )
    line("  same through measure() (full stage costs)", f"{measure_per_second:,.0f}", "", None)
    return {"sim_evals_per_s": per_second, "sim_measure_per_s": measure_per_second}


def bench_precision(repeats: int, windows: int, calls: int) -> dict[str, Any]:
    task = dlrm_task(20, 4, BENCH_SEED)
    placement = GreedyPlacer("size-lookup").place(task)
    backend = FbgemmBackend(FbgemmConfig(windows=windows, calls_per_window=calls))
    backend.measure(task, [placement])  # build the operators once (start-up, not measurement)
    costs, seconds = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        (cost,) = backend.measure(task, [placement])
        seconds.append(time.perf_counter() - start)
        costs.append(cost.cost_ms)
    spread = max(costs) / min(costs) - 1
    per_measurement = statistics.mean(seconds)
    line(
        f"fbgemm precision ({windows} windows x {calls} calls): max/min - 1 of {repeats} (%)",
        f"{spread * 100:.2f}",
        "<= 5",
        spread <= 0.05,
    )
    line(
        "fbgemm time per measured placement, 20 tables x 4 dev (s)",
        f"{per_measurement:.2f}",
        "<= 15",
        per_measurement <= 15,
    )
    return {
        "precision_windows": windows,
        "precision_calls_per_window": calls,
        "precision_costs_ms": costs,
        "precision_rel_spread": spread,
        "seconds_per_measurement": per_measurement,
    }


def bench_sim_accuracy(num_shards: int, num_placements: int) -> dict[str, Any]:
    profile = load_profile("cpu-zen4")
    # Held-out shards: fresh pools and draws (seed differs from the calibration's).
    # Whole tables only, as this benchmark has always measured (comparable across runs).
    shard_config = CalibrationConfig(num_shards=num_shards, seed=BENCH_SEED, split_share=0.0)
    backend = FbgemmBackend(
        FbgemmConfig(windows=shard_config.windows, calls_per_window=shard_config.calls_per_window)
    )
    samples = measure_samples(sample_shards(shard_config), backend)
    errors = prediction_errors(profile, samples)
    shard_mdape = float(np.median(errors["total"]))
    line(
        f"sim vs fbgemm, per-device computation, {len(samples)} held-out shards: median APE (%)",
        f"{shard_mdape:.1f}",
        "<= 10",
        shard_mdape <= 10,
    )
    line(
        "  forward / backward median APE (%)",
        f"{np.median(errors['fwd']):.1f} / {np.median(errors['bwd']):.1f}",
        "",
        None,
    )

    # Random placements of one task, measured for real (interleaved 10 at a time).
    task = dlrm_task(20, 4, BENCH_SEED + 1)
    placements = random_placements(task, num_placements, BENCH_SEED + 1)
    real = FbgemmBackend(FbgemmConfig())  # default precision (8 windows x 8 calls)
    measured: list[float] = []
    for k in range(0, len(placements), 10):
        measured.extend(c.cost_ms for c in real.measure(task, placements[k : k + 10]))
    sim = SimBackend(profile)
    simulated = [sim.cost_ms(task, p) for p in placements]
    rho = float(spearmanr(measured, simulated).statistic)
    line(
        f"sim vs fbgemm rank correlation, {len(placements)} random placements",
        f"{rho:.3f}",
        ">= 0.9",
        rho >= 0.9,
    )
    ape = np.abs(np.array(simulated) - np.array(measured)) / np.array(measured) * 100
    line("  placement cost median APE (%)", f"{np.median(ape):.1f}", "", None)
    return {
        "profile": profile.name,
        "profile_measured": profile.measured,
        "heldout_shards": len(samples),
        "shard_total_median_ape": shard_mdape,
        "shard_fwd_median_ape": float(np.median(errors["fwd"])),
        "shard_bwd_median_ape": float(np.median(errors["bwd"])),
        "placements": len(placements),
        "placement_spearman": rho,
        "placement_median_ape": float(np.median(ape)),
        "placement_costs_measured_ms": measured,
        "placement_costs_sim_ms": simulated,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shards and placements")
    parser.add_argument(
        "--skip-fbgemm", action="store_true", help="only the simulator and pool targets"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--windows", type=int, default=25, help="precision: time windows")
    parser.add_argument("--calls", type=int, default=8, help="precision: calls per window")
    args = parser.parse_args()
    results: dict[str, Any] = {"quick": args.quick}
    print("Foundation benchmark (this machine; fbgemm = real FBGEMM CPU kernels, 1 thread)")
    results.update(bench_pool_generation())
    results.update(bench_sim_speed())
    if not args.skip_fbgemm:
        results.update(bench_precision(repeats=5, windows=args.windows, calls=args.calls))
        results.update(
            bench_sim_accuracy(
                num_shards=20 if args.quick else 60, num_placements=20 if args.quick else 100
            )
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
