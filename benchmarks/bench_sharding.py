"""Split tables against whole tables: column- and row-wise sharding (issue 13).

Suites (unseen tasks, pool seed 4242):

- ``heavy-20x4`` and ``heavy-40x8``: the DLRM-like pool with 8% of its tables made
  heavy (pooling 100-500, dims 64-256, rows 1e5-5e7; ``data.augment.with_heavy_tables``),
  on 4 and 8 devices of 64 GB, so every task also has a table-wise plan;
- ``paper-40x4``: the paper-like suite (dim 16, 5 GB devices), where splits should not
  be needed.

Sim (``--sim``, simulated: the calibrated analytical model, labelled): every placer's
cost, % above an ORACLE that may split (``OraclePlacer(sharding="auto")``), and the
geometric-mean ratio of DreamShard ``auto`` to DreamShard ``table``.

Real (``--real``, run ALONE on the machine): every placer's placements of a task measured
together on FBGEMM CPU kernels (interleaved windows; rows capped at 1e6 so the weights fit
in RAM, lookups unchanged); paired per-task ratios with a seeded bootstrap 95% CI of
DreamShard ``auto`` to DreamShard ``table`` and to the best table-wise plan of each task
(the lowest measured among every table-wise placer: size-lookup, torchrec, dreamshard
table), with ``torchrec-all`` (TorchRec's planner with every sharding type) in the same run.

Also printed: planning time with splits allowed on 1,000 tables x 128 devices, and a task
whose largest table fits no single device (it must get a valid plan).

    .venv/bin/python benchmarks/bench_sharding.py --sim --out benchmarks/results/sharding-sim.json
    .venv/bin/python benchmarks/bench_sharding.py --real --out benchmarks/results/sharding-real.json

Targets (issue 13): ``auto`` >= 10% below the best table-wise plan on the heavy suite on
real FBGEMM with the CI excluding 1; never worse than table-wise (within noise) on the
paper-like suite; planning 1,000 x 128 with splits <= 2 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreamshard.backends import BackendOptions, make_backend
from dreamshard.backends.kernels import cap_rows
from dreamshard.backends.sim.model import SimBackend
from dreamshard.backends.sim.profile import load_profile
from dreamshard.data.augment import with_heavy_tables
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import SuiteConfig, generate_suite
from dreamshard.evaluation.evaluate import Evaluation, evaluate, split_from_json
from dreamshard.evaluation.stats import paired_comparison
from dreamshard.fileio import write_json
from dreamshard.method.checkpoint import DreamShardModel, packaged_model_dir
from dreamshard.placers.dreamshard import DreamShardPlacer
from dreamshard.placers.oracle import OraclePlacer
from dreamshard.placers.registry import PLACERS, make_placer
from dreamshard.placers.rules import GreedyPlacer
from dreamshard.placers.torchrec import TorchRecPlacer
from dreamshard.types import Device, Placement, Placer, TableSpec, Task
from dreamshard.units import parse_memory

POOL_SEED = 4242
SUITE_SEED = 99
HEAVY_SEED = 13
HEAVY_SHARE = 0.08
#: Most rows a table (or shard) runs with on fbgemm, so the weights fit in RAM.
ROW_CAP = 1_000_000


@dataclass(frozen=True)
class Suite:
    name: str
    tables: int
    devices: int
    memory: str
    heavy: bool


SUITES = (
    Suite("heavy-20x4", 20, 4, "64GB", True),
    Suite("heavy-40x8", 40, 8, "64GB", True),
    Suite("paper-40x4", 40, 4, "5GB", False),
)


def pool(heavy: bool, size: int = 856) -> list[TableSpec]:
    if heavy:
        base = generate_table_pool(size, seed=POOL_SEED, dims=(16, 32, 64, 128))
        return with_heavy_tables(base, HEAVY_SHARE, HEAVY_SEED)
    return generate_table_pool(size, seed=POOL_SEED, dim=16)


def suite_tasks(suite: Suite, count: int, devices_per_host: int | None = None) -> list[Task]:
    """The suite's test tasks, on hosts of ``devices_per_host`` devices (None: one)."""
    config = SuiteConfig(
        num_train=0,
        num_test=count,
        min_tables=suite.tables,
        max_tables=suite.tables,
        num_devices=suite.devices,
        memory_bytes=parse_memory(suite.memory, "memory"),
        seed=SUITE_SEED,
    )
    tasks = generate_suite(pool(suite.heavy), config).split("test")
    return [dataclasses.replace(t, devices_per_host=devices_per_host) for t in tasks]


def named(placer: Any, name: str) -> Placer:
    placer.name = name
    return placer  # type: ignore[no-any-return]


def competitors(model: DreamShardModel) -> list[Placer]:
    """Table-wise baselines, DreamShard table and auto, and TorchRec with every type."""
    out: list[Placer] = [
        GreedyPlacer("size-lookup"),
        TorchRecPlacer(),
        named(DreamShardPlacer(model, sharding="table"), "dreamshard-table"),
        named(DreamShardPlacer(model, sharding="auto"), "dreamshard-auto"),
        named(DreamShardPlacer(model, sharding="auto", split_scorer="sim"), "dreamshard-auto-sim"),
    ]
    if "torchrec-all" in PLACERS:
        out.insert(2, make_placer("torchrec-all"))
    return out


TABLE_WISE = ("size-lookup", "torchrec", "dreamshard-table")


def geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def run_sim(
    model: DreamShardModel, suites: list[Suite], count: int, devices_per_host: int | None = None
) -> dict[str, Any]:
    sim = SimBackend()
    out: dict[str, Any] = {}
    for suite in suites:
        tasks = suite_tasks(suite, count, devices_per_host)
        placers = [
            *competitors(model),
            named(OraclePlacer(sim, 10_000, 2, sharding="table"), "oracle-table"),
            named(OraclePlacer(sim, 10_000, 2, sharding="auto"), "oracle-auto"),
        ]
        start = time.perf_counter()
        evaluation = evaluate(tasks, placers, sim)
        common = evaluation.common_tasks()
        ref = {t: evaluation.result("oracle-auto", t).cost.cost_ms for t in common}  # type: ignore[union-attr]
        above = {}
        hosts = f", hosts of {devices_per_host} devices" if devices_per_host else ""
        print(f"\n{suite.name} (sim, simulated; {len(common)} of {len(tasks)} tasks{hosts})")
        for p in evaluation.placers:
            costs = [evaluation.result(p, t).cost.cost_ms for t in common]  # type: ignore[union-attr]
            above[p] = 100 * (geomean([c / ref[t] for c, t in zip(costs, common, strict=True)]) - 1)
            plans = [evaluation.result(p, t).placement for t in common]
            split = sum(1 for q in plans if not q.is_table_wise)  # type: ignore[union-attr]
            host_rows = sum(
                1
                for q in plans
                if any(s.kind == "table_row" for s in q.splits)  # type: ignore[union-attr]
            )
            print(
                f"  {p:18s} mean {statistics.fmean(costs):9.3f} ms  {above[p]:+7.1f}% above "
                f"ORACLE(auto)  split plans {split}/{len(common)}"
                + (f" (table-row-wise in {host_rows})" if devices_per_host else "")
            )
        ratio = _paired(evaluation, "dreamshard-auto", "dreamshard-table")
        print(
            f"  dreamshard auto / table: {ratio['geomean_ratio']:.4f} "
            f"[{ratio['ci_low']:.4f}, {ratio['ci_high']:.4f}] wins/losses "
            f"{ratio['wins']}/{ratio['losses']}"
        )
        hosts_vs_one: dict[str, Any] = {}
        if devices_per_host:
            # The same placers on the same tasks as one host (no table-row-wise split):
            # the sim costs both alike (one link model), so the ratio is what hosts add.
            by_name = {t.name: t for t in tasks}
            for p in ("dreamshard-auto", "dreamshard-auto-sim"):
                placer = next(q for q in placers if q.name == p)
                one = [
                    sim.cost_ms(t, placer.place(t))
                    for t in (
                        dataclasses.replace(by_name[name], devices_per_host=None) for name in common
                    )
                ]
                hosts_cost = [evaluation.result(p, t).cost.cost_ms for t in common]  # type: ignore[union-attr]
                hosts_vs_one[p] = asdict(paired_comparison(p, hosts_cost, "one host", one))
                c = hosts_vs_one[p]
                print(
                    f"  {p} on hosts / on one host: {c['geomean_ratio']:.4f} "
                    f"[{c['ci_low']:.4f}, {c['ci_high']:.4f}] wins/losses "
                    f"{c['wins']}/{c['losses']}"
                )
        out[suite.name] = {
            "tasks": len(common),
            "pct_above_oracle_auto": above,
            "auto_vs_table": ratio,
            "hosts_vs_one_host": hosts_vs_one,
            "wall_s": time.perf_counter() - start,
            "evaluation": evaluation.to_json(),
        }
    return out


def _paired(evaluation: Evaluation, placer: str, baseline: str) -> dict[str, Any]:
    common = evaluation.common_tasks()
    mine = [evaluation.result(placer, t).cost.cost_ms for t in common]  # type: ignore[union-attr]
    theirs = [evaluation.result(baseline, t).cost.cost_ms for t in common]  # type: ignore[union-attr]
    return asdict(paired_comparison(placer, mine, baseline, theirs))


def _vs_best_table_wise(evaluation: Evaluation, placer: str) -> dict[str, Any]:
    """``placer`` against the lowest measured table-wise plan of each task."""
    common = evaluation.common_tasks()
    present = [p for p in TABLE_WISE if p in evaluation.placers]
    best = [
        min(evaluation.result(p, t).cost.cost_ms for p in present)  # type: ignore[union-attr]
        for t in common
    ]
    mine = [evaluation.result(placer, t).cost.cost_ms for t in common]  # type: ignore[union-attr]
    return asdict(paired_comparison(placer, mine, "best-table-wise", best))


def run_real(model: DreamShardModel, suites: list[Suite], count: int) -> dict[str, Any]:
    options = BackendOptions(windows=4, calls_per_window=4, row_cap=ROW_CAP)
    out: dict[str, Any] = {}
    for suite in suites:
        tasks = suite_tasks(suite, count)
        backend = make_backend("fbgemm", options)
        start = time.perf_counter()
        evaluation = evaluate(
            tasks,
            competitors(model),
            backend,
            on_task_done=lambda d, n, name=suite.name: print(
                f"  {name}: measured {d}/{n}", flush=True
            ),
        )
        common = evaluation.common_tasks()
        print(f"\n{suite.name} (real FBGEMM, measured; {len(common)} of {len(tasks)} tasks)")
        means = {}
        for p in evaluation.placers:
            costs = [evaluation.result(p, t).cost.cost_ms for t in common]  # type: ignore[union-attr]
            means[p] = statistics.fmean(costs)
            print(f"  {p:18s} mean {means[p]:9.3f} ms")
        comparisons = {
            "auto_vs_table": _paired(evaluation, "dreamshard-auto", "dreamshard-table"),
            "auto_vs_best_table_wise": _vs_best_table_wise(evaluation, "dreamshard-auto"),
            "auto_sim_vs_table": _paired(evaluation, "dreamshard-auto-sim", "dreamshard-table"),
            "auto_sim_vs_best_table_wise": _vs_best_table_wise(evaluation, "dreamshard-auto-sim"),
        }
        if "torchrec-all" in evaluation.placers:
            comparisons["torchrec_all_vs_best_table_wise"] = _vs_best_table_wise(
                evaluation, "torchrec-all"
            )
            comparisons["auto_vs_torchrec_all"] = _paired(
                evaluation, "dreamshard-auto", "torchrec-all"
            )
        for label, c in comparisons.items():
            print(
                f"  {label:32s} {c['geomean_ratio']:.4f} [{c['ci_low']:.4f}, "
                f"{c['ci_high']:.4f}] wins/losses {c['wins']}/{c['losses']}"
            )
        conditions = evaluation.conditions
        if conditions is not None and conditions.warnings:
            print("  LOADED MACHINE: " + "; ".join(conditions.warnings))
        sim_error = _sim_error(_measured_of(evaluation), tasks)
        for kind, e in sim_error.items():
            print(
                f"  simulator on {kind} placements (held out): placement MAPE "
                f"{e['placement_mape']:.1f}% ({e['placements']}), device compute MAPE "
                f"{e['device_compute_mape']:.1f}% ({e['devices']} device operators)"
            )
        out[suite.name] = {
            "tasks": len(common),
            "mean_cost_ms": means,
            "paired": comparisons,
            "sim_error": sim_error,
            "wall_s": time.perf_counter() - start,
            "evaluation": evaluation.to_json(),
        }
    return out


#: (task name, placement, measured cost ms, measured (fwd, bwd) compute ms per device)
Measured = tuple[str, Placement, float, list[tuple[float, float]]]


def _measured_of(evaluation: Evaluation) -> list[Measured]:
    return [
        (
            r.task,
            r.placement,
            r.cost.cost_ms,
            [(d.fwd_comp_ms, d.bwd_comp_ms) for d in r.cost.per_device],
        )
        for r in evaluation.results
        if r.placement is not None and r.cost is not None
    ]


def _measured_from_json(evaluation: dict[str, Any]) -> list[Measured]:
    """The measured placements of a saved ``Evaluation.to_json()``."""
    out = []
    for r in evaluation["results"]:
        if r["device_of"] is None or r["cost_ms"] is None:
            continue
        splits = tuple(split_from_json(s) for s in r["splits"])
        per_device = [(d["fwd_comp_ms"], d["bwd_comp_ms"]) for d in r["per_device"]]
        out.append((r["task"], Placement(tuple(r["device_of"]), splits), r["cost_ms"], per_device))
    return out


def _as_run(task: Task, placement: Placement, row_cap: int | None) -> tuple[Task, Placement]:
    """The units of a placement as the fbgemm backend ran them: each unit (table, column
    shard or row block) with at most ``row_cap`` rows, lookups unchanged."""
    units, flat = placement.resolve(task)
    capped = tuple(cap_rows(t, row_cap) for t in units.tables)
    return Task(units.name, capped, units.devices, units.optimizer), flat


def _sim_error(
    measured: list[Measured],
    tasks: list[Task],
    sim: SimBackend | None = None,
    row_cap: int | None = ROW_CAP,
) -> dict[str, dict[str, Any]]:
    """The calibrated simulator's error on measured placements, each costed as it ran
    (rows capped as on fbgemm): overall cost, and forward plus backward computation per
    device operator, split and table-wise apart."""
    sim = sim or SimBackend()
    by_name = {t.name: t for t in tasks}
    errors: dict[str, dict[str, list[float]]] = {
        "split": {"placement": [], "device": []},
        "table-wise": {"placement": [], "device": []},
    }
    seen: set[tuple[str, Placement]] = set()
    for name, placement, cost_ms, per_device in measured:
        if (name, placement) in seen:
            continue
        seen.add((name, placement))
        kind = "table-wise" if placement.is_table_wise else "split"
        units, flat = _as_run(by_name[name], placement, row_cap)
        (predicted,) = sim.measure(units, [flat])
        errors[kind]["placement"].append(abs(predicted.cost_ms / cost_ms - 1) * 100)
        for p, (fwd, bwd) in zip(predicted.per_device, per_device, strict=True):
            if fwd + bwd > 0:
                ratio = (p.fwd_comp_ms + p.bwd_comp_ms) / (fwd + bwd)
                errors[kind]["device"].append(abs(ratio - 1) * 100)
    return {
        kind: {
            "placements": len(e["placement"]),
            "placement_mape": statistics.fmean(e["placement"]),
            "devices": len(e["device"]),
            "device_compute_mape": statistics.fmean(e["device"]),
        }
        for kind, e in errors.items()
        if e["placement"]
    }


def sim_error_of_saved(path: Path, profile: str) -> dict[str, Any]:
    """A profile's error on the placements measured in a saved ``--real`` run, with the
    row cap applied as it ran, and without it (how earlier runs reported it)."""
    saved = json.loads(path.read_text())
    sim = SimBackend(load_profile(profile))
    out: dict[str, Any] = {"results": str(path), "profile": profile}
    for suite in SUITES:
        if suite.name not in saved.get("real", {}):
            continue
        tasks = suite_tasks(suite, saved["args"]["tasks"])
        measured = _measured_from_json(saved["real"][suite.name]["evaluation"])
        out[suite.name] = {
            "capped": _sim_error(measured, tasks, sim, ROW_CAP),
            "uncapped": _sim_error(measured, tasks, sim, None),
        }
        for how, errors in out[suite.name].items():
            for kind, e in errors.items():
                print(
                    f"{suite.name} {how:8s} {kind:10s}: placement MAPE "
                    f"{e['placement_mape']:5.1f}% ({e['placements']}), device compute MAPE "
                    f"{e['device_compute_mape']:5.1f}% ({e['devices']})"
                )
    return out


def planning_time(
    model: DreamShardModel, repeats: int = 3, devices_per_host: int | None = None
) -> dict[str, Any]:
    """One placement call on 1,000 heavy-pool tables x 128 devices, table vs auto (on
    hosts of ``devices_per_host`` devices: auto on them too)."""
    config = SuiteConfig(
        num_train=0,
        num_test=1,
        min_tables=1000,
        max_tables=1000,
        num_devices=128,
        memory_bytes=parse_memory("64GB", "memory"),
        seed=SUITE_SEED,
    )
    one_host = next(iter(generate_suite(pool(True, 2400), config).split("test")))
    runs = [("table", one_host), ("auto", one_host)]
    if devices_per_host:
        runs.append(("auto", dataclasses.replace(one_host, devices_per_host=devices_per_host)))
    out: dict[str, Any] = {}
    for sharding, task in runs:
        placer = DreamShardPlacer(model, sharding=sharding)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            placement = placer.place(task)
            times.append(time.perf_counter() - start)
        hosts = f", hosts of {task.devices_per_host}" if task.devices_per_host else ""
        out[sharding + hosts] = {
            "median_s": statistics.median(times),
            "times_s": times,
            "split_tables": len(placement.splits),
            "table_row_splits": sum(1 for q in placement.splits if q.kind == "table_row"),
        }
        print(
            f"planning 1000 x 128{hosts}, sharding {sharding}: median "
            f"{statistics.median(times):.2f} s ({len(placement.splits)} tables split; target "
            "with splits <= 2 s)"
        )
    return out


def big_table_check(model: DreamShardModel) -> dict[str, Any]:
    """A task whose total memory fits but whose largest table fits no device."""
    base = pool(False)[:12]
    big = TableSpec("big", 50_000_000, 128, 20.0, base[0].access_hist)  # 25.6 GB
    devices = tuple(Device(f"gpu{i}", 16 * 10**9) for i in range(4))
    task = Task("big-table", (big, *base[:11]), devices)
    placement = DreamShardPlacer(model, sharding="auto").place(task)
    placement.validate(task)
    (split,) = [s for s in placement.splits if s.table == 0]
    cost = SimBackend().cost_ms(task, placement)
    print(
        f"largest table 25.6 GB on 16 GB devices: valid plan, 'big' split {split.kind}-wise "
        f"into {len(split.sizes)} shards; {len(placement.splits)} tables split; "
        f"sim cost {cost:.2f} ms"
    )
    return {"split": asdict(split), "splits": len(placement.splits), "sim_cost_ms": cost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sim", action="store_true", help="the simulated comparison")
    parser.add_argument("--real", action="store_true", help="the real FBGEMM comparison")
    parser.add_argument("--tasks", type=int, default=10, help="test tasks per suite")
    parser.add_argument("--suites", default=",".join(s.name for s in SUITES))
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--sim-error",
        type=Path,
        default=None,
        help="Only report a profile's error on the placements of a saved --real run.",
    )
    parser.add_argument("--profile", default="cpu-zen4", help="Profile of --sim-error.")
    parser.add_argument(
        "--devices-per-host",
        type=int,
        default=None,
        help="Run every suite's tasks (--sim) and the planning-time task (also split with "
        "hosts) on hosts of this many devices (table-row-wise splits allowed; default: one "
        "host).",
    )
    args = parser.parse_args()
    if args.sim_error is not None:
        errors = sim_error_of_saved(args.sim_error, args.profile)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_json(args.out, errors)
        return
    logging.basicConfig(level=logging.ERROR)
    chosen = [s for s in SUITES if s.name in args.suites.split(",")]
    model = DreamShardModel.load(packaged_model_dir("cpu-zen4"))
    results: dict[str, Any] = {"command": "benchmarks/bench_sharding.py", "args": vars(args)}

    def save() -> None:  # after every part, so a late failure loses nothing before it
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_json(args.out, results, default=str)

    results["big_table"] = big_table_check(model)
    save()
    if not args.no_timing:
        results["planning"] = planning_time(model, devices_per_host=args.devices_per_host)
        save()
    if args.sim:
        results["sim"] = run_sim(model, chosen, args.tasks, args.devices_per_host)
        save()
    if args.real:
        results["real"] = run_real(model, chosen, args.tasks)
        save()
    if args.out is not None:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
