"""Helpers the benchmark scripts share: result lines, random placements, suites."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dreamshard.data.tasks import SuiteConfig, generate_suite
from dreamshard.types import Placement, TableSpec, Task

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
