"""The distributed backend with real gloo processes on this CPU: costs, empty devices,
failures named by rank, the world-size check, the CLI, and the all-to-all timings."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from dreamshard.backends.distributed.backend import DistributedBackend, DistributedConfig
from dreamshard.backends.distributed.protocol import CommPoint, TimingSettings
from dreamshard.backends.distributed.worker import add_turn_waits, batch_slices
from dreamshard.data.tables import save_tables
from dreamshard.errors import BackendError, InputError
from dreamshard.types import Placement, Task

from .conftest import table, task
from .test_cli import assert_one_line_error, run

#: Tiny measurements: a few iterations of a small batch.
FAST = DistributedConfig(batch_size=256, windows=2, calls_per_window=2, warmup_calls=1)
MEMORY = [10**8, 10**8]


def small_task(num_devices: int = 2) -> Task:
    tables = [table(f"t{i}", rows=500 * (i + 1), dim=8 * (i % 3 + 1)) for i in range(4)]
    return task(tables, [10**8] * num_devices)


@pytest.fixture(scope="class")
def backend() -> Iterator[DistributedBackend]:
    """One 2-rank group for a class's tests (start-up takes seconds)."""
    with DistributedBackend(FAST) as b:
        yield b


def test_batch_slices_cover_the_batch() -> None:
    assert batch_slices(10, 4) == [3, 3, 2, 2]
    assert sum(batch_slices(4096, 3)) == 4096


class TestOneGroup:
    """Tests sharing one running 2-rank group (torch.distributed allows one per process)."""

    def test_costs_are_positive_and_per_device(self, backend: DistributedBackend) -> None:
        t = small_task()
        (cost,) = backend.measure(t, [Placement((0, 1, 0, 1))])
        assert backend.world_size == 2 and len(backend.worker_pids) == 1
        assert cost.backend == "distributed"
        assert len(cost.per_device) == 2
        for stage in cost.per_device:
            assert stage.fwd_comp_ms > 0 and stage.bwd_comp_ms > 0
            assert stage.fwd_comm_ms > 0 and stage.bwd_comm_ms > 0
        assert cost.cost_ms == max(s.total_ms for s in cost.per_device)
        assert len(cost.window_costs_ms) == FAST.windows
        assert cost.rel_spread is not None and cost.rel_spread >= 0

    def test_a_device_without_tables_still_communicates(self, backend: DistributedBackend) -> None:
        t = small_task()
        costs = backend.measure(t, [Placement((0, 0, 0, 0)), Placement((1, 1, 1, 1))])
        for cost, empty in zip(costs, (1, 0), strict=True):
            idle = cost.per_device[empty]
            busy = cost.per_device[1 - empty]
            assert idle.fwd_comp_ms == 0.0 and idle.bwd_comp_ms == 0.0
            # It waits for the other device's forward and receives its pooled embeddings.
            assert idle.fwd_comm_ms > 0 and idle.bwd_comm_ms > 0
            assert busy.fwd_comp_ms > 0 and busy.bwd_comp_ms > 0

    def test_invalid_placement_is_rejected_before_measuring(
        self, backend: DistributedBackend
    ) -> None:
        with pytest.raises(Exception, match="device 2"):
            backend.measure(small_task(), [Placement((0, 1, 2, 0))])

    def test_all_to_all_time_grows_with_volume(self, backend: DistributedBackend) -> None:
        small, large = backend.measure_comm(
            [CommPoint(256, (8, 8)), CommPoint(8192, (512, 512))], TimingSettings(2, 3, 1)
        )
        assert 0 < small < large

    def test_comm_points_must_match_in_rank_count(self, backend: DistributedBackend) -> None:
        with pytest.raises(InputError, match="same number of ranks"):
            backend.measure_comm([CommPoint(256, (8, 8)), CommPoint(256, (8, 8, 8))])


def test_turn_waits_are_added_to_forward_communication() -> None:
    # [device, stage]: device 1 computes 3 ms longer, so device 0 waits 3 ms.
    times = np.array([[1.0, 0.5, 0.4, 2.0], [4.0, 0.5, 0.4, 1.0]])
    assert add_turn_waits(times).tolist() == [[1.0, 3.5, 0.4, 2.0], [4.0, 0.5, 0.4, 1.0]]


@pytest.mark.slow
def test_four_ranks_computing_at_once_and_group_restart() -> None:
    """A task with another device count gets a new group of the right size."""
    with DistributedBackend(replace(FAST, compute_turns=False)) as b:
        (two,) = b.measure(small_task(2), [Placement((0, 1, 0, 1))])
        (four,) = b.measure(small_task(4), [Placement((0, 1, 2, 3))])
        assert b.world_size == 4 and len(b.worker_pids) == 3
    assert len(two.per_device) == 2 and len(four.per_device) == 4
    assert all(s.fwd_comp_ms > 0 for s in four.per_device)
    assert not dist.is_initialized()


def test_ranks_run_the_kernel_asked_for() -> None:
    with DistributedBackend(replace(FAST, kernel="torch-fused")) as b:
        assert b.kernel == "torch-fused"
        (cost,) = b.measure(small_task(2), [Placement((0, 1, 0, 1))])
    assert cost.backend == "distributed[torch-fused]"
    assert all(s.fwd_comp_ms > 0 and s.bwd_comp_ms > 0 for s in cost.per_device)


def test_unknown_kernel_is_refused_before_starting_workers() -> None:
    with pytest.raises(BackendError, match="unknown kernel 'magic'"):
        DistributedBackend(replace(FAST, kernel="magic"))


def _signal_later(pid: int, sig: signal.Signals, delay_s: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay_s), os.kill(pid, sig)))
    thread.start()
    return thread


@pytest.mark.slow
def test_killed_worker_is_named_and_the_backend_recovers() -> None:
    config = DistributedConfig(batch_size=256, windows=5000, calls_per_window=2, timeout_s=5.0)
    t = small_task()
    with DistributedBackend(config) as b:
        b.measure_comm([CommPoint(256, (8, 8))], TimingSettings(1, 1, 0))  # start the group
        killer = _signal_later(b.worker_pids[1], signal.SIGKILL, 1.0)
        start = time.perf_counter()
        with pytest.raises(BackendError, match=r"worker rank 1 was killed by SIGKILL"):
            b.measure(t, [Placement((0, 1, 0, 1))])
        assert time.perf_counter() - start < 15.0
        killer.join()
        assert b.world_size is None and not dist.is_initialized()
        # The next measurement starts a fresh group.
        small = b.measure_comm([CommPoint(256, (8, 8))], TimingSettings(1, 2, 0))
        assert small[0] > 0


@pytest.mark.slow
def test_hung_worker_is_named_within_the_timeout() -> None:
    config = DistributedConfig(batch_size=256, windows=5000, calls_per_window=2, timeout_s=2.0)
    with DistributedBackend(config) as b:
        b.measure_comm([CommPoint(256, (8, 8))], TimingSettings(1, 1, 0))
        pid = b.worker_pids[1]
        stopper = _signal_later(pid, signal.SIGSTOP, 1.0)
        start = time.perf_counter()
        try:
            with pytest.raises(BackendError, match=r"worker rank 1 stopped responding"):
                b.measure(small_task(), [Placement((0, 1, 0, 1))])
            assert time.perf_counter() - start < 15.0
        finally:
            stopper.join()
            with contextlib.suppress(ProcessLookupError):  # the teardown killed it
                os.kill(pid, signal.SIGCONT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_world_size_must_match_the_device_count_under_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 of a 1-process torchrun group asked to measure a 2-device task: exit 2."""
    for name, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }.items():
        monkeypatch.setenv(name, value)
    tables = tmp_path / "tables.json"
    save_tables(tables, small_task().tables)
    result = run(
        "place", "--tables", tables, "--devices", "2", "--memory", "1GB",
        "--backend", "distributed", "--windows", "1", "--calls", "1", "--batch-size", "64",
    )  # fmt: skip
    assert_one_line_error(result, "2 devices", "torchrun started 1 processes")
    assert not dist.is_initialized()


def test_cli_place_on_the_distributed_backend(tmp_path: Path) -> None:
    tables = tmp_path / "tables.json"
    save_tables(tables, small_task().tables)
    out = tmp_path / "placement.json"
    result = run(
        "place", "--tables", tables, "--devices", "2", "--memory", "1GB",
        "--backend", "distributed", "--windows", "1", "--calls", "1", "--batch-size", "64",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "distributed" in out.read_text()
    assert not dist.is_initialized()
