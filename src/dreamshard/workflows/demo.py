"""The built-in main job (``make demo``): a DLRM-like pool, train/test suites from its
disjoint halves, the packaged pretrained DreamShard model fine-tuned on real FBGEMM
measurements of the training tasks (under 100 of them), then every placer measured on
the unseen test tasks (:func:`run_demo`; ``dreamshard demo`` prints it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dreamshard.backends import BackendOptions, make_backend
from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tables import save_tables
from dreamshard.data.tasks import SuiteConfig, TaskSuite, generate_suite, save_suite
from dreamshard.fileio import write_json
from dreamshard.method.train import TrainConfig
from dreamshard.placers.registry import COMPARISON_PLACERS, PlacerOptions
from dreamshard.units import parse_memory
from dreamshard.workflows.experiment import (
    Comparison,
    Log,
    Progress,
    TrainedModel,
    compare_placers,
    train_model,
)

#: Training measures more placements, each at lower precision, than the evaluation:
#: time windows and timed calls per window of its measurements.
TRAIN_WINDOWS, TRAIN_CALLS_PER_WINDOW = 4, 6


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
        placers: Placers compared.
        train: Fine-tuning (or training) settings.
        init: The model fine-tuned (``"packaged"``: the packaged pretrained one; None:
            train fresh networks, the paper's setting).
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
    init: str | None = "packaged"


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


@dataclass(frozen=True)
class DemoResult:
    """What the demo did and wrote.

    Attributes:
        out_dir: Its folder.
        suite_path: The suite file (train and test tasks).
        suite: The suite.
        trained: The trained model (in ``out_dir/model``) and its training history.
        comparison: Every placer measured on the test tasks (TorchRec's estimates too,
            when the torchrec placer is one of them).
        evaluation_path: Where the comparison was written (``out_dir/evaluation.json``).
    """

    out_dir: Path
    suite_path: Path
    suite: TaskSuite
    trained: TrainedModel
    comparison: Comparison
    evaluation_path: Path


def run_demo(
    config: DemoConfig,
    log: Log | None = None,
    progress: Progress | None = None,
    step: Callable[[str, str], None] | None = None,
) -> DemoResult:
    """Run the main job: write the pool and suite, train DreamShard on the training
    tasks, then measure every placer of ``config.placers`` on the test tasks and write
    ``evaluation.json``.

    Args:
        config: Demo settings.
        log: Receives a line for every file written and every training step.
        progress: Shows the evaluation's progress over the test tasks.
        step: Called with the title and a short description of each of the two steps
            (train, evaluate) as it starts; default: one line to ``log``.
    """
    say: Log = log if log is not None else (lambda _line: None)

    def announce(title: str, detail: str) -> None:
        if step is not None:
            step(title, detail)
        else:
            say(f"{title} {detail}" if detail else title)

    out = Path(config.out_dir)
    suite_path, suite = prepare_demo(config)
    say(f"wrote {out / 'tables.json'}, {suite_path} and {out / 'config.json'}")
    train_options = BackendOptions(
        batch_size=config.batch_size,
        seed=config.seed,
        windows=TRAIN_WINDOWS,
        calls_per_window=TRAIN_CALLS_PER_WINDOW,
    )
    eval_options = BackendOptions(batch_size=config.batch_size, seed=config.seed)
    model_dir = out / "model"
    what = "fine-tuning the packaged DreamShard model" if config.init else "training DreamShard"
    announce(f"1. {what}", "(collect measurements, fit, improve)")
    trained = train_model(
        config.train,
        suite.train,
        make_backend(config.backend, train_options),
        model_dir,
        resume=False,
        log=log,
        init=config.init,
        profile=train_options.profile,
    )
    announce("2. evaluating every placer on the unseen test tasks", "")
    comparison = compare_placers(
        suite.test,
        config.placers,
        PlacerOptions(seed=config.seed, model_dir=str(model_dir)),
        config.backend,
        eval_options,
        progress,
    )
    evaluation_path = out / "evaluation.json"
    write_json(
        evaluation_path,
        comparison.to_json({"demo": str(out / "config.json"), **vars(eval_options)}),
    )
    return DemoResult(out, suite_path, suite, trained, comparison, evaluation_path)
