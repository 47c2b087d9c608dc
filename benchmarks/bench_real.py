"""DreamShard on real FBGEMM kernels: the packaged model fine-tuned, against the rules and
TorchRec's planner, paired over unseen tasks (issue 11). Run it ALONE on the machine.

1. Fine-tune the packaged (simulator-pretrained) model on real FBGEMM measurements of
   training tasks (default 10 iterations x 20 = 200 measured placements), timed.
2. Place every unseen test task with: size-lookup, torchrec, the packaged model without
   fine-tuning, the fine-tuned model (both with the default search), and the simulator
   ORACLE's placement (a long search on the simulator's cost, then measured for real).
3. Measure all placements of a task together (interleaved windows) on FBGEMM; print
   every placer's mean, and its geometric-mean cost ratio to size-lookup and to torchrec
   with a seeded bootstrap 95% CI and wins/losses.

    .venv/bin/python benchmarks/bench_real.py --out benchmarks/results/real-fbgemm.json

Targets (issue 11): fine-tuned DreamShard >= 8% below size-lookup and >= 5% below
torchrec (geometric mean, CI of the ratio excluding 1); fine-tuning <= 200 measurements
and <= 20 minutes.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict
from pathlib import Path

from common import SimOracle, print_paired, real_suite
from dreamshard.backends import BackendOptions, make_backend
from dreamshard.evaluation.evaluate import evaluate
from dreamshard.fileio import write_json
from dreamshard.method.checkpoint import DreamShardModel, packaged_model_dir
from dreamshard.method.train import TrainConfig
from dreamshard.placers.dreamshard import DreamShardPlacer
from dreamshard.placers.rules import GreedyPlacer
from dreamshard.placers.torchrec import TorchRecPlacer
from dreamshard.workflows.experiment import train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--model-dir", type=Path, default=Path("runs/real-fbgemm/model"))
    parser.add_argument("--tables", type=int, default=40)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--memory", default="5GB")
    parser.add_argument("--train-tasks", type=int, default=20)
    parser.add_argument("--test-tasks", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--measurements", type=int, default=20)
    parser.add_argument("--row-cap", type=int, default=1_000_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    suite = real_suite(
        args.tables, args.devices, args.memory, args.row_cap, args.train_tasks, args.test_tasks
    )
    train_options = BackendOptions(windows=4, calls_per_window=6, row_cap=args.row_cap)
    eval_options = BackendOptions(windows=8, calls_per_window=8, row_cap=args.row_cap)
    config = TrainConfig(
        iterations=args.iterations,
        measurements_per_iteration=args.measurements,
        policy_batches=40,
        seed=0,
    )
    t0 = time.perf_counter()
    trained = train_model(
        config,
        suite.train,
        make_backend("fbgemm", train_options),
        args.model_dir,
        resume=True,
        log=print,
        init="packaged",
    )
    finetune_s = time.perf_counter() - t0
    packaged = DreamShardModel.load(packaged_model_dir("cpu-zen4"))
    placers = [
        GreedyPlacer("size-lookup"),
        TorchRecPlacer(),
        DreamShardPlacer(packaged),
        DreamShardPlacer(trained.model),
        SimOracle(),
    ]
    placers[2].name = "dreamshard-packaged"
    placers[3].name = "dreamshard-finetuned"
    t1 = time.perf_counter()
    backend = make_backend("fbgemm", eval_options)
    evaluation = evaluate(
        suite.test, placers, backend, on_task_done=lambda d, n: print(f"  measured {d}/{n}")
    )
    eval_s = time.perf_counter() - t1
    common = evaluation.common_tasks()
    means = {
        p: sum(evaluation.result(p, t).cost.cost_ms for t in common) / len(common)  # type: ignore[union-attr]
        for p in evaluation.placers
    }
    print(f"\nreal FBGEMM, {len(common)} unseen tasks of {args.tables} tables on {args.devices}")
    print(f"fine-tuning: {trained.model.info.get('measurements')} measurements, {finetune_s:.0f} s")
    for p, m in means.items():
        print(f"  {p:22s} mean {m:8.3f} ms")
    paired = print_paired(evaluation, ("size-lookup", "torchrec"))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        results = {
            "command": "benchmarks/bench_real.py",
            "args": {k: str(v) for k, v in vars(args).items()},
            "backend": "fbgemm (measured; all-to-all stages from the fitted gloo model)",
            "finetune": {
                "measurements": trained.model.info.get("measurements"),
                "wall_s": finetune_s,
                "history": [asdict(r) for r in trained.history],
            },
            "eval_wall_s": eval_s,
            "tasks": len(common),
            "mean_cost_ms": means,
            "paired": paired,
            "evaluation": evaluation.to_json(),
        }
        write_json(args.out, results, default=str)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
