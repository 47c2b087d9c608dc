"""What the commands print: the consoles, progress, and the aligned result tables."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dreamshard.evaluation.evaluate import Evaluation
from dreamshard.types import MeasurementConditions, Placement, PlacementCost, Task
from dreamshard.units import format_bytes

#: Width of the consoles off a terminal (logs, pipes, files): wide enough that result
#: tables never wrap at rich's default 80 columns.
UNWRAPPED_WIDTH = 400


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=UNWRAPPED_WIDTH)
    return console


#: Results go to stdout; errors and progress to stderr.
out_console = _console()
err_console = _console(stderr=True)

#: ``place`` shows at most this many devices (the slowest) unless asked for all.
SUMMARY_DEVICES = 16


def print_line(line: str) -> None:
    """Print a plain line from the library on stdout (not read as console markup)."""
    out_console.print(escape(line), highlight=False)


def progress_lines(description: str, lines: int, unit: str = "") -> Callable[[int, int], None]:
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
def progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr; yields a (done, total) callback.

    Off a terminal (CI logs, pipes) a bar would not render, so progress is printed as a
    line at every tenth of the work instead.
    """
    if not err_console.is_terminal:
        yield progress_lines(description, lines=10)
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


def print_conditions(conditions: MeasurementConditions | None) -> None:
    """One warning line on stderr when the measurement ran on a loaded machine."""
    if conditions is not None and conditions.loaded:
        err_console.print(
            "[bold yellow]warning:[/] measured on a loaded machine: "
            + escape("; ".join(conditions.warnings))
            + " (costs may be off; measure alone on the machine)",
            highlight=False,
            soft_wrap=True,
        )


def print_placement(
    task: Task,
    placement: Placement,
    cost: PlacementCost,
    placer: str,
    place_ms: float,
    show_all: bool = False,
) -> None:
    """One placement: tables (and shards), memory and stage costs per device, then its
    split tables and its cost.

    On more than :data:`SUMMARY_DEVICES` devices only the slowest are listed (with the
    spread of per-device totals), and each device's tables are abbreviated, unless
    ``show_all``: then every device and every table name is shown.
    """
    units = placement.units(task)
    shown_devices = list(range(task.num_devices))
    if not show_all and task.num_devices > SUMMARY_DEVICES:
        by_total = sorted(shown_devices, key=lambda d: -cost.per_device[d].total_ms)
        shown_devices = sorted(by_total[:SUMMARY_DEVICES])
    title = f"{placer} placement of {task.name} ({cost.backend})"
    if len(shown_devices) < task.num_devices:
        title += f": the {len(shown_devices)} slowest of {task.num_devices} devices"
    table = Table(title=title)
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
    for d in shown_devices:
        device, stage = task.devices[d], cost.per_device[d]
        mine = [u for u, dd in zip(units, placement.device_of, strict=True) if dd == d]
        names = [u.name for u in mine]
        used = sum(task.table_memory_bytes(u) for u in mine)
        if show_all or len(names) <= 6:
            shown = ", ".join(names)
        else:
            shown = ", ".join(names[:6]) + f", ... ({len(names)})"
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
    if len(shown_devices) < task.num_devices:
        totals = sorted(c.total_ms for c in cost.per_device)
        out_console.print(
            f"per-device total ms over all {task.num_devices} devices: min {totals[0]:.3f}, "
            f"median {totals[len(totals) // 2]:.3f}, max {totals[-1]:.3f} "
            "(--all lists every device and table)"
        )
    for line in split_lines(task, placement):
        out_console.print(line)
    spread = f" (spread ±{cost.rel_spread * 100:.1f}%)" if cost.rel_spread is not None else ""
    out_console.print(f"placement cost: {cost.cost_ms:.3f} ms{spread}; placed in {place_ms:.1f} ms")


def split_lines(task: Task, placement: Placement) -> list[str]:
    """One line per split table: its kind, its shards' sizes and devices."""
    if placement.is_table_wise:
        return ["every table whole (table-wise)"]
    units = placement.units(task)
    where = {u.name: task.devices[d].name for u, d in zip(units, placement.device_of, strict=True)}
    lines = [f"{len(placement.splits)} of {task.num_tables} tables split:"]
    for split in placement.splits:
        table = task.tables[split.table]
        shards = split.shards(table)
        if split.kind == "column":
            parts = ", ".join(f"{s.dim} on {where[s.name]}" for s in shards)
            lines.append(f"  {table.name} (dim {table.dim}) column-wise: dims {parts}")
        elif split.kind == "row":
            lines.append(
                f"  {table.name} ({table.rows:,} rows) row-wise: {len(shards)} blocks of "
                f"{shards[0].rows:,} rows, block j on device j"
            )
        else:
            first = split.host * task.host_size
            lines.append(
                f"  {table.name} ({table.rows:,} rows) table-row-wise on host {split.host}: "
                f"{len(shards)} blocks of {shards[0].rows:,} rows, block j on device "
                f"{first} + j ({where[shards[0].name]} .. {where[shards[-1].name]})"
            )
    return lines


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
    paired = result.paired()
    if paired:
        table = Table(
            title=f"per-task cost ratio to {paired[0].baseline} (geometric mean, bootstrap "
            f"{paired[0].confidence:.0%} CI over {paired[0].tasks} tasks; < 1 is cheaper)"
        )
        for column in ("placer", "ratio", "95% CI", "wins", "losses", "ties"):
            table.add_column(column, justify="left" if column == "placer" else "right")
        for c in paired:
            table.add_row(
                c.placer,
                f"{c.geomean_ratio:.3f}" + ("*" if c.significant else ""),
                f"[{c.ci_low:.3f}, {c.ci_high:.3f}]",
                str(c.wins),
                str(c.losses),
                str(c.ties),
            )
        out_console.print(table)
        out_console.print("* the interval excludes 1", highlight=False)


def print_torchrec_estimates(result: Evaluation, estimates: Mapping[str, Any]) -> None:
    """TorchRec's own estimate of every placer's placements beside the measured means
    (``estimates`` from :func:`dreamshard.evaluation.torchrec_estimates.torchrec_estimates`)."""
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


def print_comparison(result: Evaluation, estimates: Mapping[str, Any] | None) -> None:
    """An evaluation's tables, TorchRec's estimates when there are any, and a warning
    when the measurements ran on a loaded machine."""
    print_evaluation(result)
    if estimates is not None:
        print_torchrec_estimates(result, estimates)
    print_conditions(result.conditions)
