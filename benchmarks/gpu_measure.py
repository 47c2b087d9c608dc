"""GPU measurement: a fixed set of shards and placements on one GPU, in a few minutes.

Meant for a machine with one NVIDIA GPU and only PyTorch and numpy (no fbgemm_gpu, no
scipy, no CLI libraries): the fused operators come from ``dreamshard.backends.kernels``
(FBGEMM's CUDA TBE if installed, else the ``torch-fused`` kernel), the tables and their
ids are drawn here with numpy. What it measures, with a fixed seed:

1. 40 single-table shards of synthetic DLRM-like tables (rows 1e3-2e6 log-uniform, dims
   16-128, pooling factors long-tailed, Zipf access) at batch 65,536;
2. 10 random placements of the same 40 tables on 4 emulated devices (each device's tables
   fused into one operator, devices run one at a time): per-device forward and backward
   times, the placement's computation cost ``max fwd + max bwd`` (all-to-all-free), and
   that cost plus twice the NVLink all-to-all *model* (backends/comm.py, labelled).

Every shard is timed as the ``fbgemm`` backend does (one forward, one backward with the
fused SGD update, synchronised), after warm-up, with repetitions spread over interleaved
windows; the median and the spread over windows are reported. A small correctness check
of the kernel against plain per-table ``embedding_bag`` runs first. Everything printed is
also written as JSON (kernel, torch and CUDA versions, GPU name, per-shard times).

Run (from the repository root)::

    python benchmarks/gpu_measure.py                        # GPU, ~1-3 min
    python benchmarks/gpu_measure.py --device cpu --quick   # tiny CPU check (seconds)

Writes ``benchmarks/results/gpu_measure.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script from a source tree: use its package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamshard.backends.comm import NVLINK_GPU
from dreamshard.backends.kernels import (
    SGD_LEARNING_RATE,
    FusedShard,
    build_fused,
    fbgemm_variant,
    select_kernel,
    time_fused_call,
)
from dreamshard.data.features import table_from_ids
from dreamshard.fileio import write_json
from dreamshard.types import TableSpec

RESULTS = Path(__file__).parent / "results" / "gpu_measure.json"

IdBatch = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Workload:
    """Sizes of one run."""

    num_tables: int
    batch_size: int
    max_rows: int
    num_devices: int
    num_placements: int
    windows: int
    calls_per_window: int
    warmup_calls: int


FULL = Workload(40, 65_536, 2_000_000, 4, 10, 5, 10, 3)
QUICK = Workload(6, 256, 5_000, 4, 3, 2, 2, 1)


def log(message: str) -> None:
    print(message, flush=True)


# -- tables and ids ---------------------------------------------------------------------


def draw_tables(work: Workload, seed: int) -> tuple[list[TableSpec], list[IdBatch]]:
    """DLRM-like tables with one batch of Zipf-distributed ids each (numpy only)."""
    rng = np.random.default_rng(seed)
    tables, ids = [], []
    for i in range(work.num_tables):
        rows = int(10 ** rng.uniform(3.0, np.log10(work.max_rows)))
        dim = int(rng.choice([16, 32, 64, 128], p=[0.4, 0.3, 0.2, 0.1]))
        one_hot = rng.random() < 0.2
        pooling = 1.0 if one_hot else float(np.clip(rng.lognormal(np.log(8.0), 1.0), 1.0, 100.0))
        skew = float(rng.uniform(0.0, 1.2))
        if one_hot:
            lengths = np.ones(work.batch_size, dtype=np.int64)
        else:
            lengths = rng.poisson(pooling, work.batch_size).astype(np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        # Zipf over ranks by inverse CDF; ranks land on random rows (hashing scatters them).
        cdf = np.cumsum(np.arange(1, rows + 1, dtype=np.float64) ** -skew)
        ranks = np.searchsorted(cdf, rng.random(int(offsets[-1])) * cdf[-1])
        row_of_rank = rng.permutation(rows)
        indices = row_of_rank[np.minimum(ranks, rows - 1)].astype(np.int64)
        tables.append(table_from_ids(f"t{i:02d}", indices, offsets, rows=rows, dim=dim))
        ids.append((indices, offsets))
    return tables, ids


def random_placements(num_tables: int, num_devices: int, count: int, seed: int) -> list[list[int]]:
    """Random placements with every device holding at least one table."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = []
    while len(out) < count:
        device_of = [int(d) for d in rng.integers(num_devices, size=num_tables)]
        if len(set(device_of)) == min(num_devices, num_tables):
            out.append(device_of)
    return out


# -- correctness ------------------------------------------------------------------------


def self_check(device: str, kernel: str, seed: int) -> dict[str, float]:
    """The kernel against per-table ``embedding_bag`` and a hand SGD step, on small tables."""
    rng = np.random.default_rng(seed)
    batch = 64
    tables, ids = [], []
    for i, (rows, dim) in enumerate([(300, 16), (200, 32), (500, 16)]):
        lengths = rng.integers(0, 5, batch)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        indices = rng.integers(0, 20, int(offsets[-1])).astype(np.int64)
        tables.append(table_from_ids(f"check{i}", indices, offsets, rows=rows, dim=dim))
        ids.append((indices, offsets))
    shard = build_fused(tables, ids, batch, device, kernel)
    weights = [w.detach().clone().float() for w in shard.op.split_embedding_weights()]
    out = shard.op(shard.indices, shard.offsets)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device)
    out.backward(grad)
    fwd_err = upd_err = 0.0
    col = 0
    for table, (indices, offsets), before, after in zip(
        tables, ids, weights, shard.op.split_embedding_weights(), strict=True
    ):
        idx = torch.from_numpy(indices).to(out.device)
        offs = torch.from_numpy(offsets).to(out.device)
        expected = torch.nn.functional.embedding_bag(
            idx, before, offs, mode="sum", include_last_offset=True
        )
        part = out[:, col : col + table.dim].detach().float()
        fwd_err = max(fwd_err, float((part - expected).abs().max()))
        bag_of_id = torch.repeat_interleave(torch.diff(offs))
        step = torch.zeros_like(before).index_add_(0, idx, grad[bag_of_id, col : col + table.dim])
        upd_err = max(
            upd_err,
            float((after.detach().float() - (before - SGD_LEARNING_RATE * step)).abs().max()),
        )
        col += table.dim
    return {"forward_max_abs_error": fwd_err, "update_max_abs_error": upd_err}


# -- timing -----------------------------------------------------------------------------


def time_shards(shards: list[FusedShard], device: str, work: Workload) -> list[dict[str, Any]]:
    """Median fwd/bwd ms of each shard over interleaved windows, and the spread over windows."""
    for shard in shards:
        for _ in range(work.warmup_calls):
            time_fused_call(shard, device)
    fwd: list[list[list[float]]] = [[] for _ in shards]
    bwd: list[list[list[float]]] = [[] for _ in shards]
    for window in range(work.windows):
        for j in range(len(shards)):
            k = (j + window) % len(shards)  # rotate so no shard always follows the same one
            calls = [time_fused_call(shards[k], device) for _ in range(work.calls_per_window)]
            fwd[k].append([c[0] for c in calls])
            bwd[k].append([c[1] for c in calls])
    out = []
    for f, b in zip(fwd, bwd, strict=True):
        totals = [statistics.median(x) + statistics.median(y) for x, y in zip(f, b, strict=True)]
        mean = statistics.fmean(totals)
        out.append(
            {
                "fwd_ms": statistics.median(x for w in f for x in w),
                "bwd_ms": statistics.median(x for w in b for x in w),
                "window_rel_spread": statistics.pstdev(totals) / mean if mean > 0 else 0.0,
            }
        )
    return out


def free(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def environment(device: str, kernel: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "kernel": kernel,
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "fbgemm_gpu": fbgemm_variant(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_bytes=props.total_memory,
            gpu_capability=f"{props.major}.{props.minor}",
        )
    else:
        info["cpu"] = platform.processor() or "unknown"
        info["torch_threads"] = torch.get_num_threads()
    return info


def table_record(table: TableSpec) -> dict[str, Any]:
    return {
        "name": table.name,
        "rows": table.rows,
        "dim": table.dim,
        "pooling_factor": table.pooling_factor,
        "size_bytes": table.size_bytes,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--kernel", default=None, help="fbgemm or torch-fused (default: auto)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--time-budget-s", type=float, default=270.0, help="stop measuring placements after this"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    work = QUICK if args.quick else FULL
    kernel = select_kernel(args.device, args.kernel)
    if args.device == "cpu":
        torch.set_num_threads(1)  # CPU kernels: one thread is steadier (MEASUREMENT.md)
    env = environment(args.device, kernel)
    log(f"gpu_measure: {env}")
    log(f"workload: {work}")

    check = self_check(args.device, kernel, args.seed)
    log(
        f"self-check vs per-table embedding_bag: forward max |err| "
        f"{check['forward_max_abs_error']:.2e}, SGD update max |err| "
        f"{check['update_max_abs_error']:.2e}"
    )

    tables, ids = draw_tables(work, args.seed)
    log(
        f"drew {len(tables)} tables in {time.perf_counter() - start:.1f} s: "
        f"{sum(t.size_bytes for t in tables) / 2**30:.2f} GiB of weights, "
        f"{sum(len(i) for i, _ in ids):,} ids per batch"
    )

    # 1. single-table shards, interleaved.
    singles = [
        build_fused([t], [i], work.batch_size, args.device, kernel)
        for t, i in zip(tables, ids, strict=True)
    ]
    single_times = time_shards(singles, args.device, work)
    del singles
    free(args.device)
    shard_results = []
    for n, (table, timing) in enumerate(zip(tables, single_times, strict=True), start=1):
        shard_results.append({**table_record(table), **timing})
        log(
            f"[shard {n:2d}/{len(tables)}] {table.name} rows {table.rows:>9,} dim {table.dim:>3} "
            f"pooling {table.pooling_factor:6.2f}: fwd {timing['fwd_ms']:8.3f} ms  "
            f"bwd {timing['bwd_ms']:8.3f} ms  (spread {timing['window_rel_spread'] * 100:.1f}%)"
        )

    # 2. placements: each device's tables fused, devices one at a time.
    placement_results = []
    truncated = False
    placements = random_placements(len(tables), work.num_devices, work.num_placements, args.seed)
    for n, device_of in enumerate(placements, start=1):
        if time.perf_counter() - start > args.time_budget_s:
            truncated = True
            log(f"time budget of {args.time_budget_s:.0f} s spent: stopping at placement {n}")
            break
        members = [
            [i for i, d in enumerate(device_of) if d == dev] for dev in range(work.num_devices)
        ]
        shards = [
            build_fused(
                [tables[i] for i in m], [ids[i] for i in m], work.batch_size, args.device, kernel
            )
            for m in members
        ]
        times = time_shards(shards, args.device, work)
        del shards
        free(args.device)
        widths = [sum(tables[i].dim for i in m) for m in members]
        comp_ms = max(t["fwd_ms"] for t in times) + max(t["bwd_ms"] for t in times)
        a2a_ms = NVLINK_GPU.time_ms(widths, work.batch_size)
        placement_results.append(
            {
                "device_of": device_of,
                "per_device": [
                    {"tables": [tables[i].name for i in m], "output_width": w, **t}
                    for m, w, t in zip(members, widths, times, strict=True)
                ],
                "computation_cost_ms": comp_ms,
                "modelled_all_to_all_ms": a2a_ms,
                "cost_with_modelled_all_to_all_ms": comp_ms + 2 * a2a_ms,
            }
        )
        per_device = "  ".join(f"{t['fwd_ms']:.3f}/{t['bwd_ms']:.3f}" for t in times)
        log(
            f"[placement {n:2d}/{len(placements)}] fwd/bwd ms per device: {per_device}  "
            f"computation cost {comp_ms:.3f} ms (+2 x modelled all-to-all {a2a_ms:.3f} ms)"
        )

    result = {
        "environment": env,
        "workload": vars(work),
        "seed": args.seed,
        "self_check": check,
        "shards": shard_results,
        "placements": placement_results,
        "all_to_all_model": {
            "name": NVLINK_GPU.source,
            "latency_ms": NVLINK_GPU.latency_ms,
            "bandwidth_gbps": NVLINK_GPU.bandwidth_gbps,
            "note": "modelled, not measured; computation costs exclude communication",
        },
        "truncated": truncated,
        "wall_s": time.perf_counter() - start,
    }
    write_json(args.out, result)
    log(f"wrote {args.out} in {result['wall_s']:.1f} s")
    return result


if __name__ == "__main__":
    main()
