"""The ``distributed`` cost backend: one process per device, real collectives.

METHOD.md section 5, "Hardware, distributed": every device of a task is one process
(rank) that builds its device's fused FBGEMM operator and runs training iterations of the
embedding part, forward, the all-to-all of pooled embeddings split by each rank's output
widths, the backward all-to-all of their gradients and the backward with the fused sparse
update, each stage timed between barriers (backends/distributed_worker.py has the
iteration). Gloo on CPUs, NCCL on GPUs. On a CPU host the ranks compute in turns by
default (``DistributedConfig.compute_turns``): devices do not share cores, processes do.
Per-device stage costs are the medians over all timed iterations, and communication
stages include each device's wait for the slowest, as METHOD.md section 1 defines them.

Launching. Start-up (importing torch and FBGEMM, the rendezvous) takes seconds, so a
worker group serves many measurements:

- Spawned (the default): the calling process becomes rank 0 and starts ``D - 1`` worker
  processes (``python -m dreamshard.backends.distributed_worker``) for a task with ``D``
  devices, meeting them at a ``TCPStore`` on a free localhost port. A task with another
  device count tears the group down and starts a new one. ``close()`` (or leaving the
  ``with`` block, or interpreter exit) shuts the workers down.
- Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set):
  that group is used. Rank 0 drives; constructing the backend on any other rank runs the
  worker loop until rank 0 closes its backend and then raises :class:`ServedAsWorker`,
  which the CLI turns into a silent exit 0, so only rank 0 prints and writes files::

      torchrun --nproc_per_node 4 -m dreamshard evaluate --tasks suite.json \\
          --backend distributed

Failures. Every collective has a timeout (``timeout_s``); a spawned worker that exits is
recorded by a thread waiting on it; its peers' collectives fail at once (the connection
closed) and so, in cascade, does rank 0's. The error names the rank that failed first and
why (signal or exit code, the last lines of its stderr); a rank that hangs makes the
others time out and is named as the one still running, with the progress it last
reported to the store. Either way ``measure`` raises BackendError
within about ``timeout_s`` and the group is torn down; the next measurement starts a new
one.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, TypeVar

import numpy as np
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, TCPStore  # typed, unlike torch.distributed

from dreamshard.backends.distributed_worker import (
    EXIT_PEER_FAILURE,
    IDLE_TIMEOUT_S,
    PROGRESS_KEY,
    STAGES,
    CommGridCommand,
    CommPoint,
    MeasureCommand,
    RankGroup,
    RankStageTimes,
    ShutdownCommand,
    TimingSettings,
    add_turn_waits,
    init_rank_group,
    run_comm_grid,
    run_measure,
    send_command,
    serve,
)
from dreamshard.backends.kernels import FBGEMM_KERNEL, select_kernel
from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED
from dreamshard.errors import BackendError, InputError, ServedAsWorker
from dreamshard.types import Placement, PlacementCost, StageCosts, Task

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Backends holding a worker group, closed by close_all() (and at exit). Strong
#: references: a group must be shut down even when its backend is no longer used.
_LIVE: set[DistributedBackend] = set()

#: Lines of a failed worker's stderr quoted in the error.
STDERR_TAIL_LINES = 6

#: Seconds rank 0 waits, after a collective failed, for the failure to reach every
#: worker before it names the culprit (see _SpawnedGroup.failure).
FAILURE_GRACE_S = 3.0


@dataclass(frozen=True)
class DistributedConfig:
    """Settings of the distributed backend.

    Attributes:
        batch_size: Global batch (samples) of one iteration.
        windows: Time windows the repetitions are spread over.
        calls_per_window: Timed iterations per placement per window.
        warmup_calls: Untimed iterations per placement before timing.
        row_cap: Tables with more rows run with this many (None: full size).
        seed: Seed of the generated ids.
        device: ``cpu`` (gloo) or ``cuda`` (NCCL; rank r on GPU r of its host).
        kernel: Fused-operator kernel (backends/kernels.py ``select_kernel``; None: FBGEMM
            where it runs on the device, else torch-fused).
        timeout_s: Timeout of each collective: a failed or hung rank is reported
            within about this many seconds.
        build_timeout_s: Longest wait for the slowest rank to build its operators.
        startup_timeout_s: Longest wait for spawned workers to join the group.
        memory_budget_bytes: Most bytes of weights built at once over all ranks of this
            host; placements beyond it are measured in several rounds.
        compute_turns: Ranks run their forward (and backward) computation one after the
            other instead of at once; the all-to-alls stay real and simultaneous, and each
            device's forward communication still includes its wait for the slowest (added
            from the gathered times, as types.synchronized_costs does). Devices do not
            share compute, but processes on one CPU host do: run at once, two ranks on a
            2-core host shared with other work slowed each other's backward down up to
            2x, so balanced placements looked as slow as unbalanced ones. None (default):
            on for ``cpu``, off for ``cuda`` (one GPU per rank).
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    windows: int = 8
    calls_per_window: int = 8
    warmup_calls: int = 3
    row_cap: int | None = None
    seed: int = DEFAULT_SEED
    device: str = "cpu"
    timeout_s: float = 30.0
    build_timeout_s: float = 600.0
    startup_timeout_s: float = 120.0
    memory_budget_bytes: int = 8 * 2**30
    compute_turns: bool | None = None
    kernel: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.windows < 1 or self.calls_per_window < 1 or self.warmup_calls < 0:
            raise InputError("windows and calls per window must be at least 1")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"unknown device {self.device!r} (use cpu or cuda)")
        if min(self.timeout_s, self.build_timeout_s, self.startup_timeout_s) <= 0:
            raise InputError("distributed timeouts must be positive")

    @property
    def timing(self) -> TimingSettings:
        return TimingSettings(self.windows, self.calls_per_window, self.warmup_calls)

    @property
    def turns(self) -> bool:
        """Whether ranks compute in turns (compute_turns resolved for the device)."""
        return self.device == "cpu" if self.compute_turns is None else self.compute_turns


@dataclass(frozen=True)
class TorchrunEnv:
    """Where this process sits in a group ``torchrun`` started."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int


def torchrun_env() -> TorchrunEnv | None:
    """The torchrun group this process belongs to, or None when not under torchrun."""
    names = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    if not all(n in os.environ for n in names):
        return None
    try:
        return TorchrunEnv(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            master_addr=os.environ["MASTER_ADDR"],
            master_port=int(os.environ["MASTER_PORT"]),
        )
    except ValueError:
        raise InputError(
            "RANK, WORLD_SIZE and MASTER_PORT must be integers (torchrun sets them)"
        ) from None


# ---------------------------------------------------------------------------------------
# Worker groups
# ---------------------------------------------------------------------------------------


@dataclass
class _Death:
    rank: int
    returncode: int
    at: float


class _Group:
    """Rank 0's side of a running worker group."""

    def __init__(self, group: RankGroup) -> None:
        self.rank_group = group
        self.seq = 0

    @property
    def world_size(self) -> int:
        return self.rank_group.world_size

    def post(self, command: MeasureCommand | CommGridCommand | ShutdownCommand) -> None:
        send_command(self.rank_group.store, self.seq, command)
        self.seq += 1

    def progress_of(self, rank: int) -> str:
        store = self.rank_group.store
        key = PROGRESS_KEY.format(rank=rank)
        try:
            if store.check([key]):
                return str(store.get(key).decode())
        except (RuntimeError, dist.DistError):
            pass
        return "nothing reported"

    def diagnose(self, err: BaseException) -> str:
        """Why a collective failed, naming a rank where possible."""
        own = self.progress_of(0)
        behind = [
            f"rank {r} at {self.progress_of(r)!r}"
            for r in range(1, self.world_size)
            if self.progress_of(r) != own
        ]
        where = f"; rank 0 at {own!r}, " + ", ".join(behind) if behind else ""
        return f"a collective failed ({_first_line(err)}){where}"

    def shutdown(self) -> None:
        self.post(ShutdownCommand())
        _destroy()

    def abort(self) -> None:
        _destroy()


class _SpawnedGroup(_Group):
    """A worker group this process started: it is rank 0, the workers its children."""

    def __init__(self, world_size: int, config: DistributedConfig) -> None:
        self._closing = False
        self._deaths: list[_Death] = []
        self._changed = threading.Condition()
        store = TCPStore(
            "127.0.0.1",
            0,
            world_size,
            is_master=True,
            timeout=timedelta(seconds=IDLE_TIMEOUT_S),
            wait_for_workers=False,
        )
        self._store = store
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._stderr: dict[int, IO[bytes]] = {}
        for rank in range(1, world_size):
            err_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _reap
            self._stderr[rank] = err_file
            self.procs[rank] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dreamshard.backends.distributed_worker",
                    f"--rank={rank}",
                    f"--world-size={world_size}",
                    "--host=127.0.0.1",
                    f"--port={store.port}",
                    f"--device={config.device}",
                    f"--timeout-s={config.timeout_s}",
                    f"--build-timeout-s={config.build_timeout_s}",
                    f"--startup-timeout-s={config.startup_timeout_s}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err_file,
                env=_worker_env(),
            )
        for rank, proc in self.procs.items():
            threading.Thread(
                target=self._watch, args=(rank, proc), daemon=True, name=f"watch-rank-{rank}"
            ).start()
        try:
            group = init_rank_group(
                store,
                0,
                world_size,
                config.device,
                config.timeout_s,
                config.build_timeout_s,
                config.startup_timeout_s,
            )
        except (RuntimeError, dist.DistError) as err:
            cause = (
                self.failure(blame_hung=False) or f"the workers did not join ({_first_line(err)})"
            )
            self.abort()
            raise BackendError(
                f"distributed backend: could not start {world_size} ranks: {cause}"
            ) from None
        super().__init__(group)

    def _watch(self, rank: int, proc: subprocess.Popen[bytes]) -> None:
        """Wait for a worker to exit and record when and how (unless we stopped it)."""
        code = proc.wait()
        with self._changed:
            if not self._closing:
                self._deaths.append(_Death(rank, code, time.monotonic()))
            self._changed.notify_all()

    def failure(self, grace_s: float = 0.0, blame_hung: bool = True) -> str | None:
        """The worker to blame for a failed collective, and why; None if none is.

        A worker failure spreads: the ranks that talk to a dead rank fail, then those
        that talk to them, and a rank that hangs makes the others time out. So, after
        waiting up to ``grace_s`` for the others to follow, the culprit is the first
        worker killed by a signal; else (if ``blame_hung``) one still running after others
        exited (it hung); else the first to exit.
        """
        deadline = time.monotonic() + grace_s
        with self._changed:
            while len(self._deaths) < len(self.procs) and not any(
                d.returncode < 0 for d in self._deaths
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            deaths = sorted(self._deaths, key=lambda d: d.at)
        if not deaths:
            return None
        signalled = [d for d in deaths if d.returncode < 0]
        if signalled:
            first = signalled[0]
        else:
            dead = {d.rank for d in deaths}
            hung = [r for r in self.procs if r not in dead]
            if hung and blame_hung:
                return (
                    f"worker rank {hung[0]} stopped responding (it still runs after the other "
                    f"ranks timed out waiting for it; it last reported "
                    f"{self.progress_of(hung[0])!r})"
                )
            first = deaths[0]
        return f"worker rank {first.rank} {_exit_text(first.returncode)}{self._tail(first.rank)}"

    def _tail(self, rank: int) -> str:
        handle = self._stderr.get(rank)
        if handle is None:
            return ""
        try:
            handle.seek(0)
            text = handle.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not lines:
            return "; its stderr is empty"
        return "; its last stderr lines: " + " | ".join(lines[-STDERR_TAIL_LINES:])

    def diagnose(self, err: BaseException) -> str:
        # Give the failure a moment to spread to the other workers (see failure()).
        failure = self.failure(grace_s=FAILURE_GRACE_S)
        if failure is not None:
            return failure
        # Every worker still runs: rank 0's own collective timed out. Blame the workers
        # that reported less progress than rank 0, or all if none did.
        own = self.progress_of(0)
        behind = [r for r in self.procs if self.progress_of(r) != own] or list(self.procs)
        if len(behind) == 1:
            return (
                f"worker rank {behind[0]} stopped responding (rank 0 timed out waiting for "
                f"it: {_first_line(err)}; it last reported {self.progress_of(behind[0])!r})"
            )
        return super().diagnose(err)

    def shutdown(self) -> None:
        with self._changed:
            self._closing = True
        with contextlib.suppress(RuntimeError, dist.DistError):
            self.post(ShutdownCommand())
        self._reap(timeout_s=10.0)
        _destroy()

    def abort(self) -> None:
        with self._changed:
            self._closing = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        self._reap(timeout_s=10.0)
        _destroy()

    def _reap(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for handle in self._stderr.values():
            handle.close()
        self._stderr.clear()


class _TorchrunGroup(_Group):
    """The group torchrun started; this process is its rank 0."""


def _worker_env() -> dict[str, str]:
    """The environment of a spawned worker: ours, minus any torchrun variables, with
    this package importable and one thread per process."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _destroy() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except (RuntimeError, dist.DistError) as err:
            log.warning("destroying the process group failed: %s", err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    if returncode == EXIT_PEER_FAILURE:
        return "stopped because a collective failed (another rank went away)"
    return f"exited with code {returncode}"


# ---------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------


class DistributedBackend:
    """Measures placements with one process per device and real all-to-alls."""

    name = "distributed"

    def __init__(
        self,
        config: DistributedConfig | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Args:
        config: Settings; defaults to DistributedConfig() (CPU, gloo).
        progress: Called with (done, total) timed placement-windows during a measurement.

        Raises:
            ServedAsWorker: On a non-zero torchrun rank, after serving rank 0.
            BackendError: The device or its kernel is missing (kernels.select_kernel).
        """
        self.config = config or DistributedConfig()
        #: The kernel every rank's operator runs on (recorded in the name of the results).
        self.kernel = select_kernel(self.config.device, self.config.kernel)
        if self.kernel != FBGEMM_KERNEL:
            self.name = f"distributed[{self.kernel}]"
        if not dist.is_available():
            raise BackendError("this torch build has no torch.distributed")
        self.progress = progress
        self._group: _Group | None = None
        self._torchrun = torchrun_env()
        if self._torchrun is not None:
            group = self._join_torchrun(self._torchrun)
            if self._torchrun.rank != 0:
                try:
                    serve(group)
                finally:
                    _destroy()
                raise ServedAsWorker(f"rank {self._torchrun.rank} served rank 0")
            self._group = _TorchrunGroup(group)
            _LIVE.add(self)

    def _join_torchrun(self, env: TorchrunEnv) -> RankGroup:
        # torchrun's agent hosts the store at MASTER_PORT; ranks join it as clients.
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = TCPStore(
            env.master_addr,
            env.master_port,
            env.world_size,
            is_master=env.rank == 0 and not agent_store,
            timeout=timedelta(seconds=IDLE_TIMEOUT_S),
        )
        return init_rank_group(
            PrefixStore("dreamshard-backend", store),
            env.rank,
            env.world_size,
            self.config.device,
            self.config.timeout_s,
            self.config.build_timeout_s,
        )

    # -- public API --------------------------------------------------------------------

    @property
    def world_size(self) -> int | None:
        """Ranks of the running group (None when none runs)."""
        return self._group.world_size if self._group is not None else None

    @property
    def worker_pids(self) -> dict[int, int]:
        """Process id of each spawned worker, by rank (empty under torchrun)."""
        if isinstance(self._group, _SpawnedGroup):
            return {r: p.pid for r, p in self._group.procs.items()}
        return {}

    def measure(self, task: Task, placements: Sequence[Placement]) -> list[PlacementCost]:
        """Measure placements of ``task``, one rank per device, interleaved.

        Raises:
            InputError: Under torchrun, the task's device count is not the world size.
            BackendError: A rank failed, hung or could not build its operator.
        """
        for placement in placements:
            placement.validate(task)
        if not placements:
            return []
        results: list[PlacementCost] = []
        for chunk in self._rounds(task, list(placements)):
            command = MeasureCommand(
                task=task,
                placements=tuple(chunk),
                batch_size=self.config.batch_size,
                seed=self.config.seed,
                row_cap=self.config.row_cap,
                timing=self.config.timing,
                compute_turns=self.config.turns,
                kernel=self.kernel,
            )
            group = self._ready(task.num_devices)
            gathered = self._run(
                group, command, functools.partial(run_measure, command, progress=self.progress)
            )
            results.extend(_placement_costs(command, gathered, self.name))
        return results

    def measure_comm(
        self, points: Sequence[CommPoint], timing: TimingSettings | None = None
    ) -> list[float]:
        """Median duration (ms) of the all-to-all at each grid point: the slowest rank's
        time of each call, median over all calls. All points need the same rank count."""
        if not points:
            return []
        world = len(points[0].widths)
        if any(len(p.widths) != world for p in points):
            raise InputError("every comm grid point needs the same number of ranks")
        command = CommGridCommand(points=tuple(points), timing=timing or self.config.timing)
        group = self._ready(world)
        gathered = self._run(group, command, functools.partial(run_comm_grid, command))
        per_rank = np.stack([g.comm_ms for g in sorted(gathered, key=lambda g: g.rank)])
        slowest = per_rank.max(axis=0)  # [point, window, call]
        return [float(np.median(slowest[k])) for k in range(len(points))]

    def close(self) -> None:
        """Shut the worker group down (idempotent)."""
        group, self._group = self._group, None
        _LIVE.discard(self)
        if group is not None:
            group.shutdown()

    def __enter__(self) -> DistributedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _ready(self, world_size: int) -> _Group:
        """A running group of ``world_size`` ranks (started or re-started if need be)."""
        if self._torchrun is not None:
            if world_size != self._torchrun.world_size:
                raise InputError(
                    f"the task has {world_size} devices but torchrun started "
                    f"{self._torchrun.world_size} processes; run with --nproc_per_node "
                    f"{world_size} (one process per device)"
                )
            if self._group is None:
                raise BackendError("distributed backend: the torchrun group was closed")
            return self._group
        if self._group is not None and self._group.world_size != world_size:
            self.close()
        if self._group is None:
            if dist.is_initialized():
                raise BackendError(
                    "distributed backend: torch.distributed is already initialised in this "
                    "process (another backend or program uses it); close it first"
                )
            start = time.perf_counter()
            self._group = _SpawnedGroup(world_size, self.config)
            _LIVE.add(self)
            log.info("started %d ranks in %.1f s", world_size, time.perf_counter() - start)
        return self._group

    def _run(
        self,
        group: _Group,
        command: MeasureCommand | CommGridCommand,
        own: Callable[[RankGroup], list[_T] | None],
    ) -> list[_T]:
        """Post ``command`` to the workers, run rank 0's part, return the gathered results.

        A failure that every rank saw alike (BackendError: an operator could not be built)
        leaves the group running; any other tears it down and names the culprit.
        """
        try:
            group.post(command)
            gathered = own(group.rank_group)
        except BackendError:
            raise
        except (RuntimeError, dist.DistError) as err:
            cause = group.diagnose(err)
            self._group = None
            _LIVE.discard(self)
            group.abort()
            raise BackendError(f"distributed backend: {cause}") from None
        except BaseException:
            self._group = None
            _LIVE.discard(self)
            group.abort()
            raise
        if gathered is None:
            raise BackendError("distributed backend: rank 0 received no results")
        return gathered

    def _rounds(self, task: Task, placements: list[Placement]) -> list[list[Placement]]:
        """Placements in rounds whose distinct shards fit the memory budget together."""
        budget = self.config.memory_budget_bytes
        rounds: list[list[Placement]] = [[]]
        seen: set[tuple[int, tuple[int, ...]]] = set()
        used = 0
        for placement in placements:
            new = [
                (d, tuple(idx))
                for d, idx in enumerate(placement.shards(task.num_devices))
                if idx and (d, tuple(idx)) not in seen
            ]
            need = sum(task.tables[i].size_bytes for _, idx in new for i in idx)
            if rounds[-1] and used + need > budget:
                rounds.append([])
                seen.clear()
                used = 0
                new = [
                    (d, tuple(idx))
                    for d, idx in enumerate(placement.shards(task.num_devices))
                    if idx
                ]
                need = sum(task.tables[i].size_bytes for _, idx in new for i in idx)
            rounds[-1].append(placement)
            seen.update(new)
            used += need
        return rounds


def _placement_costs(
    command: MeasureCommand, gathered: Sequence[RankStageTimes], backend: str
) -> list[PlacementCost]:
    """Per-device medians of each stage, and the spread of the cost across windows."""
    ranks = sorted(gathered, key=lambda g: g.rank)
    times = np.stack([g.stage_ms for g in ranks])  # [device, placement, window, call, stage]
    if command.compute_turns:
        times = add_turn_waits(times)
    out = []
    for k in range(len(command.placements)):
        per_device = tuple(
            StageCosts(
                **{stage: float(np.median(times[d, k, :, :, s])) for s, stage in enumerate(STAGES)}
            )
            for d in range(times.shape[0])
        )
        window_costs = [
            float(np.median(times[:, k, w, :, :], axis=1).sum(axis=1).max())
            for w in range(times.shape[2])
        ]
        mean = statistics.fmean(window_costs)
        out.append(
            PlacementCost(
                per_device=per_device,
                backend=backend,
                rel_spread=float(np.std(window_costs)) / mean if mean > 0 else 0.0,
                window_costs_ms=tuple(window_costs),
            )
        )
    return out


def close_all() -> None:
    """Close every distributed backend of this process (the CLI does after each command,
    so that no worker outlives it; also run at interpreter exit)."""
    for backend in list(_LIVE):
        backend.close()


atexit.register(close_all)
