"""Commands that make tables and tasks: ``gen-tables``, ``tables-from-data``, ``gen-tasks``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dreamshard.cli.options import (
    BatchOpt,
    SeedOpt,
    TopologyOpt,
    check_out,
    parse_count_range,
    task_devices,
)
from dreamshard.cli.output import out_console, progress
from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED
from dreamshard.data.tables import load_tables, save_tables
from dreamshard.data.tasks import SuiteConfig, generate_suite, save_suite
from dreamshard.errors import InputError
from dreamshard.units import format_bytes

#: Most tables ``gen-tables`` makes. Generating a pool holds about 110 KB per table at
#: once (the analytic access histograms), so 10,000 tables (12x the public DLRM dataset's
#: 856) need about 1.2 GB and ~10 s; a million would need over 30 GiB after minutes.
MAX_GEN_TABLES = 10_000


def gen_tables(
    out: Annotated[Path, typer.Option("--out", help="Table file to write (.json or .csv).")],
    num: Annotated[int, typer.Option("--num", help="Number of tables.")] = 856,
    seed: SeedOpt = DEFAULT_SEED,
    dim: Annotated[
        int | None, typer.Option("--dim", help="Embedding dim of every table (default 16).")
    ] = None,
    dims: Annotated[
        str | None,
        typer.Option(
            "--dims", help="Comma-separated dims to draw from, e.g. 8,16,32 (not with --dim)."
        ),
    ] = None,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", help="Cap on rows per table.")
    ] = None,
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
) -> None:
    """Generate a DLRM-like table pool (like Meta's public dataset: 856 tables; at most 10,000)."""
    from dreamshard.data.synthetic import generate_table_pool

    if num < 1:
        raise InputError(f"--num must be at least 1, got {num}")
    if num > MAX_GEN_TABLES:
        raise InputError(
            f"--num must be at most {MAX_GEN_TABLES:,}, got {num:,} (generating a pool holds "
            f"about 110 KB per table in memory)"
        )
    if dim is not None and dims is not None:
        raise InputError("--dim and --dims: give one, not both")
    dim = 16 if dim is None else dim
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    dim_list = None
    if dims is not None:
        parts = [d.strip() for d in dims.split(",")]
        # int() would also take "1_6" and non-ASCII digits; a dim is plain ASCII digits.
        if not all(p.isascii() and p.isdigit() for p in parts):
            raise InputError(f"--dims: expected comma-separated integers, got {dims!r}")
        dim_list = [int(p) for p in parts]
    for d in dim_list or [dim]:
        if d <= 0 or d % 4:
            raise InputError(f"dim {d}: must be a positive multiple of 4 for FBGEMM")
    if max_rows is not None and max_rows < 100:
        raise InputError(f"--max-rows must be at least 100, got {max_rows}")
    if out.suffix.lower() not in (".json", ".csv"):
        raise InputError(f"--out {out}: use a .json or .csv file name")
    check_out(out)
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
    from dreamshard.data.dlrm import load_dlrm_file, parse_table_selection
    from dreamshard.data.dlrm_tables import tables_from_dlrm

    if dim <= 0 or dim % 4:
        raise InputError(f"--dim {dim}: must be a positive multiple of 4 for FBGEMM")
    if dtype not in ("fp32", "fp16"):
        raise InputError(f"--dtype must be fp32 or fp16, got {dtype!r}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if out.suffix.lower() not in (".json", ".csv"):
        raise InputError(f"--out {out}: use a .json or .csv file name")
    check_out(out, data)
    start = time.perf_counter()
    loaded = load_dlrm_file(data)
    chosen = parse_table_selection(tables, loaded.num_tables) if tables is not None else None
    with progress(f"reading tables of {data.name}") as on_progress:
        specs = tables_from_dlrm(
            data,
            chosen,
            dim=dim,
            dtype=dtype,
            batch_size=batch_size,
            seed=seed,
            progress=on_progress,
        )
    save_tables(out, specs)
    out_console.print(
        f"wrote {len(specs)} of {loaded.num_tables} tables (data batch {loaded.batch_size}, "
        f"mean pooling {sum(t.pooling_factor for t in specs) / len(specs):.2f}, "
        f"{format_bytes(sum(t.size_bytes for t in specs))} of weights at dim {dim}) to "
        f"{escape(str(out))} in {time.perf_counter() - start:.2f} s"
    )


def gen_tasks(
    tables: Annotated[Path, typer.Option("--tables", help="Table pool file.")],
    out: Annotated[Path, typer.Option("--out", help="Suite file to write (.json).")],
    num_train: Annotated[int, typer.Option("--num-train", help="Training tasks.")] = 50,
    num_test: Annotated[int, typer.Option("--num-test", help="Test tasks.")] = 50,
    tables_per_task: Annotated[
        str, typer.Option("--tables-per-task", help="Tables per task: N or MIN-MAX.")
    ] = "50",
    devices: Annotated[
        int | None, typer.Option("--devices", help="Devices per task [default: 4].")
    ] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", help="Memory per device, e.g. 5GB [default: 5GB].")
    ] = None,
    topology: TopologyOpt = None,
    seed: SeedOpt = DEFAULT_SEED,
) -> None:
    """Draw train and test tasks from disjoint halves of a table pool."""
    check_out(out, tables, topology)
    low, high = parse_count_range(tables_per_task, "--tables-per-task")
    if num_train + num_test < 1:
        raise InputError("--num-train and --num-test: ask for at least one task")
    devices_of_tasks = task_devices(devices, memory, topology, 4, "5GB")
    num_devices = len(devices_of_tasks)
    memory_bytes = max(d.memory_bytes for d in devices_of_tasks)
    shape = f"devices of {escape(str(topology)) if topology is not None else memory or '5GB'}"
    pool = load_tables(tables)
    config = SuiteConfig(
        num_train=num_train,
        num_test=num_test,
        min_tables=low,
        max_tables=high,
        num_devices=num_devices,
        memory_bytes=memory_bytes,
        seed=seed,
    )
    suite = generate_suite(pool, config, devices_of_tasks)
    save_suite(out, suite)
    out_console.print(
        f"wrote {len(suite.train)} train and {len(suite.test)} test tasks "
        f"({tables_per_task} tables on {num_devices} {shape}) to {out}"
    )
