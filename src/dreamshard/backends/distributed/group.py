"""The group of rank processes of the ``distributed`` backend: joining it, and rank 0's
side of it.

Every rank joins the process group with :func:`init_rank_group` (gloo on CPU; NCCL plus a
gloo control group on CUDA) and holds its place in it as a :class:`RankGroup`. Rank 0
drives a :class:`WorkerGroup`: a :class:`SpawnedGroup` when it starts the workers itself
(``python -m dreamshard.backends.distributed.worker``, one child process per further rank,
watched by a thread each, their stderr kept to quote when one fails), or a
:class:`TorchrunGroup` when ``torchrun`` started them (:func:`torchrun_env`,
:func:`join_torchrun`). Either posts commands to the workers, names the rank to blame
when a collective fails, and shuts the workers down or kills them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import (
    PrefixStore,
    Store,
    TCPStore,
)  # typed, unlike torch.distributed

from dreamshard.backends.distributed.protocol import (
    EXIT_PEER_FAILURE,
    IDLE_TIMEOUT_S,
    PG_PREFIX,
    PROGRESS_KEY,
    CommGridCommand,
    MeasureCommand,
    ShutdownCommand,
    send_command,
)
from dreamshard.errors import BackendError, InputError

log = logging.getLogger(__name__)

#: Lines of a failed worker's stderr quoted in the error.
STDERR_TAIL_LINES = 6

#: Seconds rank 0 waits, after a collective failed, for the failure to reach every
#: worker before it names the culprit (see SpawnedGroup.failure).
FAILURE_GRACE_S = 3.0


# ---------------------------------------------------------------------------------------
# The group a rank belongs to
# ---------------------------------------------------------------------------------------


@dataclass
class RankGroup:
    """This process's place in the worker group.

    Attributes:
        rank: This process's rank; rank 0 drives.
        world_size: Ranks in the group (= devices of the tasks measured).
        store: The rendezvous store (commands and progress reports go through it).
        device: ``cpu`` (gloo) or ``cuda`` (NCCL for the timed collectives).
        control: Gloo group for objects and monitored barriers (None: the default group,
            which is gloo on CPU).
        build_timeout_s: Longest wait for the slowest rank to build its operators.
    """

    rank: int
    world_size: int
    store: Store
    device: str
    control: dist.ProcessGroup | None
    build_timeout_s: float

    @property
    def torch_device(self) -> torch.device:
        if self.device == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def report(self, what: str) -> None:
        """Record how far this rank got (read by rank 0 to name a rank that hangs)."""
        self.store.set(PROGRESS_KEY.format(rank=self.rank), what)

    def sync(self) -> None:
        """Wait for queued device work (CUDA) so that host clocks time it."""
        if self.device == "cuda":
            torch.cuda.synchronize()


def init_rank_group(
    store: Store,
    rank: int,
    world_size: int,
    device: str,
    timeout_s: float,
    build_timeout_s: float,
    startup_timeout_s: float | None = None,
) -> RankGroup:
    """Join the process group: gloo on CPU; NCCL on CUDA plus a gloo control group.

    Args:
        store: Rendezvous store shared by all ranks.
        rank: This process's rank.
        world_size: Ranks in the group.
        device: ``cpu`` or ``cuda``.
        timeout_s: Timeout of every collective (a rank that fails or hangs is noticed
            within it).
        build_timeout_s: Longest wait for the slowest rank to build its operators.
        startup_timeout_s: Longest wait for all ranks to join (start-up imports torch and
            FBGEMM); None: ``timeout_s``.
    """
    timeout = timedelta(seconds=timeout_s)
    startup = timedelta(seconds=startup_timeout_s if startup_timeout_s else timeout_s)
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        store=PrefixStore(PG_PREFIX, store),
        rank=rank,
        world_size=world_size,
        timeout=startup,
    )
    control = dist.new_group(backend="gloo", timeout=startup) if device == "cuda" else None
    # Joining may take long; from now on every collective has the short timeout.
    for pg in (dist.group.WORLD, control):
        if pg is not None:
            pg.set_timeout(timeout)
    return RankGroup(rank, world_size, store, device, control, build_timeout_s)


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


def join_torchrun(
    env: TorchrunEnv, device: str, timeout_s: float, build_timeout_s: float
) -> RankGroup:
    """Join the group ``torchrun`` started, at the rank it gave this process.

    Args:
        env: This process's place in the torchrun group (:func:`torchrun_env`).
        device: ``cpu`` or ``cuda``.
        timeout_s: Timeout of every collective.
        build_timeout_s: Longest wait for the slowest rank to build its operators.
    """
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
        device,
        timeout_s,
        build_timeout_s,
    )


# ---------------------------------------------------------------------------------------
# Worker groups
# ---------------------------------------------------------------------------------------


@dataclass
class _Death:
    rank: int
    returncode: int
    at: float


class WorkerGroup:
    """Rank 0's side of a running worker group."""

    def __init__(self, group: RankGroup) -> None:
        self.rank_group = group
        self.seq = 0

    @property
    def world_size(self) -> int:
        """Ranks of the group."""
        return self.rank_group.world_size

    def post(self, command: MeasureCommand | CommGridCommand | ShutdownCommand) -> None:
        """Post the next command for the workers."""
        send_command(self.rank_group.store, self.seq, command)
        self.seq += 1

    def progress_of(self, rank: int) -> str:
        """What ``rank`` last reported to the store (``RankGroup.report``)."""
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
        """Tell the workers to leave their loop, and leave the process group."""
        self.post(ShutdownCommand())
        leave_process_group()

    def abort(self) -> None:
        """Leave the process group without telling the workers (a collective failed)."""
        leave_process_group()


class SpawnedGroup(WorkerGroup):
    """A worker group this process started: it is rank 0, the workers its children."""

    def __init__(
        self,
        world_size: int,
        device: str,
        timeout_s: float,
        build_timeout_s: float,
        startup_timeout_s: float,
    ) -> None:
        """Start ``world_size - 1`` workers and join them as rank 0.

        Args:
            world_size: Ranks of the group, this process included.
            device: ``cpu`` (gloo) or ``cuda`` (NCCL).
            timeout_s: Timeout of every collective.
            build_timeout_s: Longest wait for the slowest rank to build its operators.
            startup_timeout_s: Longest wait for the workers to join.

        Raises:
            BackendError: The workers did not join (the error names the one to blame).
        """
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
                    "dreamshard.backends.distributed.worker",
                    f"--rank={rank}",
                    f"--world-size={world_size}",
                    "--host=127.0.0.1",
                    f"--port={store.port}",
                    f"--device={device}",
                    f"--timeout-s={timeout_s}",
                    f"--build-timeout-s={build_timeout_s}",
                    f"--startup-timeout-s={startup_timeout_s}",
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
                device,
                timeout_s,
                build_timeout_s,
                startup_timeout_s,
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
        leave_process_group()

    def abort(self) -> None:
        with self._changed:
            self._closing = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        self._reap(timeout_s=10.0)
        leave_process_group()

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


class TorchrunGroup(WorkerGroup):
    """The group torchrun started; this process is its rank 0."""


def _worker_env() -> dict[str, str]:
    """The environment of a spawned worker: ours, minus any torchrun variables, with
    this package importable and one thread per process."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    # This file is <root>/dreamshard/backends/distributed/group.py.
    package_root = str(Path(os.path.abspath(__file__)).parents[3])
    paths = [package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def leave_process_group() -> None:
    """Destroy this process's process group, if any (a failure is logged, not raised)."""
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
