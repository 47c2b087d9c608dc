"""Commands that train DreamShard: ``train``, and ``demo`` (train, then compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dreamshard.cli.options import BackendChoice, BackendOpt, SeedOpt, backend_options
from dreamshard.cli.output import out_console, print_comparison, print_line, progress
from dreamshard.constants import DEFAULT_SEED
from dreamshard.data.tasks import load_suite
from dreamshard.errors import InputError

DeviceErrorOpt = Annotated[
    str,
    typer.Option(
        "--device-error",
        help="What a device's error in the cost network's loss is divided by: "
        "'placement' (its placement's measured cost) or 'device' (its own).",
    ),
]


ShardsOpt = Annotated[
    int,
    typer.Option(
        "--shards",
        help="Also measure this many random single-device shards per iteration and fit "
        "the cost network's computation heads on them (made independent of the task "
        "context for it); 0: none.",
    ),
]


def _checked_shards(value: int) -> int:
    """``value`` if it is a shard count (one line naming the flag if not)."""
    if value < 0:
        raise InputError(f"--shards must be >= 0, got {value}")
    return value


def _checked_device_error(value: str) -> str:
    """``value`` if it names a device-error mode (one line naming the flag if not)."""
    from dreamshard.method.costnet import DEVICE_ERRORS

    if value not in DEVICE_ERRORS:
        raise InputError(f"--device-error must be one of {', '.join(DEVICE_ERRORS)}, got {value!r}")
    return value


@backend_options(windows=4, calls=6)
def train(
    *,
    tasks: Annotated[Path, typer.Option("--tasks", help="Suite file; its train split is used.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder (checkpoints land here).")],
    backend: BackendChoice,
    iterations: Annotated[int, typer.Option("--iterations", help="Training iterations.")] = 10,
    measurements: Annotated[
        int, typer.Option("--measurements", help="Backend measurements per iteration.")
    ] = 10,
    cost_steps: Annotated[
        int, typer.Option("--cost-steps", help="Cost-network steps per iteration.")
    ] = 300,
    cost_batch: Annotated[int, typer.Option("--cost-batch", help="Cost-network batch size.")] = 64,
    policy_batches: Annotated[
        int, typer.Option("--policy-batches", help="Policy updates per iteration.")
    ] = 10,
    episodes: Annotated[int, typer.Option("--episodes", help="Episodes per policy update.")] = 10,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (decays to 0).")] = 5e-4,
    entropy: Annotated[float, typer.Option("--entropy", help="Entropy bonus weight.")] = 1e-3,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from a checkpoint in --out.")
    ] = True,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Fine-tune this model instead of training fresh networks: 'packaged' (the "
            "pretrained model of --profile) or a model folder.",
        ),
    ] = None,
    device_error: DeviceErrorOpt = "placement",
    shards: ShardsOpt = 0,
) -> None:
    """Train DreamShard on a suite's training tasks (METHOD.md section 4)."""
    from dreamshard.backends import make_backend
    from dreamshard.method.train import TrainConfig
    from dreamshard.workflows.experiment import train_model

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    device_error = _checked_device_error(device_error)
    shards = _checked_shards(shards)
    suite = load_suite(tasks)
    if not suite.train:
        raise InputError(f"{tasks}: the train split has no tasks")
    config = TrainConfig(
        iterations=iterations,
        measurements_per_iteration=measurements,
        cost_steps=cost_steps,
        cost_batch_size=cost_batch,
        policy_batches=policy_batches,
        episodes_per_batch=episodes,
        learning_rate=lr,
        entropy_weight=entropy,
        seed=backend.seed,
        device_error=device_error,
        shard_measurements=shards,
    )
    cost_backend = make_backend(backend.name, backend.options)
    train_model(
        config,
        suite.train,
        cost_backend,
        out,
        resume=resume,
        log=print_line,
        init=init,
        profile=backend.options.profile,
    )


def pretrain(
    out: Annotated[Path, typer.Option("--out", help="Model folder (checkpoints land here).")],
    profile: Annotated[
        str, typer.Option("--profile", help="Hardware profile of the simulator.")
    ] = "cpu-zen4",
    iterations: Annotated[
        int | None, typer.Option("--iterations", help="Training iterations (default 30).")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Continue from this model ('packaged' or a model folder): a later stage.",
        ),
    ] = None,
    dlrm_tasks: Annotated[
        int,
        typer.Option(
            "--dlrm-tasks",
            help="Also train on this many tasks of DLRM-like tables (3,000-table pool).",
        ),
    ] = 0,
    large_tasks: Annotated[
        int,
        typer.Option(
            "--large-tasks",
            help="Also train on this many large tasks (32-256 devices, up to 1,200 tables).",
        ),
    ] = 0,
    train_seed: Annotated[
        int | None, typer.Option("--train-seed", help="Seed of training (default 2026).")
    ] = None,
    cost_steps: Annotated[
        int | None,
        typer.Option("--cost-steps", help="Cost-network steps per iteration (default 400)."),
    ] = None,
    warmup_tasks: Annotated[
        int,
        typer.Option(
            "--warmup-tasks",
            help="Before the first iteration, measure this many training tasks densely "
            "(near-optimal placements from a search on the simulator's own cost, the "
            "placer's, the rules', perturbations).",
        ),
    ] = 0,
    device_error: DeviceErrorOpt = "placement",
    shards: ShardsOpt = 0,
) -> None:
    """Pretrain a model on augmented simulated tasks (how the packaged models are made;
    about 30 minutes on 2 cores per stage; see docs/architecture.md)."""
    from dataclasses import replace

    from dreamshard.workflows.pretrain import PretrainConfig
    from dreamshard.workflows.pretrain import pretrain as run_pretrain

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    counts = (
        ("--dlrm-tasks", dlrm_tasks), ("--large-tasks", large_tasks),
        ("--warmup-tasks", warmup_tasks),
    )  # fmt: skip
    for flag, count in counts:
        if count < 0:
            raise InputError(f"{flag} must be >= 0, got {count}")
    config = PretrainConfig(
        profile=profile, dlrm_tasks=dlrm_tasks, large_tasks=large_tasks, init=init
    )
    if iterations is not None:
        if iterations < 1:
            raise InputError(f"--iterations must be at least 1, got {iterations}")
        config = replace(config, train=replace(config.train, iterations=iterations))
    if train_seed is not None:
        config = replace(config, train=replace(config.train, seed=train_seed))
    if cost_steps is not None:
        if cost_steps < 1:
            raise InputError(f"--cost-steps must be at least 1, got {cost_steps}")
        config = replace(config, train=replace(config.train, cost_steps=cost_steps))
    train_config = replace(
        config.train,
        warmup_tasks=warmup_tasks,
        device_error=_checked_device_error(device_error),
        shard_measurements=_checked_shards(shards),
    )
    config = replace(config, train=train_config)
    run_pretrain(config, out, log=print_line)
    out_console.print(f"wrote {escape(str(out))} (how it was made: provenance.json)")


def _print_step(title: str, detail: str) -> None:
    out_console.print(f"[bold]{escape(title)}[/]" + (f" {escape(detail)}" if detail else ""))


def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's files.")] = Path(
        "runs/demo"
    ),
    backend: BackendOpt = "fbgemm",
    num_test: Annotated[int, typer.Option("--num-test", help="Test tasks to evaluate.")] = 8,
    seed: SeedOpt = DEFAULT_SEED,
) -> None:
    """The main job: train DreamShard on real measurements, compare on unseen tasks."""
    from dreamshard.workflows.demo import DemoConfig, run_demo

    if num_test < 1:
        raise InputError(f"--num-test must be at least 1, got {num_test}")
    config = DemoConfig(out_dir=str(out), backend=backend, num_test_tasks=num_test, seed=seed)
    out_console.print(
        f"[bold]DreamShard demo[/]: {config.num_tables} DLRM-like tables (dim {config.dim}, "
        f"rows <= {config.max_rows:,}); {config.num_train_tasks} training and {num_test} unseen "
        f"test tasks of {config.tables_per_task} tables on {config.num_devices} devices with "
        f"{config.memory} each; measured on {escape(backend)}"
    )
    result = run_demo(config, log=print_line, progress=progress, step=_print_step)
    comparison = result.comparison
    print_comparison(comparison.evaluation, comparison.torchrec_estimates)
    out_console.print(f"wrote {escape(str(result.evaluation_path))}")
