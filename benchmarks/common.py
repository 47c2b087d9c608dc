"""Helpers the benchmark scripts share: result lines, random placements, suites, the
real-kernel suite of issue 11 and its paired comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from dreamshard.backends.sim.model import SimBackend
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import SuiteConfig, TaskSuite, generate_suite
from dreamshard.evaluation.evaluate import Evaluation
from dreamshard.placers.oracle import OraclePlacer
from dreamshard.types import Placement, TableSpec, Task
from dreamshard.units import parse_memory

GB = 10**9


def line(name: str, value: str, target: str = "", met: bool | None = None) -> None:
    """One result: name, value, target and whether it is met."""
    verdict = "" if met is None else ("MET" if met else "NOT MET")
    print(
        f"{name:<62} {value:>16}   {('target ' + target) if target else '':<16} {verdict}",
        flush=True,
    )


def random_placements(task: Task, count: int, seed: int) -> list[Placement]:
    """``count`` uniformly random placements (memory not checked)."""
    rng = np.random.default_rng(seed)
    return [
        Placement(tuple(int(d) for d in rng.integers(task.num_devices, size=task.num_tables)))
        for _ in range(count)
    ]


def suite_tasks(
    pool: Sequence[TableSpec],
    num_tables: int,
    num_devices: int,
    memory_gb: float,
    num: int,
    seed: int,
) -> tuple[list[Task], list[Task]]:
    """``num`` train and ``num`` test tasks from disjoint halves of ``pool``."""
    config = SuiteConfig(
        num_train=num,
        num_test=num,
        min_tables=num_tables,
        max_tables=num_tables,
        num_devices=num_devices,
        memory_bytes=int(memory_gb * GB),
        seed=seed,
    )
    suite = generate_suite(pool, config)
    return list(suite.train), list(suite.test)


#: The pool seed of the real-kernel suite (unlike the project's and the pretraining's).
REAL_POOL_SEED = 4242


def real_suite(
    tables: int, devices: int, memory: str, row_cap: int, num_train: int, num_test: int
) -> TaskSuite:
    """The real-kernel suite of issue 11 (``bench_real.py``, ``bench_real_search.py``):
    tasks of ``tables`` dim-16 tables from the DLRM-like pool of seed 4242, rows capped
    at ``row_cap``, on ``devices`` devices of ``memory`` each."""
    pool = generate_table_pool(856, seed=REAL_POOL_SEED, dim=16, max_rows=row_cap)
    config = SuiteConfig(
        num_train=num_train,
        num_test=num_test,
        min_tables=tables,
        max_tables=tables,
        num_devices=devices,
        memory_bytes=parse_memory(memory, "--memory"),
        seed=99,
    )
    return generate_suite(pool, config)


class SimOracle:
    """The simulator ORACLE's placement (searched on sim), to be measured for real."""

    name = "sim-oracle"

    def __init__(self) -> None:
        self._oracle = OraclePlacer(SimBackend())

    def place(self, task: Task) -> Placement:
        return self._oracle.place(task)


def print_paired(evaluation: Evaluation, baselines: Sequence[str]) -> dict[str, list[Any]]:
    """Print every placer against each baseline (geomean ratio, bootstrap 95% CI,
    wins/losses) and return the comparisons by baseline."""
    paired: dict[str, list[Any]] = {}
    for baseline in baselines:
        print(f"paired vs {baseline} (geomean ratio, 95% bootstrap CI, wins/losses):")
        paired[baseline] = [asdict(c) for c in evaluation.paired(baseline)]
        for c in paired[baseline]:
            print(
                f"  {c['placer']:22s} {c['geomean_ratio']:.4f} "
                f"[{c['ci_low']:.4f}, {c['ci_high']:.4f}] {c['wins']}/{c['losses']}"
            )
    return paired
