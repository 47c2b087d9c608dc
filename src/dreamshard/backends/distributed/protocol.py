"""What the ranks of the ``distributed`` backend exchange: commands, results, settings.

Rank 0 posts *commands* (:class:`MeasureCommand`, :class:`CommGridCommand`,
:class:`ShutdownCommand`) to the rendezvous store under numbered keys
(:func:`send_command`); every other rank blocks on the next key (:func:`receive_command`)
and executes it (``worker.py``). The per-call times each rank took come back to rank 0
as :class:`RankStageTimes` or :class:`RankCommTimes`. Also here: the repetition settings
(:class:`TimingSettings`), the store keys, the stage order of the time arrays
(:data:`STAGES`) and the exit codes of a worker process. This module builds on no other
part of the backend; ``group``, ``worker`` and ``backend`` build on it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

from torch._C._distributed_c10d import Store  # typed, unlike torch.distributed

from dreamshard.backends.kernels import FBGEMM_KERNEL
from dreamshard.errors import BackendError, InputError
from dreamshard.types import FloatArray, Placement, Task

#: Exit code of a worker whose collective failed because another rank failed.
EXIT_PEER_FAILURE = 3
#: Exit code of a worker that failed by itself (the traceback is on its stderr).
EXIT_WORKER_ERROR = 4

#: How long an idle worker waits for its next command before it gives up (the driver
#: is then gone), in seconds.
IDLE_TIMEOUT_S = 7 * 24 * 3600.0

#: Store key prefixes: process-group rendezvous, commands, progress reports.
PG_PREFIX = "dreamshard/pg"
COMMAND_KEY = "dreamshard/command/{seq}"
PROGRESS_KEY = "dreamshard/progress/{rank}"

#: Stages of one measured iteration, in the order of the last axis of the time arrays.
STAGES = ("fwd_comp_ms", "fwd_comm_ms", "bwd_comm_ms", "bwd_comp_ms")

#: Collectives that exchange pooled outputs (and their gradients), as TorchRec runs them:
#: the all-to-all of table- and column-wise outputs (forward and backward alike), the
#: reduce-scatter of row-wise partial sums (forward) and the all-gather of their
#: gradients (backward).
COLLECTIVES = ("all_to_all", "reduce_scatter", "all_gather")


# ---------------------------------------------------------------------------------------
# Commands and results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimingSettings:
    """How a command repeats what it times.

    Attributes:
        windows: Separate time windows the repetitions are spread over.
        calls_per_window: Timed iterations per item (placement or grid point) per window.
        warmup_calls: Untimed iterations per item before the first window.
    """

    windows: int = 8
    calls_per_window: int = 8
    warmup_calls: int = 3


@dataclass(frozen=True)
class MeasureCommand:
    """Measure placements of one task: one fused operator per rank (rank = device).

    Attributes:
        task: The task; its device count equals the group's world size.
        placements: Placements to measure, interleaved.
        batch_size: Global batch (samples) of one iteration.
        seed: Seed of the generated ids.
        row_cap: Tables with more rows run with this many (None: full size).
        timing: Repetitions.
        compute_turns: Ranks compute one at a time (see DistributedConfig).
        kernel: Kernel of the fused operators (resolved by rank 0 with select_kernel).
    """

    task: Task
    placements: tuple[Placement, ...]
    batch_size: int
    seed: int
    row_cap: int | None
    timing: TimingSettings
    compute_turns: bool = False
    kernel: str = FBGEMM_KERNEL


@dataclass(frozen=True)
class CommPoint:
    """One collective to time: global batch and the output width (sum of dims) per rank.

    Attributes:
        batch_size: Global batch (samples).
        widths: Output width of each rank. For ``reduce_scatter`` and ``all_gather`` every
            rank has the same width: the summed dims of the row-wise tables, each of which
            has a row block on every rank.
        collective: One of :data:`COLLECTIVES`.
    """

    batch_size: int
    widths: tuple[int, ...]
    collective: str = "all_to_all"

    def __post_init__(self) -> None:
        if self.collective not in COLLECTIVES:
            raise InputError(
                f"unknown collective {self.collective!r}; use one of {', '.join(COLLECTIVES)}"
            )
        if self.collective != "all_to_all" and (len(set(self.widths)) != 1 or self.widths[0] < 1):
            raise InputError(
                f"a {self.collective} point needs the same positive width on every rank, "
                f"got {list(self.widths)}"
            )


@dataclass(frozen=True)
class CommGridCommand:
    """Time the collective of each grid point alone."""

    points: tuple[CommPoint, ...]
    timing: TimingSettings


@dataclass(frozen=True)
class ShutdownCommand:
    """Leave the worker loop."""


Command = MeasureCommand | CommGridCommand | ShutdownCommand


@dataclass(frozen=True)
class RankStageTimes:
    """Stage times one rank took, in ms: ``stage_ms[placement, window, call, stage]``
    with stages in :data:`STAGES` order."""

    rank: int
    stage_ms: FloatArray


@dataclass(frozen=True)
class RankCommTimes:
    """Collective times one rank saw, in ms: ``comm_ms[point, window, call]``."""

    rank: int
    comm_ms: FloatArray


# ---------------------------------------------------------------------------------------
# Posting and receiving commands
# ---------------------------------------------------------------------------------------


def send_command(store: Store, seq: int, command: Command) -> None:
    """Post command number ``seq`` for the workers (rank 0 only)."""
    # The store takes bytes as well as str (its type stub says str only).
    store.set(COMMAND_KEY.format(seq=seq), pickle.dumps(command))  # type: ignore[arg-type]


def receive_command(store: Store, seq: int) -> Command:
    """Block until command number ``seq`` is posted; return it."""
    command = pickle.loads(store.get(COMMAND_KEY.format(seq=seq)))
    if not isinstance(command, MeasureCommand | CommGridCommand | ShutdownCommand):
        raise BackendError(f"worker received an unknown command {type(command).__name__}")
    return command
