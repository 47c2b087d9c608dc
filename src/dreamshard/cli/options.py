"""Options shared by several commands, the backend-option block, and parsing helpers.

The backend block (``--backend --batch-size --profile --row-cap --windows --calls
--device --kernel --seed``) is written once: :func:`backend_options` adds its
parameters to a command's signature (typer reads the signature) and hands the command
one :class:`BackendChoice` instead.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from dreamshard.backends import BACKEND_NAMES, BackendOptions
from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED
from dreamshard.data.constraints import ConstraintSpec
from dreamshard.data.tasks import make_devices
from dreamshard.data.topology import load_topology
from dreamshard.errors import InputError
from dreamshard.fileio import check_writable
from dreamshard.placers.registry import PlacerOptions
from dreamshard.types import Device, divides_into_hosts
from dreamshard.units import parse_memory

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
#: Largest ``--seed``: torch keeps seeds in 64 bits, and numpy refuses negative ones.
MAX_SEED = 2**63 - 1
SeedOpt = Annotated[
    int, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of everything random.")
]
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
    typer.Option(
        "--model",
        help="DreamShard model folder (placer dreamshard); default: the pretrained model "
        "packaged for --profile.",
    ),
]
SearchOpt = Annotated[
    str,
    typer.Option(
        "--search",
        help="dreamshard: none (the paper's greedy policy), greedy (+ cost-guided greedy) "
        "or local (+ local search on the cost network).",
    ),
]
ShardingOpt = Annotated[
    str,
    typer.Option(
        "--sharding",
        help="dreamshard and oracle: table (whole tables only, the paper's setting), "
        "column or row (allow only that split), or auto (split a table where that lowers "
        "the predicted cost or is needed to fit). Other placers place whole tables; "
        "torchrec-all is TorchRec's planner with every sharding type.",
    ),
]
TimeBudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--time-budget-ms",
        help="dreamshard: cap on the search time per task (default: bounded by effort "
        "only, so results do not depend on the machine's speed).",
    ),
]
RefineOpt = Annotated[
    int,
    typer.Option(
        "--refine",
        min=0,
        help="dreamshard: measure the K best candidates on --backend, keep the best "
        "measured (K measurements per task).",
    ),
]
SamplesOpt = Annotated[
    int,
    typer.Option(
        "--samples",
        min=0,
        help="dreamshard: also sample K placements, keep the cost network's best.",
    ),
]


# -- the backend-option block -----------------------------------------------------------


@dataclass(frozen=True)
class BackendChoice:
    """What the backend block of a command line asked for.

    Attributes:
        name: Backend name (``--backend``).
        options: Its options (``--seed`` included: it also seeds the command's placers).
    """

    name: str
    options: BackendOptions

    @property
    def seed(self) -> int:
        """``--seed``."""
        return self.options.seed


#: The parameter a command declares (keyword-only, annotated BackendChoice) where the
#: block goes; the decorator replaces it with the block and fills it in.
BACKEND_PARAMETER = "backend"


def _block(windows: int, calls: int) -> list[inspect.Parameter]:
    """The block's parameters, in the order ``--help`` lists them."""

    def option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
        )

    return [
        option("backend", BackendOpt, "fbgemm"),
        option("batch_size", BatchOpt, DEFAULT_BATCH_SIZE),
        option("profile", ProfileOpt, "cpu-zen4"),
        option("row_cap", RowCapOpt, None),
        option("windows", WindowsOpt, windows),
        option("calls", CallsOpt, calls),
        option("device", DeviceOpt, "cpu"),
        option("kernel", KernelOpt, None),
        option("seed", SeedOpt, DEFAULT_SEED),
    ]


def backend_choice(
    backend: str,
    batch_size: int,
    profile: str,
    row_cap: int | None,
    windows: int,
    calls: int,
    device: str,
    kernel: str | None,
    seed: int,
) -> BackendChoice:
    """The block's values as a BackendChoice; a bad value raises InputError naming its flag."""
    if row_cap is not None and row_cap < 100:
        raise InputError(f"--row-cap must be at least 100, got {row_cap}")
    options = BackendOptions(
        batch_size=batch_size,
        seed=seed,
        profile=profile,
        row_cap=row_cap,
        windows=windows,
        calls_per_window=calls,
        device=device,
        kernel=kernel,
    )
    return BackendChoice(backend, options)


def backend_options(
    *, windows: int, calls: int
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the backend block ``--backend --batch-size --profile --row-cap
    --windows --calls --device --kernel --seed``, with these ``--windows``/``--calls``
    defaults.

    The command declares a keyword-only parameter ``backend: BackendChoice`` where the
    block should appear in ``--help``; the decorated function's signature has the
    block's parameters there instead (typer reads ``inspect.signature`` and the type
    hints, so both are given resolved, whatever ``from __future__ import annotations``
    left as strings: the names in the command's annotations must be the module's own,
    as for any typer command), and the command is called with the BackendChoice they
    make. A bad value (``--row-cap`` under 100) raises InputError before the command
    runs.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        # eval_str resolves the string annotations of ``from __future__ import annotations``
        # in the command's module.
        signature = inspect.signature(func, eval_str=True)
        params = signature.parameters
        if BACKEND_PARAMETER not in params or params[BACKEND_PARAMETER].kind is not (
            inspect.Parameter.KEYWORD_ONLY
        ):
            raise TypeError(
                f"{func.__qualname__}: declare a keyword-only parameter "
                f"{BACKEND_PARAMETER!r} (BackendChoice) where the backend options go"
            )
        block = _block(windows, calls)
        names = {p.name for p in block}
        clash = names & (set(params) - {BACKEND_PARAMETER})
        if clash:
            raise TypeError(f"{func.__qualname__}: parameters {sorted(clash)} are in the block")
        new_params: list[inspect.Parameter] = []
        for p in params.values():
            if p.name == BACKEND_PARAMETER:
                new_params.extend(block)
            else:
                # Keyword-only, so the block may sit between parameters with and without
                # defaults; typer passes every parameter by name.
                new_params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return func(**kwargs, **{BACKEND_PARAMETER: backend_choice(**values)})

        new_signature = signature.replace(parameters=new_params)
        wrapper.__signature__ = new_signature  # type: ignore[attr-defined]
        annotations = {p.name: p.annotation for p in new_params}
        if signature.return_annotation is not inspect.Signature.empty:
            annotations["return"] = signature.return_annotation
        wrapper.__annotations__ = annotations
        get_type_hints(wrapper, include_extras=True)  # typer's own lookup must resolve
        return wrapper

    return decorate


def placer_options(
    seed: int,
    model: Path | None,
    samples: int,
    backend: BackendChoice | None = None,
    constraints: ConstraintSpec | None = None,
    search: str = "local",
    time_budget_ms: float | None = None,
    refine: int = 0,
    sharding: str = "auto",
) -> PlacerOptions:
    """Options of the placers a command builds; the backend is for placers that search
    on measured costs (rnn, dreamshard's --refine)."""
    return PlacerOptions(
        seed=seed,
        model_dir=str(model) if model else None,
        samples=samples,
        search=search,
        time_budget_ms=time_budget_ms,
        refine=refine,
        backend=backend.name if backend is not None else None,
        backend_options=backend.options if backend is not None else None,
        constraints=constraints,
        sharding=sharding,
    )


TopologyOpt = Annotated[
    Path | None,
    typer.Option(
        "--topology",
        help="Topology file (.csv or .json): a name and a memory (e.g. 16GB) per device; "
        "replaces --devices and --memory.",
    ),
]
DevicesPerHostOpt = Annotated[
    int | None,
    typer.Option(
        "--devices-per-host",
        help="Devices per host (TorchRec's LOCAL_WORLD_SIZE; default: all on one host): "
        "allows table-row-wise splits over one host's devices.",
    ),
]
ConstraintsOpt = Annotated[
    Path | None,
    typer.Option(
        "--constraints",
        help="Constraints file (.json): pin tables to devices, keep groups together or apart.",
    ),
]


def task_devices(
    devices: int | None,
    memory: str | None,
    topology: Path | None,
    default_devices: int | None = None,
    default_memory: str | None = None,
) -> tuple[Device, ...]:
    """The devices of ``--topology FILE``, or ``--devices N`` of ``--memory SIZE`` each
    (the defaults stand in for an option not given; without one it is required)."""
    if topology is not None:
        if devices is not None or memory is not None:
            raise InputError(
                "--topology gives the devices and their memory: drop --devices and --memory"
            )
        return load_topology(topology)
    devices = default_devices if devices is None else devices
    memory = default_memory if memory is None else memory
    if devices is None or memory is None:
        raise InputError("give --devices N and --memory SIZE, or --topology FILE")
    if devices < 1:
        raise InputError(f"--devices must be at least 1, got {devices}")
    return make_devices(devices, parse_memory(memory, "--memory"))


def check_devices_per_host(devices_per_host: int | None, num_devices: int) -> None:
    """Refuse a ``--devices-per-host`` that does not divide the devices into hosts."""
    if devices_per_host is not None and not divides_into_hosts(devices_per_host, num_devices):
        raise InputError(
            f"--devices-per-host {devices_per_host} does not divide the {num_devices} devices "
            "into hosts of equal size"
        )


# -- parsing helpers --------------------------------------------------------------------


def _ascii_int(text: str) -> int:
    """An integer in plain ASCII digits; ``int()`` also takes ``1_000`` and other scripts'
    digits, which are typos here."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(text)
    return int(digits)


def parse_count_range(text: str, what: str) -> tuple[int, int]:
    """``"50"`` -> (50, 50); ``"20-40"`` -> (20, 40)."""
    parts = text.split("-")
    try:
        values = [_ascii_int(p) for p in parts]
    except ValueError:
        raise InputError(f"{what}: expected N or MIN-MAX, got {text!r}") from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise InputError(f"{what}: expected N or MIN-MAX, got {text!r}")


def parse_ints(text: str, what: str) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3]."""
    try:
        return [_ascii_int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{what}: expected comma-separated integers, got {text!r}") from None


def check_out(out: Path | None, *inputs: Path | None, flag: str = "--out") -> None:
    """Refuse an output path before any work is done, with one line naming it.

    ``out`` must not be a folder, must not be one of ``inputs`` (the files the command
    reads: writing there would replace what it read) and must be writable: the folder
    is created and a temporary file made and removed there, so results computed for
    minutes are not lost at the end. ``None`` (no output asked for) passes.

    Args:
        out: The output path, or None.
        inputs: The command's input files (None entries are skipped).
        flag: The option that gave ``out``, for the message.

    Raises:
        InputError: naming ``flag``, ``out`` and, for an input, which one.
    """
    if out is None:
        return
    if out.exists() and out.is_dir():
        raise InputError(f"{flag} {out}: is a folder, expected a file path")
    for source in inputs:
        if source is not None and _same_file(out, source):
            raise InputError(
                f"{flag} {out}: is the input file {source}; writing there would replace "
                f"it, choose another path"
            )
    try:
        check_writable(out)
    except InputError as err:
        raise InputError(f"{flag} {err}") from None


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and relative paths included)."""
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
        return a.resolve() == b.resolve()
    except OSError:
        return False
