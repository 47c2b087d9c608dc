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
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.markup import escape

# typer (pinned in pyproject.toml) vendors click; its usage errors are not re-exported.
from typer._click.exceptions import (
    BadParameter,
    ClickException,
    MissingParameter,
    NoArgsIsHelpError,
    UsageError,
)
from typer.core import TyperGroup

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

#: Exit code of every handled error (bad input, infeasible task, backend trouble).
EXIT_USAGE = 2

#: What a bad number of each type is called in the one-line message.
_NUMBER_WORDS: dict[type, str] = {int: "a valid integer", float: "a valid number"}


def print_error(message: str) -> None:
    """Print ``message`` as the one ``error:`` line on stderr."""
    line = " ".join(message.split())  # one line, whatever the message held
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


def _annotation(param: Any) -> Any:
    """The Python type typer converts a parameter's value to (None if unknown)."""
    return getattr(getattr(param, "type_descriptor", None), "annotation", None)


def _is_path(param: Any) -> bool:
    annotation = _annotation(param)
    return isinstance(annotation, type) and issubclass(annotation, PurePath)


def _value_of(flag: str, args: Sequence[str]) -> str | None:
    """The value given to option ``flag`` in ``args`` (its last use), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"{flag}="):
            value = arg.partition("=")[2]
    return value


def _parses(kind: type, text: str) -> bool:
    """Whether ``text`` reads as a number of type ``kind`` (int or float)."""
    try:
        kind(text)
    except ValueError:
        return False
    return True


def usage_message(err: UsageError, args: Sequence[str]) -> str:
    """One line for a usage error (bad, unknown or missing option) of ``args``.

    A bad value names its option and the value, ``--devices: 'four' is not a valid
    integer``, instead of the converter's wording; other usage errors keep click's
    own one-sentence message.
    """
    param = getattr(err, "param", None)
    opts = getattr(param, "opts", None)
    if isinstance(err, BadParameter) and not isinstance(err, MissingParameter) and opts:
        flag = opts[0]
        value = _value_of(flag, args)
        kind = _annotation(param)
        if value is not None and kind in _NUMBER_WORDS and not _parses(kind, value):
            return f"{flag}: {value!r} is not {_NUMBER_WORDS[kind]}"
        got = f", got {value}" if value is not None else ""
        return f"{flag}: {err.message.rstrip('.')}{got}"
    return err.format_message().rstrip(".")


class OneLineErrorsGroup(TyperGroup):
    """The command group; usage errors end as one ``error:`` line too.

    Click shows a bad option value, an unknown or a missing option as a usage box over
    several lines; here every one is a single line on stderr with exit code 2, like the
    package's own errors (:func:`handle_errors`). Both the installed ``dreamshard``
    command and typer's test runner come through :meth:`main`.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; in standalone mode exit with its code."""
        arguments = list(sys.argv[1:] if args is None else args)
        try:
            empty = self._empty_path_option(arguments)
            if empty is not None:
                print_error(f"{empty}: empty path")
                code = EXIT_USAGE
            else:
                result = super().main(
                    args=arguments,
                    prog_name=prog_name,
                    complete_var=complete_var,
                    standalone_mode=False,
                    windows_expand_args=windows_expand_args,
                    **extra,
                )
                # Not standalone, click returns the exit code of a typer.Exit.
                code = result if isinstance(result, int) else 0
        except NoArgsIsHelpError as err:
            err.show()  # the help text itself, as asked for
            code = err.exit_code
        except UsageError as err:
            print_error(usage_message(err, arguments))
            code = EXIT_USAGE
        except ClickException as err:
            print_error(err.format_message())
            code = err.exit_code
        except typer.Abort:
            print_error("aborted")
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code

    def _empty_path_option(self, args: Sequence[str]) -> str | None:
        """The path option given an empty value in ``args``, if any.

        typer turns ``--out ""`` into ``Path("")``, which is ``.``, the current folder:
        the user's mistake would be reported about a path they never wrote.
        """
        name = next((a for a in args if not a.startswith("-")), None)
        command = self.commands.get(name) if name is not None else None
        if command is None:
            return None
        flags: list[str] = [opt for p in command.params if _is_path(p) for opt in p.opts]
        for flag in flags:
            value = _value_of(flag, args)
            if value is not None and not value.strip():
                return flag
        return None


app = typer.Typer(
    help="DreamShard: place embedding tables on devices, measured on real FBGEMM kernels.",
    cls=OneLineErrorsGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

P = ParamSpec("P")
R = TypeVar("R")


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
            print_error(str(err))
            raise typer.Exit(EXIT_USAGE) from None
        except OSError as err:
            # A safety net: the library maps the file errors a user can cause to
            # InputError, but a full disk or a vanished folder must not end in a
            # traceback either.
            where = f"{err.filename}: " if err.filename is not None else ""
            print_error(f"{where}{err.strerror or err}")
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
    ("pretrain", train_commands.pretrain),
    ("benchmark", bench_commands.benchmark),
)

for _name, _command in COMMANDS:
    app.command(_name)(handle_errors(_command))
