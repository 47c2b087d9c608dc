"""The ``dreamshard`` command line: parses, calls the library, prints.

Every error the package raises on purpose (bad input, infeasible task, backend
trouble) ends as one line on stderr and exit code 2, with no traceback and no partial
output file.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dreamshard import __version__
from dreamshard.backends import BACKEND_NAMES, BackendOptions, make_backend
from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED
from dreamshard.errors import DreamShardError, InputError, ServedAsWorker
from dreamshard.evaluate import Evaluation, evaluate
from dreamshard.fileio import write_json
from dreamshard.placers import COMPARISON_PLACERS, PlacerOptions, make_placer
from dreamshard.tables import load_tables, save_tables
from dreamshard.tasks import (
    SuiteConfig,
    generate_suite,
    load_suite,
    make_devices,
    make_task,
    save_suite,
)
from dreamshard.types import CostBackend, PlacementCost, Placer, Task
from dreamshard.units import format_bytes, parse_memory

if TYPE_CHECKING:  # torch-heavy modules load only when a command needs them
    from dreamshard.model import DreamShardModel
    from dreamshard.train import TrainConfig

app = typer.Typer(
    help="DreamShard: place embedding tables on devices, measured on real FBGEMM kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out_console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

#: Exit code of every handled error (bad input, infeasible task, backend trouble).
EXIT_USAGE = 2


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the package's errors into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ServedAsWorker:
            # A non-zero torchrun rank of the distributed backend: rank 0 reports.
            raise typer.Exit(0) from None
        except DreamShardError as err:
            message = escape(str(err))  # file names like data[v2].csv are not markup
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        finally:
            # Shut down distributed-backend worker groups the command started (the module
            # is only loaded, with torch, if one was used).
            distributed = sys.modules.get("dreamshard.backends.distributed")
            if distributed is not None:
                distributed.close_all()

    return wrapper


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more detail.")] = False,
) -> None:
    """Set up logging for every command."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )


@app.command()
def version() -> None:
    """Print the package version."""
    out_console.print(__version__)


# -- options shared by several commands ------------------------------------------------

BackendOpt = Annotated[
    str, typer.Option("--backend", help=f"Cost backend: {', '.join(BACKEND_NAMES)}.")
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Global batch size (samples).")]
ProfileOpt = Annotated[
    str, typer.Option("--profile", help="Simulator profile (packaged name or JSON path); sim only.")
]
RowCapOpt = Annotated[
    int | None,
    typer.Option("--row-cap", help="Run tables with at most this many rows (logged); fbgemm only."),
]
WindowsOpt = Annotated[
    int, typer.Option("--windows", help="Time windows of repetitions; fbgemm only.")
]
CallsOpt = Annotated[
    int, typer.Option("--calls", help="Timed calls per shard per window; fbgemm only.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of everything random.")]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", help="Where fused operators run: cpu or cuda; fbgemm and distributed."
    ),
]
KernelOpt = Annotated[
    str | None,
    typer.Option(
        "--kernel",
        help="fbgemm or torch-fused (default: FBGEMM where it runs on the device, else "
        "torch-fused); fbgemm and distributed.",
    ),
]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Write the results as JSON here.")]
ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", help="Trained DreamShard model folder (placer dreamshard)."),
]
SamplesOpt = Annotated[
    int,
    typer.Option(
        "--samples", help="dreamshard: also sample K placements, keep the cost network's best."
    ),
]


def _backend_options(
    batch_size: int,
    seed: int,
    profile: str,
    row_cap: int | None,
    windows: int,
    calls: int,
    device: str = "cpu",
    kernel: str | None = None,
) -> BackendOptions:
    if row_cap is not None and row_cap < 100:
        raise InputError(f"--row-cap must be at least 100, got {row_cap}")
    return BackendOptions(
        batch_size=batch_size,
        seed=seed,
        profile=profile,
        row_cap=row_cap,
        windows=windows,
        calls_per_window=calls,
        device=device,
        kernel=kernel,
    )


def _progress_lines(description: str, lines: int, unit: str = "") -> Callable[[int, int], None]:
    """A (done, total) callback printing a progress line on stderr about ``lines`` times."""
    start = time.perf_counter()
    shown = [-1]

    def report(done: int, total: int) -> None:
        step = max(1, total // lines)
        if done == total or done // step > shown[0]:
            shown[0] = done // step
            err_console.print(
                f"{description}: {done}/{total}{unit} ({time.perf_counter() - start:.0f} s)",
                highlight=False,
            )

    return report


@contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr; yields a (done, total) callback.

    Off a terminal (CI logs, pipes) a bar would not render, so progress is printed as a
    line at every tenth of the work instead.
    """
    if not err_console.is_terminal:
        yield _progress_lines(description, lines=10)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        handle = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(handle, completed=done, total=total)

        yield update


def _placer_options(
    seed: int,
    model: Path | None,
    samples: int,
    backend: str | None = None,
    backend_options: BackendOptions | None = None,
) -> PlacerOptions:
    # The backend is for placers that search on measured costs (rnn).
    return PlacerOptions(
        seed=seed,
        model_dir=str(model) if model else None,
        samples=samples,
        backend=backend,
        backend_options=backend_options,
    )


def _parse_count_range(text: str, what: str) -> tuple[int, int]:
    """``"50"`` -> (50, 50); ``"20-40"`` -> (20, 40)."""
    parts = text.split("-")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"{what}: expected N or MIN-MAX, got {text!r}") from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise InputError(f"{what}: expected N or MIN-MAX, got {text!r}")


def _check_out(out: Path | None) -> None:
    if out is not None and out.exists() and out.is_dir():
        raise InputError(f"--out {out}: is a folder, expected a file path")


# -- commands ---------------------------------------------------------------------------


@app.command("gen-tables")
@handle_errors
def gen_tables(
    out: Annotated[Path, typer.Option("--out", help="Table file to write (.json or .csv).")],
    num: Annotated[int, typer.Option("--num", help="Number of tables.")] = 856,
    seed: SeedOpt = DEFAULT_SEED,
    dim: Annotated[int, typer.Option("--dim", help="Embedding dim of every table.")] = 16,
    dims: Annotated[
        str | None, typer.Option("--dims", help="Comma-separated dims to draw from, e.g. 8,16,32.")
    ] = None,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", help="Cap on rows per table.")
    ] = None,
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
) -> None:
    """Generate a DLRM-like table pool (like Meta's public dataset: 856 tables)."""
    from dreamshard.synthetic import generate_table_pool

    if num < 1:
        raise InputError(f"--num must be at least 1, got {num}")
    dim_list = None
    if dims is not None:
        try:
            dim_list = [int(d) for d in dims.split(",")]
        except ValueError:
            raise InputError(f"--dims: expected comma-separated integers, got {dims!r}") from None
    for d in dim_list or [dim]:
        if d <= 0 or d % 4:
            raise InputError(f"dim {d}: must be a positive multiple of 4 for FBGEMM")
    if max_rows is not None and max_rows < 100:
        raise InputError(f"--max-rows must be at least 100, got {max_rows}")
    if out.suffix.lower() not in (".json", ".csv"):
        raise InputError(f"--out {out}: use a .json or .csv file name")
    start = time.perf_counter()
    pool = generate_table_pool(
        num_tables=num, seed=seed, dim=dim, dims=dim_list, max_rows=max_rows, batch_size=batch_size
    )
    save_tables(out, pool)
    total = sum(t.size_bytes for t in pool)
    out_console.print(
        f"wrote {len(pool)} tables ({format_bytes(total)} of weights) to {out} "
        f"in {time.perf_counter() - start:.2f} s"
    )


@app.command("tables-from-data")
@handle_errors
def tables_from_data(
    data: Annotated[Path, typer.Argument(help="DLRM dataset file (.pt, or .pt.gz).")],
    out: Annotated[Path, typer.Option("--out", help="Table file to write (.json or .csv).")],
    dim: Annotated[int, typer.Option("--dim", help="Embedding dim of every table.")] = 16,
    tables: Annotated[
        str | None,
        typer.Option("--tables", help="Tables to take: N, N-M or a comma list (default: all)."),
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="Weight precision: fp32 or fp16.")] = "fp32",
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
    seed: SeedOpt = DEFAULT_SEED,
) -> None:
    """Tables from a public DLRM dataset file; backends then measure them on its real ids."""
    from dreamshard.dlrm_data import load_dlrm_file, parse_table_selection, tables_from_dlrm

    if dim <= 0 or dim % 4:
        raise InputError(f"--dim {dim}: must be a positive multiple of 4 for FBGEMM")
    if dtype not in ("fp32", "fp16"):
        raise InputError(f"--dtype must be fp32 or fp16, got {dtype!r}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if out.suffix.lower() not in (".json", ".csv"):
        raise InputError(f"--out {out}: use a .json or .csv file name")
    _check_out(out)
    start = time.perf_counter()
    loaded = load_dlrm_file(data)
    chosen = parse_table_selection(tables, loaded.num_tables) if tables is not None else None
    with _progress(f"reading tables of {data.name}") as progress:
        specs = tables_from_dlrm(
            data, chosen, dim=dim, dtype=dtype, batch_size=batch_size, seed=seed, progress=progress
        )
    save_tables(out, specs)
    out_console.print(
        f"wrote {len(specs)} of {loaded.num_tables} tables (data batch {loaded.batch_size}, "
        f"mean pooling {sum(t.pooling_factor for t in specs) / len(specs):.2f}, "
        f"{format_bytes(sum(t.size_bytes for t in specs))} of weights at dim {dim}) to "
        f"{escape(str(out))} in {time.perf_counter() - start:.2f} s"
    )


@app.command("gen-tasks")
@handle_errors
def gen_tasks(
    tables: Annotated[Path, typer.Option("--tables", help="Table pool file.")],
    out: Annotated[Path, typer.Option("--out", help="Suite file to write (.json).")],
    num_train: Annotated[int, typer.Option("--num-train", help="Training tasks.")] = 50,
    num_test: Annotated[int, typer.Option("--num-test", help="Test tasks.")] = 50,
    tables_per_task: Annotated[
        str, typer.Option("--tables-per-task", help="Tables per task: N or MIN-MAX.")
    ] = "50",
    devices: Annotated[int, typer.Option("--devices", help="Devices per task.")] = 4,
    memory: Annotated[str, typer.Option("--memory", help="Memory per device, e.g. 5GB.")] = "5GB",
    seed: SeedOpt = DEFAULT_SEED,
) -> None:
    """Draw train and test tasks from disjoint halves of a table pool."""
    pool = load_tables(tables)
    low, high = _parse_count_range(tables_per_task, "--tables-per-task")
    if num_train + num_test < 1:
        raise InputError("--num-train and --num-test: ask for at least one task")
    if devices < 1:
        raise InputError(f"--devices must be at least 1, got {devices}")
    config = SuiteConfig(
        num_train=num_train,
        num_test=num_test,
        min_tables=low,
        max_tables=high,
        num_devices=devices,
        memory_bytes=parse_memory(memory, "--memory"),
        seed=seed,
    )
    suite = generate_suite(pool, config)
    save_suite(out, suite)
    out_console.print(
        f"wrote {len(suite.train)} train and {len(suite.test)} test tasks "
        f"({tables_per_task} tables on {devices} devices of {memory}) to {out}"
    )


@app.command()
@handle_errors
def place(
    tables: Annotated[Path, typer.Option("--tables", help="Table file (.json or .csv).")],
    devices: Annotated[int, typer.Option("--devices", help="Number of devices.")],
    memory: Annotated[str, typer.Option("--memory", help="Memory per device, e.g. 5GB.")],
    placer: Annotated[str, typer.Option("--placer", help="Placer name.")] = "size-lookup",
    backend: BackendOpt = "fbgemm",
    out: OutOpt = None,
    seed: SeedOpt = DEFAULT_SEED,
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
    profile: ProfileOpt = "cpu-zen4",
    row_cap: RowCapOpt = None,
    windows: WindowsOpt = 8,
    calls: CallsOpt = 8,
    model: ModelOpt = None,
    samples: SamplesOpt = 0,
    device: DeviceOpt = "cpu",
    kernel: KernelOpt = None,
) -> None:
    """Place one task and print the placement with its per-device stage costs."""
    _check_out(out)
    task = make_task(
        tables.stem, load_tables(tables), make_devices(devices, parse_memory(memory, "--memory"))
    )
    backend_options = _backend_options(
        batch_size, seed, profile, row_cap, windows, calls, device=device, kernel=kernel
    )
    chosen = make_placer(placer, _placer_options(seed, model, samples, backend, backend_options))
    start = time.perf_counter()
    placement = chosen.place(task)
    place_ms = (time.perf_counter() - start) * 1e3
    with _progress(f"measuring on {backend}") as progress:
        cost_backend = make_backend(backend, backend_options, progress)
        (cost,) = cost_backend.measure(task, [placement])
    _print_placement(task, placement.device_of, cost, chosen.name, place_ms)
    if out is not None:
        write_json(
            out,
            {
                "task": task.name,
                "placer": chosen.name,
                "backend": cost_backend.name,
                "tables_file": str(tables),
                "devices": [{"name": d.name, "memory_bytes": d.memory_bytes} for d in task.devices],
                "placement": placement.to_names(task),
                "device_of": list(placement.device_of),
                "cost_ms": cost.cost_ms,
                "rel_spread": cost.rel_spread,
                "per_device": [vars(c) for c in cost.per_device],
                "place_time_ms": place_ms,
            },
        )
        out_console.print(f"wrote {escape(str(out))}")


@app.command()
@handle_errors
def export(
    placement: Annotated[
        Path, typer.Option("--placement", help="Placement file written by `place --out`.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Plan file to write (.json).")],
    tables: Annotated[
        Path | None,
        typer.Option(
            "--tables",
            help="Table file the placement was made for (default: the placement's "
            "'tables_file'). Its rows and dims go into the plan, so loading it for another "
            "model fails.",
        ),
    ] = None,
    module_path: Annotated[
        str,
        typer.Option(
            "--module-path",
            help="Path of the EmbeddingBagCollection in the model given to "
            "DistributedModelParallel, e.g. sparse.ebc (default: the model is the collection).",
        ),
    ] = "",
) -> None:
    """Export a placement as a TorchRec plan file (table-wise, fused kernel).

    Device k of the placement becomes rank k. Load the plan in the training job with
    dreamshard.torchrec_plan.load_sharding_plan(FILE, model, world_size) and pass it to
    DistributedModelParallel(model, plan=...).
    """
    from dreamshard.torchrec_plan import plan_from_placement_file, save_plan

    _check_out(out)
    spec = plan_from_placement_file(placement, tables, module_path)
    save_plan(out, spec)
    (tables_planned,) = spec.modules.values()
    out_console.print(
        f"wrote {escape(str(out))}: {len(tables_planned)} tables on {spec.world_size} ranks "
        f"(module {escape(module_path) or '<root>'})"
    )


def _print_placement(
    task: Task, device_of: Sequence[int], cost: PlacementCost, placer: str, place_ms: float
) -> None:
    table = Table(title=f"{placer} placement of {task.name} ({cost.backend})")
    for column in (
        "device",
        "tables",
        "memory",
        "fwd comp",
        "fwd comm",
        "bwd comm",
        "bwd comp",
        "total ms",
    ):
        table.add_column(column, justify="left" if column in ("device", "tables") else "right")
    for d, (device, stage) in enumerate(zip(task.devices, cost.per_device, strict=True)):
        names = [t.name for t, dd in zip(task.tables, device_of, strict=True) if dd == d]
        used = sum(
            task.table_memory_bytes(t)
            for t, dd in zip(task.tables, device_of, strict=True)
            if dd == d
        )
        shown = ", ".join(names[:6]) + (f", ... ({len(names)})" if len(names) > 6 else "")
        table.add_row(
            device.name,
            shown,
            format_bytes(used),
            f"{stage.fwd_comp_ms:.3f}",
            f"{stage.fwd_comm_ms:.3f}",
            f"{stage.bwd_comm_ms:.3f}",
            f"{stage.bwd_comp_ms:.3f}",
            f"{stage.total_ms:.3f}",
        )
    out_console.print(table)
    spread = f" (spread ±{cost.rel_spread * 100:.1f}%)" if cost.rel_spread is not None else ""
    out_console.print(f"placement cost: {cost.cost_ms:.3f} ms{spread}; placed in {place_ms:.1f} ms")


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    tasks: Annotated[Path, typer.Option("--tasks", help="Suite file from gen-tasks.")],
    split: Annotated[str, typer.Option("--split", help="Which split: test or train.")] = "test",
    placers: Annotated[
        str, typer.Option("--placers", help="Comma-separated placer names.")
    ] = ",".join(COMPARISON_PLACERS),
    backend: BackendOpt = "fbgemm",
    out: OutOpt = None,
    max_tasks: Annotated[
        int | None, typer.Option("--max-tasks", help="Evaluate only the first N tasks.")
    ] = None,
    seed: SeedOpt = DEFAULT_SEED,
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
    profile: ProfileOpt = "cpu-zen4",
    row_cap: RowCapOpt = None,
    windows: WindowsOpt = 8,
    calls: CallsOpt = 8,
    model: ModelOpt = None,
    samples: SamplesOpt = 0,
    device: DeviceOpt = "cpu",
    kernel: KernelOpt = None,
) -> None:
    """Compare placers on a suite's tasks, measured on one backend."""
    _check_out(out)
    suite = load_suite(tasks)
    chosen_tasks = list(suite.split(split))[: max_tasks if max_tasks is not None else None]
    if not chosen_tasks:
        raise InputError(f"{tasks}: split {split!r} has no tasks")
    names = [n.strip() for n in placers.split(",") if n.strip()]
    if len(set(names)) != len(names):
        raise InputError(f"--placers: a placer is named twice in {placers!r}")
    options = _backend_options(
        batch_size, seed, profile, row_cap, windows, calls, device=device, kernel=kernel
    )
    options_ = _placer_options(seed, model, samples, backend, options)
    placer_objs = [make_placer(n, options_) for n in names]
    result = run_evaluation(chosen_tasks, placer_objs, backend, options)
    print_evaluation(result)
    estimates = (
        print_torchrec_estimates(result, chosen_tasks, options.batch_size)
        if "torchrec" in names
        else None
    )
    if out is not None:
        payload = result.to_json()
        payload["config"] = {"tasks_file": str(tasks), "split": split, **vars(options)}
        if estimates is not None:
            payload["torchrec_estimates"] = estimates
        write_json(out, payload)
        out_console.print(f"wrote {escape(str(out))}")


def run_evaluation(
    tasks: Sequence[Task], placers: Sequence[Placer], backend: str, options: BackendOptions
) -> Evaluation:
    """Evaluate with a progress bar over tasks."""
    with _progress(f"evaluating {len(placers)} placers on {backend}") as progress:
        cost_backend: CostBackend = make_backend(backend, options)
        return evaluate(tasks, placers, cost_backend, on_task_done=progress)


def print_evaluation(result: Evaluation) -> None:
    """Per-task costs and the summary, as aligned tables."""
    per_task = Table(title=f"measured cost per task (ms, backend {result.backend})")
    per_task.add_column("task")
    for p in result.placers:
        per_task.add_column(p, justify="right")
    for t in result.tasks:
        row = [t]
        for p in result.placers:
            r = result.result(p, t)
            if r.cost is None:
                row.append("infeasible")
            elif r.cost.rel_spread is not None:
                row.append(f"{r.cost.cost_ms:.2f} ±{r.cost.rel_spread * 100:.1f}%")
            else:
                row.append(f"{r.cost.cost_ms:.2f}")
        per_task.add_row(*row)
    out_console.print(per_task)

    best = result.best_baseline()
    summary = Table(
        title=f"summary over {len(result.common_tasks())} tasks every placer placed"
        f" (best baseline: {best})"
    )
    for column in ("placer", "mean cost ms", "spread", "speedup vs best", "place ms", "failures"):
        summary.add_column(column, justify="left" if column == "placer" else "right")
    for s in result.summary():
        summary.add_row(
            s.placer,
            f"{s.mean_cost_ms:.3f}",
            f"±{s.mean_rel_spread * 100:.1f}%" if s.mean_rel_spread is not None else "-",
            f"{s.speedup_vs_best_baseline:.3f}x" if s.speedup_vs_best_baseline else "-",
            f"{s.mean_place_time_ms:.2f}",
            str(s.failures),
        )
    out_console.print(summary)


def print_torchrec_estimates(
    result: Evaluation, tasks: Sequence[Task], batch_size: int
) -> dict[str, Any]:
    """TorchRec's own estimate of every placer's placements beside the measured means."""
    from dreamshard.torchrec_planner import torchrec_estimates

    estimates = torchrec_estimates(result, tasks, batch_size=batch_size)
    table = Table(
        title="TorchRec's estimate (its cost model, CPU) vs measured, means over common tasks"
    )
    for column in ("placer", "TorchRec estimate ms", f"measured ms ({result.backend})"):
        table.add_column(column, justify="left" if column == "placer" else "right")
    for p in result.placers:
        table.add_row(
            p,
            f"{estimates['mean_estimate_ms'][p]:.3f}",
            f"{estimates['mean_measured_ms'][p]:.3f}",
        )
    out_console.print(table)
    return estimates


@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's files.")] = Path(
        "runs/demo"
    ),
    backend: BackendOpt = "fbgemm",
    num_test: Annotated[int, typer.Option("--num-test", help="Test tasks to evaluate.")] = 8,
    seed: SeedOpt = DEFAULT_SEED,
) -> None:
    """The main job: train DreamShard on real measurements, compare on unseen tasks."""
    from dreamshard.demo import DemoConfig, prepare_demo

    if num_test < 1:
        raise InputError(f"--num-test must be at least 1, got {num_test}")
    config = DemoConfig(out_dir=str(out), backend=backend, num_test_tasks=num_test, seed=seed)
    out_console.print(
        f"[bold]DreamShard demo[/]: {config.num_tables} DLRM-like tables (dim {config.dim}, "
        f"rows <= {config.max_rows:,}); {config.num_train_tasks} training and {num_test} unseen "
        f"test tasks of {config.tables_per_task} tables on {config.num_devices} devices with "
        f"{config.memory} each; measured on {backend}"
    )
    suite_path, suite = prepare_demo(config)
    out_console.print(
        f"wrote {escape(str(out / 'tables.json'))}, {escape(str(suite_path))} and "
        f"{escape(str(out / 'config.json'))}"
    )
    # Training measures more placements, each at lower precision, than the evaluation.
    train_options = BackendOptions(
        batch_size=config.batch_size, seed=seed, windows=4, calls_per_window=6
    )
    eval_options = BackendOptions(batch_size=config.batch_size, seed=seed)
    model_dir = out / "model"
    out_console.print("[bold]1. training DreamShard[/] (collect measurements, fit, improve)")
    run_training(config.train, suite.train, backend, train_options, model_dir, resume=False)
    out_console.print("[bold]2. evaluating every placer on the unseen test tasks[/]")
    placer_options = PlacerOptions(seed=seed, model_dir=str(model_dir))
    result = run_evaluation(
        suite.test,
        [make_placer(p, placer_options) for p in config.placers],
        backend,
        eval_options,
    )
    print_evaluation(result)
    payload = result.to_json()
    payload["config"] = {"demo": str(out / "config.json"), **vars(eval_options)}
    if "torchrec" in config.placers:
        payload["torchrec_estimates"] = print_torchrec_estimates(
            result, suite.test, config.batch_size
        )
    write_json(out / "evaluation.json", payload)
    out_console.print(f"wrote {escape(str(out / 'evaluation.json'))}")


@app.command()
@handle_errors
def calibrate(
    out: Annotated[Path, typer.Option("--out", help="Profile JSON to write.")],
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Where to write the error report (default: beside --out)."),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Profile name.")] = "cpu-zen4",
    num_shards: Annotated[int, typer.Option("--num-shards", help="Shards to measure.")] = 200,
    holdout: Annotated[float, typer.Option("--holdout", help="Share of shards held out.")] = 0.25,
    seed: SeedOpt = DEFAULT_SEED,
    windows: WindowsOpt = 4,
    calls: CallsOpt = 6,
) -> None:
    """Fit the simulator to FBGEMM measurements of random shards on this machine."""
    from dreamshard.backends.fbgemm import default_comm
    from dreamshard.calibrate import (
        CalibrationConfig,
        calibration_report,
        fit_calibration,
        measure_calibration,
        samples_report,
    )

    _check_out(out)
    report_path = report if report is not None else out.with_suffix(".report.json")
    _check_out(report_path)
    config = CalibrationConfig(
        num_shards=num_shards,
        holdout_fraction=holdout,
        seed=seed,
        windows=windows,
        calls_per_window=calls,
    )
    comm = default_comm("cpu")  # keep the packaged profile's fitted all-to-all model
    with _progress(f"measuring {num_shards} shards on fbgemm") as progress:
        fit, held_out = measure_calibration(config, comm, progress)
    # Keep the measurements even if the fit fails.
    write_json(report_path, {"samples": samples_report(fit, held_out)})
    result = fit_calibration(config, name, comm, fit, held_out)
    summary = calibration_report(result)
    errors = summary["holdout_errors"]
    out_console.print(
        f"held-out shards ({summary['holdout_shards']}): median APE fwd "
        f"{errors['fwd_median_ape']:.1f}%, bwd {errors['bwd_median_ape']:.1f}%, "
        f"fwd+bwd {errors['total_median_ape']:.1f}% (p90 {errors['total_p90_ape']:.1f}%)"
    )
    result.profile.save(out)
    write_json(report_path, summary)
    out_console.print(f"wrote {escape(str(out))} and {escape(str(report_path))}")


@app.command("calibrate-comm")
@handle_errors
def calibrate_comm(
    out: Annotated[
        Path, typer.Option("--out", help="Profile JSON to write (may be the --profile file).")
    ],
    profile: Annotated[
        str,
        typer.Option("--profile", help="Profile whose comm section is refitted (name or path)."),
    ] = "cpu-zen4",
    devices: Annotated[int, typer.Option("--devices", help="Processes (ranks) to time.")] = 2,
    batch_sizes: Annotated[
        str, typer.Option("--batch-sizes", help="Comma-separated global batch sizes.")
    ] = "1024,4096,16384",
    widths: Annotated[
        str, typer.Option("--widths", help="Comma-separated per-rank output widths.")
    ] = "0,16,64,256,1024",
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Where to write the fit report (default: beside --out)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu (gloo) or cuda (NCCL).")] = "cpu",
    seed: SeedOpt = DEFAULT_SEED,
    windows: WindowsOpt = 4,
    calls: CallsOpt = 5,
) -> None:
    """Fit the all-to-all model to real all-to-alls between processes; store it in a profile."""
    from dreamshard.backends.commfit import (
        CommFitConfig,
        fit_comm,
        fit_report,
        grid_points,
        measure_grid,
        update_profile,
    )
    from dreamshard.backends.distributed import DistributedBackend, DistributedConfig
    from dreamshard.backends.sim import load_profile

    _check_out(out)
    report_path = report if report is not None else out.with_suffix(".comm-report.json")
    _check_out(report_path)
    load_profile(profile)  # a bad profile fails before minutes of measuring
    config = CommFitConfig(
        num_devices=devices,
        batch_sizes=tuple(_parse_ints(batch_sizes, "--batch-sizes")),
        widths=tuple(_parse_ints(widths, "--widths")),
        windows=windows,
        calls_per_window=calls,
        device=device,
        seed=seed,
    )
    out_console.print(
        f"timing {len(grid_points(config))} all-to-alls on {devices} "
        f"{'NCCL' if device == 'cuda' else 'gloo'} processes ({windows} windows x {calls} calls)"
    )
    with DistributedBackend(DistributedConfig(device=device, seed=seed)) as backend:
        samples = measure_grid(config, backend.measure_comm)
    result = fit_comm(config, samples)
    model, errors = result.model, result.holdout_errors()
    out_console.print(
        f"fitted: latency {model.latency_ms:.3f} ms, bandwidth {model.bandwidth_gbps:.3f} GB/s, "
        f"volume {model.volume!r}; held-out points ({len(result.holdout_samples)}): "
        f"median APE {errors['median_ape']:.1f}%, max {errors['max_ape']:.1f}%",
        highlight=False,
    )
    update_profile(profile, model, out)
    write_json(report_path, fit_report(config, result))
    out_console.print(f"wrote {escape(str(out))} and {escape(str(report_path))}")


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{what}: expected comma-separated integers, got {text!r}") from None


@app.command()
@handle_errors
def train(
    tasks: Annotated[Path, typer.Option("--tasks", help="Suite file; its train split is used.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder (checkpoints land here).")],
    backend: BackendOpt = "fbgemm",
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
    seed: SeedOpt = DEFAULT_SEED,
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
    profile: ProfileOpt = "cpu-zen4",
    row_cap: RowCapOpt = None,
    windows: WindowsOpt = 4,
    calls: CallsOpt = 6,
    device: DeviceOpt = "cpu",
    kernel: KernelOpt = None,
) -> None:
    """Train DreamShard on a suite's training tasks (METHOD.md section 4)."""
    from dreamshard.train import TrainConfig

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
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
        seed=seed,
    )
    options = _backend_options(
        batch_size, seed, profile, row_cap, windows, calls, device=device, kernel=kernel
    )
    run_training(config, suite.train, backend, options, out, resume)


def run_training(
    config: TrainConfig,
    tasks: Sequence[Task],
    backend: str,
    options: BackendOptions,
    out: Path,
    resume: bool,
) -> DreamShardModel:
    """Train with one printed line per iteration; returns the model."""
    from dreamshard.train import IterationReport, Trainer

    def report(r: IterationReport) -> None:
        mape = f"{r.new_cost_mape:5.1f}%" if r.new_cost_mape is not None else "    -"
        out_console.print(
            f"iter {r.iteration:3d}  measurements {r.measurements:5d}  "
            f"measured mean {r.measured_mean_cost_ms:8.3f} ms  cost-net error on new {mape}  "
            f"policy predicted {r.policy_predicted_cost_ms:8.3f} ms  ({r.wall_s:.1f} s)",
            highlight=False,
        )

    trainer = Trainer(config, tasks, make_backend(backend, options), out, on_iteration=report)
    if resume and trainer.resume():
        out_console.print(f"resumed {escape(str(out))} at iteration {trainer.state.iteration}")
    out_console.print(
        f"training on {len(tasks)} tasks, backend {backend}, {config.iterations} iterations "
        f"x {config.measurements_per_iteration} measurements"
    )
    model = trainer.run()
    out_console.print(
        f"trained: {model.info.get('measurements')} backend measurements, "
        f"{model.info.get('train_wall_s', 0):.1f} s; model in {escape(str(out))}"
    )
    return model


@app.command()
@handle_errors
def benchmark(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Benchmark config (.toml or .json); default: the packaged one."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for results, report and plots.")] = (
        Path("runs/benchmark")
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="Shrink tasks and budgets (the config's [quick]).")
    ] = False,
) -> None:
    """Run the paper-style benchmark end to end: train, place, measure, report."""
    from dreamshard.benchmark import DEFAULT_CONFIG, command_line, load_config, run_benchmark

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    resolved = load_config(config if config is not None else DEFAULT_CONFIG)
    if quick:
        resolved = resolved.shrunk()

    def log(line: str) -> None:
        out_console.print(escape(line), highlight=False, soft_wrap=True)

    def progress(description: str) -> Callable[[int, int], None]:
        return _progress_lines(description, lines=4, unit=" tasks")

    results = run_benchmark(resolved, out, command_line(), log=log, progress=progress)
    report_path = escape(str(out / "report.md"))
    out_console.print(f"benchmark done in {results['wall_s'] / 60:.1f} min; report: {report_path}")
