"""The distributed backend with real gloo processes on this CPU: costs, empty devices,
split tables (the row-wise reduce-scatter and all-gather; table-row-wise on 2 hosts of
2 ranks), failures named by rank, the world-size check, the CLI, and the collectives'
timings."""

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
import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp

from dreamshard.backends.distributed.backend import DistributedBackend, DistributedConfig
from dreamshard.backends.distributed.protocol import CommPoint, TimingSettings
from dreamshard.backends.distributed.worker import (
    add_turn_waits,
    all_gather_rows,
    batch_slices,
    host_groups,
    host_row_exchange,
    host_rows_backward,
    host_rows_forward,
    placement_exchange,
    rank_units,
    reduce_scatter_rows,
    row_exchange,
)
from dreamshard.data.tables import save_tables
from dreamshard.errors import BackendError, InputError
from dreamshard.types import Placement, TableSplit, Task, row_split_sizes

from .conftest import table, task
from .test_cli import assert_one_line_error, run

#: Tiny measurements: a few iterations of a small batch.
FAST = DistributedConfig(batch_size=256, windows=2, calls_per_window=2, warmup_calls=1)
MEMORY = [10**8, 10**8]


def small_task(num_devices: int = 2) -> Task:
    tables = [table(f"t{i}", rows=500 * (i + 1), dim=8 * (i % 3 + 1)) for i in range(4)]
    return task(tables, [10**8] * num_devices)


def split_placement(t: Task) -> Placement:
    """t0 (500 x 8) split row-wise over both devices, t1 (dim 16) into two column shards;
    units t0#r0 t0#r1 t1#c0 t1#c1 t2 t3."""
    splits = (
        TableSplit(0, "row", row_split_sizes(t.tables[0].rows, t.num_devices)),
        TableSplit(1, "column", (8, 8)),
    )
    return Placement((0, 1, 0, 1, 0, 1), splits)


@pytest.fixture(scope="class")
def backend() -> Iterator[DistributedBackend]:
    """One 2-rank group for a class's tests (start-up takes seconds)."""
    with DistributedBackend(FAST) as b:
        yield b


def test_batch_slices_cover_the_batch() -> None:
    assert batch_slices(10, 4) == [3, 3, 2, 2]
    assert sum(batch_slices(4096, 3)) == 4096


def test_row_shards_leave_the_all_to_all_for_a_reduce_scatter() -> None:
    t = small_task()  # dims 8, 16, 24, 8
    cpu = torch.device("cpu")
    placement = split_placement(t)
    # Rank 0: t1#c0 (8), t2 (24), then its row block t0#r0 (8) last.
    assert [u.name for u in rank_units(t, placement, 0)] == ["t1#c0", "t2", "t0#r0"]
    exchange = placement_exchange(t, placement, 0, 16, cpu)
    assert exchange.width == 32 and exchange.all_to_all
    assert exchange.send_splits == [8 * 32, 8 * 32]
    assert exchange.recv_splits == [8 * 32, 8 * 16]  # rank 1: t1#c1 (8) + t3 (8)
    assert exchange.rows is not None and exchange.rows.width == 8
    # Table-wise (and column-wise only) placements run no second collective.
    assert placement_exchange(t, Placement((0, 1, 0, 1)), 0, 16, cpu).rows is None
    column_only = Placement((0, 1, 0, 0, 1), (TableSplit(1, "column", (8, 8)),))
    assert placement_exchange(t, column_only, 1, 16, cpu).rows is None


def _row_collectives_rank(rank: int, port: int, world: int) -> None:
    """One rank of test_row_collectives_sum_and_gather: asserts, so a wrong value fails
    the spawned process and with it the test."""
    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        width = 4
        for batch in (6, 7):  # even slices (2, 2, 2); uneven (3, 2, 2)
            rows = row_exchange(width, rank, batch, world, torch.device("cpu"))
            base = torch.arange(batch * width, dtype=torch.float32).view(batch, width)
            partial = base * (rank + 1)  # the sum over ranks: base * (1 + 2 + 3)
            start = sum(rows.slices[:rank])
            expected = 6 * base[start : start + rows.slices[rank]]
            assert torch.equal(reduce_scatter_rows(rows, partial), expected)
            # Every rank's gradient slice holds its rank + 1 (the padding -1); the gather
            # has them in rank order without padding.
            rows.grad_slice.fill_(-1.0)
            rows.grad_slice[: rows.slices[rank] * width] = rank + 1.0
            gathered = all_gather_rows(rows)
            owner = torch.repeat_interleave(torch.arange(world), torch.tensor(rows.slices))
            assert torch.equal(gathered, (owner + 1.0)[:, None].expand(batch, width))
    finally:
        dist.destroy_process_group()


def test_row_collectives_sum_and_gather() -> None:
    """Reduce-scatter: each rank gets the sum of the partials over its batch slice;
    all-gather: every rank gets all slices in rank order (even and uneven slices, the
    padded slice in the middle)."""
    torch_mp.spawn(_row_collectives_rank, args=(_free_port(), 3), nprocs=3)


def two_host_placement() -> tuple[Task, Placement]:
    """4 devices on 2 hosts of 2: t0 (500 x 8) table-row-wise on host 1 (blocks on
    devices 2 and 3), t1 (dim 16) row-wise over all 4, t2 and t3 whole on devices 0 and
    3; units t0#h0 t0#h1 t1#r0..t1#r3 t2 t3."""
    t = replace(small_task(4), devices_per_host=2)
    splits = (
        TableSplit(0, "table_row", row_split_sizes(500, 2), host=1),
        TableSplit(1, "row", row_split_sizes(1000, 4)),
    )
    return t, Placement((2, 3, 0, 1, 2, 3, 0, 3), splits)


def test_table_row_blocks_come_last_and_their_exchange_is_per_host() -> None:
    t, placement = two_host_placement()
    placement.validate(t)
    cpu = torch.device("cpu")
    # Rank 3: the whole table t3 (dim 8), its row-wise block, its table-row-wise block.
    assert [u.name for u in rank_units(t, placement, 3)] == ["t3", "t1#r3", "t0#h1"]
    exchange = placement_exchange(t, placement, 3, 16, cpu)
    assert exchange.width == 8 and exchange.rows is not None and exchange.rows.width == 16
    host = exchange.host_rows
    assert host is not None and host.width == 8 and host.intra is not None
    # Local rank 1 of host 1 keeps samples 8..15 of the batch, and sends half of them to
    # each host; host 0 has no table-row-wise columns, so it sends nothing back.
    assert host.intra.slices == [8, 8] and host.send_splits == [4 * 8, 4 * 8]
    assert host.recv_splits == [0, 4 * 8] and host.grad_in.numel() == 8 * 8
    # Rank 0 (host 0) skips the reduce-scatter but receives host 1's columns.
    zero = placement_exchange(t, placement, 0, 16, cpu).host_rows
    assert zero is not None and zero.width == 0 and zero.intra is None
    assert zero.send_splits == [0, 0] and zero.recv_splits == [0, 4 * 8]


def _host_rows_rank(rank: int, port: int) -> None:
    """One rank of test_table_row_collectives_sum_within_hosts_and_cross: asserts, so a
    wrong value fails the spawned process and with it the test."""
    world, host_size, batch = 4, 2, 8
    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        intra, cross = host_groups(world, host_size)
        host, local = divmod(rank, host_size)
        widths = [4, 8]  # host 0's table-row-wise columns, host 1's
        exchange = host_row_exchange(
            widths, rank, host_size, batch, torch.device("cpu"), (intra[host], cross[local])
        )
        base = torch.arange(batch * widths[host], dtype=torch.float32).view(batch, -1)
        host_forward_partial = base * (rank + 1)
        host_rows_forward(exchange, host_forward_partial)
        # This rank's part: samples local*4 + host*2 .. +2 of the batch; from host g it
        # gets the sum over g's two ranks (2g+1 + 2g+2) of g's base on those samples.
        first = local * 4 + host * 2
        expected = []
        for g, w in enumerate(widths):
            g_base = torch.arange(batch * w, dtype=torch.float32).view(batch, w)
            expected.append(((4 * g + 3) * g_base[first : first + 2]).reshape(-1))
        assert torch.equal(exchange.recv, torch.cat(expected))
        grad = host_rows_backward(exchange)
        assert grad is not None and grad.shape == (batch, widths[host])
    finally:
        dist.destroy_process_group()


def test_table_row_collectives_sum_within_hosts_and_cross() -> None:
    """2 hosts of 2 gloo ranks: the reduce-scatter sums each host's partials over its
    own ranks, the all-to-all across hosts hands each rank every host's columns for its
    part of the batch, and backward gives every rank its host's whole-batch gradient."""
    torch_mp.spawn(_host_rows_rank, args=(_free_port(),), nprocs=4)


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

    def test_row_and_column_split_placement(self, backend: DistributedBackend) -> None:
        t = small_task()
        split, whole = backend.measure(t, [split_placement(t), Placement((0, 1, 0, 1))])
        for cost in (split, whole):
            assert len(cost.per_device) == 2
            for stage in cost.per_device:
                assert min(stage.fwd_comp_ms, stage.fwd_comm_ms) > 0
                assert min(stage.bwd_comm_ms, stage.bwd_comp_ms) > 0

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

    def test_row_wise_collectives_are_timed(self, backend: DistributedBackend) -> None:
        points = [CommPoint(256, (8, 8), c) for c in ("reduce_scatter", "all_gather")]
        assert all(ms > 0 for ms in backend.measure_comm(points, TimingSettings(1, 2, 1)))

    def test_comm_points_must_match_in_rank_count(self, backend: DistributedBackend) -> None:
        with pytest.raises(InputError, match="same number of ranks"):
            backend.measure_comm([CommPoint(256, (8, 8)), CommPoint(256, (8, 8, 8))])


def test_row_wise_comm_points_need_one_width() -> None:
    with pytest.raises(InputError, match="same positive width"):
        CommPoint(256, (8, 16), "reduce_scatter")
    with pytest.raises(InputError, match="unknown collective"):
        CommPoint(256, (8, 8), "broadcast")


def test_turn_waits_are_added_to_forward_communication() -> None:
    # [device, stage]: device 1 computes 3 ms longer, so device 0 waits 3 ms.
    times = np.array([[1.0, 0.5, 0.4, 2.0], [4.0, 0.5, 0.4, 1.0]])
    assert add_turn_waits(times).tolist() == [[1.0, 3.5, 0.4, 2.0], [4.0, 0.5, 0.4, 1.0]]


@pytest.mark.slow
def test_table_row_wise_placement_is_measured_on_two_hosts() -> None:
    t, placement = two_host_placement()
    with DistributedBackend(replace(FAST, compute_turns=False)) as b:
        split, whole = b.measure(t, [placement, Placement((0, 1, 2, 3))])
    for cost in (split, whole):
        assert len(cost.per_device) == 4
        assert all(s.fwd_comm_ms > 0 and s.bwd_comm_ms > 0 for s in cost.per_device)
    # Devices 2 and 3 hold t0's blocks: they compute; so do all with t1's blocks.
    assert all(s.fwd_comp_ms > 0 for s in split.per_device)


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
        # Once measured, the task's ids are cached in the workers and its next build takes
        # milliseconds: the stop lands in the timed phase (timeout_s), not in the build,
        # whose barrier waits up to build_timeout_s (it once did, on a loaded machine).
        quick = DistributedConfig(batch_size=256, windows=1, calls_per_window=1, timeout_s=2.0)
        b.config = quick
        b.measure(small_task(), [Placement((0, 1, 0, 1))])
        b.config = config
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
