"""The ``dreamshard`` command line: parses, calls the library, prints.

This module holds the typer app, the logging set-up and the one error handler, and
registers the commands, which live with their group: ``data_commands`` (tables and
tasks), ``place_commands`` (place, evaluate, export), ``train_commands`` (train, demo),
``calibrate_commands`` and ``bench_commands``. Shared options are in ``options``,
everything printed in ``output``.

Every error the package raises on purpose (bad input, infeasible task, backend
trouble) ends as one line on stderr and exit code 2, with no traceback and no partial
output file.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.markup import escape

from dreamshard import __version__
from dreamshard.cli import (
    bench_commands,
    calibrate_commands,
    data_commands,
    place_commands,
    train_commands,
)
from dreamshard.cli.output import err_console, out_console
from dreamshard.errors import DreamShardError, ServedAsWorker

app = typer.Typer(
    help="DreamShard: place embedding tables on devices, measured on real FBGEMM kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
            distributed = sys.modules.get("dreamshard.backends.distributed.backend")
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


#: Every command, by name, in the order ``--help`` lists them.
COMMANDS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("gen-tables", data_commands.gen_tables),
    ("tables-from-data", data_commands.tables_from_data),
    ("gen-tasks", data_commands.gen_tasks),
    ("place", place_commands.place),
    ("export", place_commands.export),
    ("evaluate", place_commands.evaluate),
    ("demo", train_commands.demo),
    ("calibrate", calibrate_commands.calibrate),
    ("calibrate-comm", calibrate_commands.calibrate_comm),
    ("train", train_commands.train),
    ("benchmark", bench_commands.benchmark),
)

for _name, _command in COMMANDS:
    app.command(_name)(handle_errors(_command))
