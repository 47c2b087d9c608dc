"""Choose between pretrained models on validation tasks, never on the test tasks.

A candidate model (for example a further pretraining stage) is compared with the
current one on each quality suite's *training* tasks (``bench_quality.suite_tasks(...,
"train")``: tasks of the same shape drawn from the other half of the test pool, which no
test task shares a table with), on the simulator (simulated, not measured). Every task
is placed by both models with the same placer settings (whole tables, like the quality
benchmark's ``dreamshard`` rows; ``--sharding auto`` for the product default), and the
paired per-task cost ratio candidate / current is printed per suite and over all suites:
geometric mean, bootstrap 95% CI, wins/losses.

Usage::

    .venv/bin/python benchmarks/select_model.py CANDIDATE_DIR [--current DIR] [--out F]
    .venv/bin/python benchmarks/select_model.py M --current M --candidate-search none

``--current`` defaults to the packaged model of the profile. ``--candidate-search``
compares search modes instead (the same folder twice).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench_quality import SUITES, suite_tasks
from dreamshard.backends.sim.model import SimBackend
from dreamshard.backends.sim.profile import DEFAULT_PROFILE_NAME, load_profile
from dreamshard.evaluation.stats import paired_comparison
from dreamshard.fileio import write_json
from dreamshard.method.checkpoint import DreamShardModel, packaged_model_dir
from dreamshard.placers.dreamshard import DreamShardPlacer

#: Validation tasks per suite (at most; the quality suites' own caps hold).
TASKS_PER_SUITE = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidate", type=Path, help="The candidate model's folder.")
    parser.add_argument(
        "--current", type=Path, default=None, help="The model to beat (default: packaged)."
    )
    parser.add_argument("--profile", default=DEFAULT_PROFILE_NAME)
    parser.add_argument("--sharding", default="table", choices=("table", "auto"))
    parser.add_argument("--search", default="local", help="Both models' search mode.")
    parser.add_argument(
        "--candidate-search", default=None, help="The candidate's search mode (default: --search)."
    )
    parser.add_argument("--tasks", type=int, default=TASKS_PER_SUITE)
    parser.add_argument("--out", type=Path, default=None, help="Write the results here.")
    args = parser.parse_args()
    current_dir = args.current or packaged_model_dir(args.profile)
    searches = {"current": args.search, "candidate": args.candidate_search or args.search}
    models = {
        "current": DreamShardModel.load(current_dir),
        "candidate": DreamShardModel.load(args.candidate),
    }
    sim = SimBackend(load_profile(args.profile))
    print(
        f"candidate {args.candidate} vs current {current_dir}: sim ({args.profile}, simulated), "
        f"validation tasks (the suites' train split), sharding {args.sharding}, search "
        f"{searches['candidate']} vs {searches['current']}",
        flush=True,
    )
    t0 = time.perf_counter()
    costs: dict[str, list[float]] = {"current": [], "candidate": []}
    suites = []
    for suite in SUITES:
        tasks = suite_tasks(suite, min(args.tasks, suite.max_tasks or args.tasks), "train")
        mine: dict[str, list[float]] = {}
        for name, model in models.items():
            placer = DreamShardPlacer(model, search=searches[name], sharding=args.sharding)
            mine[name] = [sim.cost_ms(task, placer.place(task)) for task in tasks]
            costs[name] += mine[name]
        c = paired_comparison("candidate", mine["candidate"], "current", mine["current"])
        suites.append({"suite": suite.name, **asdict(c)})
        print(
            f"  {suite.name:20s} {c.geomean_ratio:.4f} [{c.ci_low:.4f}, {c.ci_high:.4f}] "
            f"{c.wins}/{c.losses} of {c.tasks}",
            flush=True,
        )
    # Over all suites: each task's ratio counts once (suites of 10 and 20 tasks).
    overall = paired_comparison("candidate", costs["candidate"], "current", costs["current"])
    print(
        f"  {'all':20s} {overall.geomean_ratio:.4f} [{overall.ci_low:.4f}, "
        f"{overall.ci_high:.4f}] {overall.wins}/{overall.losses} of {overall.tasks} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    if args.out is not None:
        write_json(
            args.out,
            {
                "candidate": str(args.candidate),
                "current": str(current_dir),
                "profile": args.profile,
                "sharding": args.sharding,
                "search": searches,
                "backend": f"sim ({args.profile}), simulated, not measured",
                "suites": suites,
                "overall": asdict(overall),
            },
        )


if __name__ == "__main__":
    sys.exit(main())
