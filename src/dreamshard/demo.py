"""The built-in main job (``make demo``): a DLRM-like pool, train/test suites from its
disjoint halves, DreamShard trained on real FBGEMM measurements, then every placer
measured on the unseen test tasks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED
from dreamshard.fileio import write_json
from dreamshard.placers import COMPARISON_PLACERS
from dreamshard.synthetic import generate_table_pool
from dreamshard.tables import save_tables
from dreamshard.tasks import SuiteConfig, TaskSuite, generate_suite, save_suite
from dreamshard.train import TrainConfig
from dreamshard.units import parse_memory


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the main job; defaults finish in a few minutes on 2 cores.

    Attributes:
        out_dir: Folder for every file the demo writes.
        num_tables: Size of the synthetic pool (856 like Meta's public DLRM dataset).
        max_rows: Cap on rows per table, so the real measurements fit in RAM and time.
        dim: Embedding dim of every table (the paper's DLRM setting is 16).
        num_train_tasks: Training tasks (tables from the other half of the pool).
        num_test_tasks: Test tasks evaluated.
        tables_per_task: Tables per task.
        num_devices: Devices per task.
        memory: Memory per device; small enough to bind for some tasks.
        backend: Cost backend the placements are measured on.
        batch_size: Global batch size.
        seed: Seed of the pool, the suite and the ids.
    """

    out_dir: str = "runs/demo"
    num_tables: int = 856
    max_rows: int = 1_000_000
    dim: int = 16
    num_train_tasks: int = 20
    num_test_tasks: int = 8
    tables_per_task: int = 20
    num_devices: int = 4
    memory: str = "160MB"
    backend: str = "fbgemm"
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = DEFAULT_SEED
    placers: tuple[str, ...] = (*COMPARISON_PLACERS, "dreamshard")
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            iterations=8, measurements_per_iteration=12, policy_batches=100
        )
    )


def prepare_demo(config: DemoConfig) -> tuple[Path, TaskSuite]:
    """Write the pool, the suite and the resolved config; return the suite file and suite."""
    out = Path(config.out_dir)
    pool = generate_table_pool(
        num_tables=config.num_tables,
        seed=config.seed,
        dim=config.dim,
        max_rows=config.max_rows,
        batch_size=config.batch_size,
    )
    save_tables(out / "tables.json", pool)
    suite = generate_suite(
        pool,
        SuiteConfig(
            num_train=config.num_train_tasks,
            num_test=config.num_test_tasks,
            min_tables=config.tables_per_task,
            max_tables=config.tables_per_task,
            num_devices=config.num_devices,
            memory_bytes=parse_memory(config.memory, "memory"),
            seed=config.seed,
        ),
    )
    suite_path = out / "tasks.json"
    save_suite(suite_path, suite)
    write_json(out / "config.json", asdict(config))
    return suite_path, suite
