"""The paper-style benchmark: ``benchmark``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dreamshard.cli.options import check_out
from dreamshard.cli.output import out_console, progress_lines
from dreamshard.errors import InputError


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
    from dreamshard.bench.config import load_config
    from dreamshard.bench.runner import command_line, run_benchmark

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    resolved = load_config(config)  # None: the packaged default config
    # Before the hours of training and measuring whose results would be lost.
    check_out(out / "results.json", config)
    if quick:
        resolved = resolved.shrunk()

    def log(line: str) -> None:
        out_console.print(escape(line), highlight=False, soft_wrap=True)

    def progress(description: str) -> Callable[[int, int], None]:
        return progress_lines(description, lines=4, unit=" tasks")

    results = run_benchmark(resolved, out, command_line(), log=log, progress=progress)
    report_path = escape(str(out / "report.md"))
    out_console.print(f"benchmark done in {results.wall_s / 60:.1f} min; report: {report_path}")
