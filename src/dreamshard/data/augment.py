"""Augmented tables and tasks for pretraining: wider than any one dataset.

A model shipped with the package must place tables it has never seen, on any number of
devices, with memory from loose to binding. The pretraining data therefore spans more
than the DLRM-like pool (``synthetic.generate_table_pool``): dims 4-256, rows 100 to
5e7, pooling factors 0.05 to 500 (some hot tables: few rows read hundreds of times per
sample), Zipf skews up to 1.5; tasks of 2 to 256 devices with
1.5 to 12 tables per device (at most 320 tables, so that pretraining stays within
minutes; the sum and max reductions carry the networks to more devices), and, for a
later pretraining stage, large tasks (:data:`LARGE_DEVICES`: 32 to 256 devices, at most
:data:`LARGE_MAX_TABLES` tables), the many-tables-on-many-devices regime that the small
tasks never reach (128 devices held at most 2.5 tables each there; with up to 1,024
devices and 2,500 tables the first pretraining iteration had not finished after 4
minutes on 2 cores, against 2-7 minutes per iteration with these); per-device
memory from 1.15x the even share of the task's bytes (binding) to the whole task
(loose), never below the largest table. A third of the tasks give all their tables one
dim (as DLRM-style models often do), the rest keep the pool's mixed dims.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dreamshard.constants import DEFAULT_BATCH_SIZE
from dreamshard.data.synthetic import expected_access_histograms
from dreamshard.data.tasks import fits_memory, make_devices
from dreamshard.errors import InputError
from dreamshard.types import TableSpec, Task

#: Embedding dims drawn (multiples of 4), with their weights.
DIMS: tuple[int, ...] = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
DIM_WEIGHTS: tuple[float, ...] = (1, 2, 1, 4, 2, 4, 2, 4, 2, 3, 1, 1)
#: log10 of the rows, uniform.
ROWS_LOG10_RANGE = (2.0, 7.7)
#: Share of one-hot tables (pooling 0.05-1.5, some ids missing); the rest log-normal
#: around 10, 0.05 to 500.
ONE_HOT_SHARE = 0.25
POOLING_MEDIAN = 10.0
POOLING_LOG_SIGMA = 1.6
POOLING_RANGE = (0.05, 500.0)
#: Share of "hot" tables: few rows (100-5,000) read many times per sample (pooling
#: 20-500), whose every row is touched thousands of times per batch.
HOT_SHARE = 0.06
SKEW_RANGE = (0.0, 1.5)
#: Devices per task and their weights: mostly small, some up to 256.
DEVICES: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256)
DEVICE_WEIGHTS: tuple[float, ...] = (3, 5, 4, 3, 2, 1, 0.5, 0.25)
TABLES_PER_DEVICE = (1.5, 12.0)
#: Most tables in one task (keeps the episodes of pretraining affordable).
MAX_TABLES_PER_TASK = 320
#: Devices of the large tasks and their weights, and their most tables.
LARGE_DEVICES: tuple[int, ...] = (32, 64, 128, 256)
LARGE_DEVICE_WEIGHTS: tuple[float, ...] = (1, 2, 2, 1)
LARGE_MAX_TABLES = 1200
#: Per-device memory: this many times the even share of the task's bytes, log-uniform
#: (1.15 binds; the upper end is as good as unlimited).
MEMORY_SLACK_RANGE = (1.15, 8.0)
#: Share of tasks whose tables all get one dim (drawn like a table's).
ONE_DIM_SHARE = 1 / 3


def augmented_table_pool(num_tables: int, seed: int, name_prefix: str = "a") -> list[TableSpec]:
    """``num_tables`` tables drawn from the augmented distributions (module docstring)."""
    if num_tables < 1:
        raise InputError(f"num_tables must be >= 1, got {num_tables}")
    rng = np.random.default_rng(seed)
    rows = np.rint(10.0 ** rng.uniform(*ROWS_LOG10_RANGE, num_tables))
    hot = rng.random(num_tables) < HOT_SHARE
    rows = np.where(hot, np.rint(10.0 ** rng.uniform(2.0, np.log10(5000), num_tables)), rows)
    weights = np.asarray(DIM_WEIGHTS) / sum(DIM_WEIGHTS)
    dims = rng.choice(np.asarray(DIMS), num_tables, p=weights)
    one_hot = rng.random(num_tables) < ONE_HOT_SHARE
    pooling = np.where(
        one_hot,
        np.exp(rng.uniform(np.log(0.05), np.log(1.5), num_tables)),
        rng.lognormal(np.log(POOLING_MEDIAN), POOLING_LOG_SIGMA, num_tables),
    )
    pooling = np.where(hot, np.exp(rng.uniform(np.log(20), np.log(500), num_tables)), pooling)
    pooling = np.clip(pooling, *POOLING_RANGE)
    skews = rng.uniform(*SKEW_RANGE, num_tables)
    active = np.maximum(np.rint(rows * 10.0 ** rng.uniform(-0.65, 0.0, num_tables)), 1)
    hists = expected_access_histograms(active, pooling, skews, DEFAULT_BATCH_SIZE)
    return [
        TableSpec(
            name=f"{name_prefix}{i}",
            rows=int(rows[i]),
            dim=int(dims[i]),
            pooling_factor=float(pooling[i]),
            access_hist=tuple(float(x) for x in hists[i]),
        )
        for i in range(num_tables)
    ]


def augmented_tasks(
    pool: list[TableSpec],
    num_tasks: int,
    seed: int,
    name_prefix: str = "pre",
    large: bool = False,
) -> list[Task]:
    """``num_tasks`` tasks of tables drawn from ``pool`` (module docstring; ``large``:
    the large tasks' devices and table limit); each fits its devices' memory
    (first-fit decreasing)."""
    rng = np.random.default_rng(seed)
    choices, weights = (LARGE_DEVICES, LARGE_DEVICE_WEIGHTS) if large else (DEVICES, DEVICE_WEIGHTS)
    probabilities = np.asarray(weights) / sum(weights)
    most = LARGE_MAX_TABLES if large else MAX_TABLES_PER_TASK
    tasks: list[Task] = []
    for k in range(num_tasks):
        num_devices = int(rng.choice(np.asarray(choices), p=probabilities))
        per_device = rng.uniform(*TABLES_PER_DEVICE)
        count = int(min(len(pool), most, max(2, round(num_devices * per_device))))
        tables = tuple(pool[i] for i in sorted(rng.choice(len(pool), count, replace=False)))
        if rng.random() < ONE_DIM_SHARE:
            dim = int(rng.choice(np.asarray(DIMS), p=np.asarray(DIM_WEIGHTS) / sum(DIM_WEIGHTS)))
            tables = tuple(replace(t, dim=dim) for t in tables)
        total = sum(t.size_bytes for t in tables)
        largest = max(t.size_bytes for t in tables)
        for _ in range(20):
            slack = float(np.exp(rng.uniform(*np.log(MEMORY_SLACK_RANGE))))
            memory = int(max(largest, min(total, slack * total / num_devices)))
            task = Task(f"{name_prefix}-{k}", tables, make_devices(num_devices, memory))
            if fits_memory(task):
                break
        else:
            task = Task(f"{name_prefix}-{k}", tables, make_devices(num_devices, total))
        tasks.append(task)
    return tasks


#: Heavy tables of the sharding benchmark (issue 13): pooling factors, dims and rows.
HEAVY_POOLING_RANGE = (100.0, 500.0)
HEAVY_DIMS: tuple[int, ...] = (64, 128, 256)
HEAVY_ROWS_LOG10_RANGE = (5.0, 7.7)


def with_heavy_tables(pool: list[TableSpec], share: float, seed: int) -> list[TableSpec]:
    """``pool`` with a share of its tables made heavy: pooling 100-500 (log-uniform),
    dim 64, 128 or 256, rows 1e5 to 5e7 (log-uniform), Zipf skew up to 1.5 over a random
    share of the rows; the others unchanged. A heavy table dominates a device's cost, so
    no table-wise placement balances it (the suite that column and row splits are for)."""
    if not 0.0 <= share <= 1.0:
        raise InputError(f"share of heavy tables must be in [0, 1], got {share}")
    rng = np.random.default_rng(seed)
    heavy = rng.random(len(pool)) < share
    rows = np.rint(10.0 ** rng.uniform(*HEAVY_ROWS_LOG10_RANGE, len(pool)))
    low, high = np.log(HEAVY_POOLING_RANGE)
    pooling = np.exp(rng.uniform(low, high, len(pool)))
    dims = rng.choice(np.asarray(HEAVY_DIMS), len(pool))
    skews = rng.uniform(*SKEW_RANGE, len(pool))
    active = np.maximum(np.rint(rows * 10.0 ** rng.uniform(-0.65, 0.0, len(pool))), 1)
    hists = expected_access_histograms(active, pooling, skews, DEFAULT_BATCH_SIZE)
    return [
        replace(
            t,
            rows=int(rows[i]),
            dim=int(dims[i]),
            pooling_factor=float(pooling[i]),
            access_hist=tuple(float(x) for x in hists[i]),
        )
        if heavy[i]
        else t
        for i, t in enumerate(pool)
    ]
