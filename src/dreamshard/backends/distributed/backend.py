"""The ``distributed`` cost backend: one process per device, real collectives.

METHOD.md section 5, "Hardware, distributed": every device of a task is one process
(rank) that builds its device's fused FBGEMM operator and runs training iterations of the
embedding part, forward, the all-to-all of pooled embeddings split by each rank's output
widths, the backward all-to-all of their gradients and the backward with the fused sparse
update, each stage timed between barriers (backends/distributed/worker.py has the
iteration). Row-wise tables exchange their partial pooled sums as TorchRec does, with a
reduce-scatter beside the forward all-to-all and an all-gather beside the backward one.
Gloo on CPUs, NCCL on GPUs. On a CPU host the ranks compute in turns by
default (``DistributedConfig.compute_turns``): devices do not share cores, processes do.
Per-device stage costs are the medians over all timed iterations, and communication
stages include each device's wait for the slowest, as METHOD.md section 1 defines them.

Launching. Start-up (importing torch and FBGEMM, the rendezvous) takes seconds, so a
worker group serves many measurements:

- Spawned (the default): the calling process becomes rank 0 and starts ``D - 1`` worker
  processes (``python -m dreamshard.backends.distributed.worker``) for a task with ``D``
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

This module holds the settings (:class:`DistributedConfig`), the backend and
:func:`close_all`; starting, watching and stopping the ranks is ``group.py``'s part.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch.distributed as dist

from dreamshard.backends.base import assess_conditions, load_average
from dreamshard.backends.distributed.group import (
    RankGroup,
    SpawnedGroup,
    TorchrunGroup,
    WorkerGroup,
    join_torchrun,
    leave_process_group,
    torchrun_env,
)
from dreamshard.backends.distributed.protocol import (
    STAGES,
    CommGridCommand,
    CommPoint,
    MeasureCommand,
    RankStageTimes,
    TimingSettings,
)
from dreamshard.backends.distributed.worker import (
    add_turn_waits,
    run_comm_grid,
    run_measure,
    serve,
)
from dreamshard.backends.kernels import FBGEMM_KERNEL, select_kernel
from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED, DEVICE_TYPES
from dreamshard.errors import BackendError, InputError, ServedAsWorker
from dreamshard.types import (
    MeasurementConditions,
    Placement,
    PlacementCost,
    StageCosts,
    TableSpec,
    Task,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Backends holding a worker group, closed by close_all() (and at exit). Strong
#: references: a group must be shut down even when its backend is no longer used.
_LIVE: set[DistributedBackend] = set()


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
        if self.device not in DEVICE_TYPES:
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


# ---------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------


class DistributedBackend:
    """Measures placements with one process per device and real collectives."""

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
        self._group: WorkerGroup | None = None
        self._torchrun = torchrun_env()
        if self._torchrun is not None:
            group = join_torchrun(
                self._torchrun,
                self.config.device,
                self.config.timeout_s,
                self.config.build_timeout_s,
            )
            if self._torchrun.rank != 0:
                try:
                    serve(group)
                finally:
                    leave_process_group()
                raise ServedAsWorker(f"rank {self._torchrun.rank} served rank 0")
            self._group = TorchrunGroup(group)
            _LIVE.add(self)

    # -- public API --------------------------------------------------------------------

    @property
    def world_size(self) -> int | None:
        """Ranks of the running group (None when none runs)."""
        return self._group.world_size if self._group is not None else None

    @property
    def worker_pids(self) -> dict[int, int]:
        """Process id of each spawned worker, by rank (empty under torchrun)."""
        if isinstance(self._group, SpawnedGroup):
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

    def conditions(self) -> MeasurementConditions:
        """Signs of a loaded machine: the load average now, beyond the cores the ranks
        themselves keep busy (this backend times no reference shard)."""
        cpus = os.cpu_count() or 1
        ranks = self.world_size or 1
        return assess_conditions([], None, load_average(), cpus, measuring_cores=min(ranks, cpus))

    def measure_comm(
        self, points: Sequence[CommPoint], timing: TimingSettings | None = None
    ) -> list[float]:
        """Median duration (ms) of each grid point's collective (all-to-all, reduce-scatter
        or all-gather): the slowest rank's time of each call, median over all calls. All
        points need the same rank count."""
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

    def _ready(self, world_size: int) -> WorkerGroup:
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
            cfg = self.config
            self._group = SpawnedGroup(
                world_size,
                cfg.device,
                cfg.timeout_s,
                cfg.build_timeout_s,
                cfg.startup_timeout_s,
            )
            _LIVE.add(self)
            log.info("started %d ranks in %.1f s", world_size, time.perf_counter() - start)
        return self._group

    def _run(
        self,
        group: WorkerGroup,
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
        # A device's operator is known by its device and its tables and shards (not their
        # names: two splits of one table share shard names).
        seen: set[tuple[int, tuple[TableSpec, ...]]] = set()
        used = 0
        for placement in placements:
            units = placement.units(task)
            ops = {
                (d, tuple(units[i] for i in idx)): sum(units[i].size_bytes for i in idx)
                for d, idx in enumerate(placement.shards(task.num_devices))
                if idx
            }
            need = sum(size for op, size in ops.items() if op not in seen)
            if rounds[-1] and used + need > budget:
                rounds.append([])
                seen.clear()
                used = 0
                need = sum(ops.values())
            rounds[-1].append(placement)
            seen.update(ops)
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
