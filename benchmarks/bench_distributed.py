"""Distributed-backend benchmark: prints the targets of issue 4 (items 1-3), met or not.

- agreement: Spearman rho between the ``distributed`` backend (2 CPU processes, gloo)
  and the single-process ``fbgemm`` backend (with the packaged profile's fitted
  all-to-all model) over 20 random placements of a small task (target >= 0.8), beside
  the noise ceiling: rho of ``fbgemm`` against a repeat of its own measurement;
- overhead: seconds per distributed measurement of a 4-device placement of 20 small
  tables once the worker group runs (target <= 20 s), and the start-up time;
- failure: seconds from killing one worker mid-measurement to the error (target <= 60 s),
  and from stopping one (a hang) to the error, with the default collective timeout;
- communication fit: held-out error of the all-to-all model fitted to a fresh grid.

Run: ``.venv/bin/python benchmarks/bench_distributed.py [--quick]``. Writes every
number to ``benchmarks/results/distributed.json``. On a shared machine the timings
move with the others' load; the load average at the start and end is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from common import line, random_placements
from dreamshard.backends.commfit import CommFitConfig, fit_comm, measure_grid
from dreamshard.backends.distributed.backend import DistributedBackend, DistributedConfig
from dreamshard.backends.distributed.protocol import CommPoint, TimingSettings
from dreamshard.backends.fbgemm import FbgemmBackend, FbgemmConfig, default_comm
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import make_devices
from dreamshard.errors import BackendError
from dreamshard.fileio import write_json
from dreamshard.types import Task

RESULTS = Path(__file__).parent / "results" / "distributed.json"
BENCH_SEED = 1000


def small_task(num_tables: int, num_devices: int, seed: int) -> Task:
    """Tables of mixed dims (4-128) and up to 100k rows, so placements differ in cost."""
    pool = generate_table_pool(
        num_tables=num_tables,
        seed=seed,
        dims=(4, 8, 16, 32, 64, 128),
        max_rows=100_000,
        name_prefix="b_",
    )
    return Task(
        name=f"bench-{num_tables}x{num_devices}",
        tables=tuple(pool),
        devices=make_devices(num_devices, 10**12),
    )


def bench_agreement(placements: int, windows: int, calls: int) -> dict[str, Any]:
    task = small_task(16, 2, BENCH_SEED)
    chosen = random_placements(task, placements, BENCH_SEED)
    start = time.perf_counter()
    with DistributedBackend(DistributedConfig(windows=windows, calls_per_window=calls)) as dist:
        distributed = [c.cost_ms for c in dist.measure(task, chosen)]
    dist_s = time.perf_counter() - start
    comm = default_comm("cpu")
    start = time.perf_counter()
    fbgemm_backend = FbgemmBackend(FbgemmConfig(windows=windows, calls_per_window=calls, comm=comm))
    single = [c.cost_ms for c in fbgemm_backend.measure(task, chosen)]
    fbgemm_s = time.perf_counter() - start
    # The noise ceiling: the fbgemm backend against itself, measured again.
    repeat = [c.cost_ms for c in fbgemm_backend.measure(task, chosen)]
    rho_repeat = float(spearmanr(single, repeat).statistic)
    rho_repeat_dist = float(spearmanr(distributed, repeat).statistic)
    rho = float(spearmanr(distributed, single).statistic)
    line(
        f"agreement distributed(2 procs) vs fbgemm, {placements} placements (rho)",
        f"{rho:.3f}",
        ">= 0.8",
        rho >= 0.8,
    )
    line("  noise ceiling: fbgemm vs fbgemm measured again (rho)", f"{rho_repeat:.3f}", "", None)
    line(
        "  distributed vs the repeated fbgemm measurement (rho)", f"{rho_repeat_dist:.3f}", "", None
    )
    spread = float(np.std(single) / np.mean(single))
    line("  spread of the 20 placements' fbgemm costs (std/mean)", f"{spread:.3f}", "", None)
    ratio = float(np.median(np.array(distributed) / np.array(single)))
    line("  median cost ratio distributed / fbgemm", f"{ratio:.3f}", "", None)
    return {
        "agreement": {
            "task": task.name,
            "placements": placements,
            "windows": windows,
            "calls_per_window": calls,
            "spearman_rho": rho,
            "spearman_rho_fbgemm_repeat": rho_repeat,
            "spearman_rho_distributed_vs_fbgemm_repeat": rho_repeat_dist,
            "fbgemm_repeat_cost_ms": repeat,
            "fbgemm_cost_rel_spread": spread,
            "median_ratio_distributed_over_fbgemm": ratio,
            "distributed_cost_ms": distributed,
            "fbgemm_cost_ms": single,
            "fbgemm_comm_model": comm.__dict__,
            "distributed_wall_s": dist_s,
            "fbgemm_wall_s": fbgemm_s,
        }
    }


def bench_overhead(repeats: int) -> dict[str, Any]:
    task = small_task(20, 4, BENCH_SEED + 1)
    placement = random_placements(task, 1, BENCH_SEED)[0]
    with DistributedBackend(DistributedConfig()) as backend:
        start = time.perf_counter()
        backend.measure(task, [placement])
        first_s = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            backend.measure(task, [placement])
            times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    line(
        f"one 4-device measurement of 20 tables after start-up (s, median of {repeats})",
        f"{seconds:.2f}",
        "<= 20",
        seconds <= 20,
    )
    line("  first measurement, start-up of 4 processes included (s)", f"{first_s:.2f}", "", None)
    return {
        "overhead": {
            "tables": task.num_tables,
            "devices": task.num_devices,
            "windows": DistributedConfig().windows,
            "calls_per_window": DistributedConfig().calls_per_window,
            "measurement_s": seconds,
            "all_measurements_s": times,
            "first_measurement_with_startup_s": first_s,
        }
    }


def _time_to_error(sig: signal.Signals, rank: int) -> tuple[float, str]:
    """Seconds from sending ``sig`` to worker ``rank`` mid-measurement to the error."""
    task = small_task(8, 4, BENCH_SEED + 2)
    placement = random_placements(task, 1, BENCH_SEED)[0]
    config = DistributedConfig(windows=100_000)  # runs until the failure
    sent: list[float] = []
    with DistributedBackend(config) as backend:
        # Start the group first, so that the failure hits a running measurement.
        backend.measure_comm([CommPoint(256, (8,) * task.num_devices)], TimingSettings(1, 1, 0))
        pid_holder: dict[str, int] = {}

        def fire() -> None:
            time.sleep(3.0)
            pid = backend.worker_pids.get(rank)
            if pid is None:
                return
            pid_holder["pid"] = pid
            sent.append(time.perf_counter())
            os.kill(pid, sig)

        thread = threading.Thread(target=fire)
        thread.start()
        try:
            backend.measure(task, [placement])
            message = "no error"
        except BackendError as err:
            message = str(err)
        end = time.perf_counter()
        thread.join()
        if "pid" in pid_holder and sig == signal.SIGSTOP:
            with contextlib.suppress(ProcessLookupError):  # the teardown killed it
                os.kill(pid_holder["pid"], signal.SIGCONT)
    return (end - sent[0] if sent else float("nan")), message


def bench_failure(hang: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"timeout_s": DistributedConfig().timeout_s}
    seconds, message = _time_to_error(signal.SIGKILL, rank=2)
    line(
        "kill one of 4 workers mid-measurement -> error (s)",
        f"{seconds:.2f}",
        "<= 60",
        seconds <= 60,
    )
    print(f"  error: {message}")
    out["kill_to_error_s"] = seconds
    out["kill_error"] = message
    if hang:
        seconds, message = _time_to_error(signal.SIGSTOP, rank=2)
        line(
            "stop (hang) one of 4 workers mid-measurement -> error (s)",
            f"{seconds:.2f}",
            "<= 60",
            seconds <= 60,
        )
        print(f"  error: {message}")
        out["hang_to_error_s"] = seconds
        out["hang_error"] = message
    return {"failure": out}


def bench_comm_fit(windows: int) -> dict[str, Any]:
    config = CommFitConfig(windows=windows)
    start = time.perf_counter()
    with DistributedBackend(DistributedConfig()) as backend:
        samples = measure_grid(config, backend.measure_comm)
    result = fit_comm(config, samples)
    errors = result.holdout_errors()
    model = result.model
    line(
        f"comm fit, held-out median APE over {len(result.holdout_samples)} points (%)",
        f"{errors['median_ape']:.1f}",
        "",
        None,
    )
    line("  held-out max APE (%)", f"{errors['max_ape']:.1f}", "", None)
    print(
        f"  fitted latency {model.latency_ms:.3f} ms, bandwidth {model.bandwidth_gbps:.3f} GB/s, "
        f"volume {model.volume!r}; packaged profile has {default_comm('cpu').latency_ms:.3f} ms, "
        f"{default_comm('cpu').bandwidth_gbps:.3f} GB/s"
    )
    return {
        "comm_fit": {
            "points": len(samples),
            "windows": windows,
            "holdout_errors_percent": errors,
            "fit_errors_percent": result.fit_errors(),
            "model": model.__dict__,
            "wall_s": time.perf_counter() - start,
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no hang test")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    results: dict[str, Any] = {"quick": args.quick, "load_average_start": os.getloadavg()}
    print(f"load average at start: {os.getloadavg()} on {os.cpu_count()} CPUs")
    results.update(
        bench_agreement(20, windows=4 if args.quick else 8, calls=4 if args.quick else 8)
    )
    results.update(bench_overhead(repeats=1 if args.quick else 3))
    results.update(bench_failure(hang=not args.quick))
    results.update(bench_comm_fit(windows=2 if args.quick else 4))
    results["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
