"""One rank of the ``distributed`` backend: what every process of the group runs.

Every rank (the driving rank 0 included) executes the same *commands* in the same order,
so that their collectives match:

- :class:`MeasureCommand`: build this rank's fused operator for each placement (its
  device's tables, ids from :func:`dreamshard.data.ids.table_ids`), then time training
  iterations of the embedding part (METHOD.md section 1), each one::

      barrier
      forward of the fused operator                     -> fwd_comp
      all-to-all of the pooled embeddings               -> fwd_comm (waits for the slowest)
        (+ reduce-scatter of the row shards' partial sums)
      barrier
      all-to-all of their gradients (reverse direction) -> bwd_comm
        (+ all-gather of the row-wise outputs' gradients)
      backward with the fused sparse update             -> bwd_comp

  Row-wise tables are exchanged as TorchRec does (:class:`RowExchange`): every rank holds
  a row block of each and computes partial pooled sums of its full dim for the whole
  batch (the last columns of its fused operator's output); a reduce-scatter sums them
  and leaves each rank its batch slice, and backward an all-gather collects the slices'
  gradients. Placements without row shards run the all-to-alls alone.
  Table-row-wise tables (tasks of several hosts) are exchanged as TorchRec's TWRW
  sharding does (:class:`HostRowExchange`): a reduce-scatter within the host, then an
  all-to-all across hosts among the ranks of one local index; backward that all-to-all
  in reverse and an all-gather within the host. Their process groups are made once per
  host size (:func:`host_groups`).

  or, with ``compute_turns``, the same with the ranks computing one after the other
  (barriers between turns), for ranks that share one host's cores (see
  ``DistributedConfig.compute_turns``).

  Repetitions are spread over *windows*, each timing every placement in turn (rotated),
  as the ``fbgemm`` backend does; the per-call times are gathered to rank 0.
- :class:`CommGridCommand`: time one collective alone (the all-to-all, or the
  reduce-scatter or all-gather of row-wise outputs) over a grid of per-rank widths and
  batch sizes, for fitting and checking the communication model (backends/commfit.py).
- :class:`ShutdownCommand`: leave the loop.

Commands reach the ranks through the rendezvous ``TCPStore`` (a blocking ``get`` of the
next command's key, no polling), because an idle worker may wait for its next command
far longer than the process group's collective timeout, which must stay short so that a
failed rank is noticed quickly. Results travel back with ``gather_object``. The commands
and results are defined in ``protocol.py``, the group a rank joins in ``group.py``.

A spawned worker is started as ``python -m dreamshard.backends.distributed.worker`` by
:class:`dreamshard.backends.distributed.backend.DistributedBackend`; under ``torchrun`` the
non-zero ranks run :func:`serve` from the CLI process itself.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch._C._distributed_c10d import TCPStore  # typed, unlike torch.distributed

from dreamshard.backends.comm import exchange_of, output_widths
from dreamshard.backends.distributed.group import RankGroup, init_rank_group
from dreamshard.backends.distributed.protocol import (
    EXIT_PEER_FAILURE,
    EXIT_WORKER_ERROR,
    IDLE_TIMEOUT_S,
    STAGES,
    CommGridCommand,
    CommPoint,
    MeasureCommand,
    RankCommTimes,
    RankStageTimes,
    ShutdownCommand,
    receive_command,
)
from dreamshard.backends.kernels import FusedShard, build_fused, cap_rows, quiet_timing
from dreamshard.data.ids import table_ids
from dreamshard.errors import BackendError
from dreamshard.types import FloatArray, Placement, TableSpec, Task

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------
# Executing commands (every rank)
# ---------------------------------------------------------------------------------------


def batch_slices(batch_size: int, world_size: int) -> list[int]:
    """Samples of the global batch each data-parallel rank receives (sizes differ by <= 1)."""
    base, extra = divmod(batch_size, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


@dataclass
class _Exchange:
    """Buffers and split sizes of one placement's all-to-alls on one rank.

    Forward: this rank sends rows ``[B, w_rank]`` of its pooled output, ``B_j`` rows to
    rank ``j`` (flattened: ``B_j * w_rank`` values), and receives ``B_rank * w_i`` values
    from each rank ``i``. Backward moves the gradients the opposite way. ``w`` counts the
    tables and column shards only; row shards go through ``rows`` (None: there are none).
    """

    width: int  # w_rank
    all_to_all: bool  # whether any rank has a table or column shard (W > 0)
    send_splits: list[int]
    recv_splits: list[int]
    recv: torch.Tensor  # [B_rank * W] pooled embeddings from every rank
    grad_out: torch.Tensor  # [B_rank * W] their gradients (ones)
    grad_in: torch.Tensor  # [B * w_rank] gradient of this rank's pooled output
    rows: RowExchange | None = None
    host_rows: HostRowExchange | None = None


def _exchange(
    widths: Sequence[int],
    rank: int,
    batch_size: int,
    device: torch.device,
    row_width: int = 0,
    host_rows: HostRowExchange | None = None,
) -> _Exchange:
    slices = batch_slices(batch_size, len(widths))
    own = widths[rank]
    recv_splits = [slices[rank] * w for w in widths]
    total = sum(recv_splits)
    rows = row_exchange(row_width, rank, batch_size, len(widths), device) if row_width else None
    return _Exchange(
        width=own,
        all_to_all=sum(widths) > 0,
        send_splits=[b * own for b in slices],
        recv_splits=recv_splits,
        recv=torch.empty(total, device=device),
        grad_out=torch.ones(total, device=device),
        grad_in=torch.empty(batch_size * own, device=device),
        rows=rows,
        host_rows=host_rows,
    )


@dataclass
class RowExchange:
    """Buffers of the exchange of row-wise tables' outputs on one rank, as TorchRec runs it.

    Every rank holds one row block of each row-wise table and computes its partial pooled
    sums of the full dim for the whole batch, ``[B, W]`` (``W``: the row-wise tables'
    summed dims, the same on every rank). Forward, a reduce-scatter sums the partials and
    leaves rank ``r`` its batch slice ``[B_r, W]``; backward, an all-gather gives every
    rank the whole batch's gradient ``[B, W]`` from the slices (comm.py counts the same
    volumes as an all-to-all with the block as a full-dim table on every rank).

    With uneven batch slices (``B`` not a multiple of the ranks) the reduce-scatter takes
    the list form and the all-gather runs on slices padded to ``ceil(B / D)`` rows (gloo's
    all-gather needs equal sizes); TorchRec's batches are per rank, so always even.
    """

    width: int
    slices: list[int]  # B_j: samples of each rank's slice
    reduced: torch.Tensor  # [B_rank * W] summed outputs of this rank's slice
    grad_slice: torch.Tensor  # [ceil(B/D) * W] gradient of this rank's slice (ones), padded
    gathered: torch.Tensor  # [D * ceil(B/D) * W] every rank's gradient slice, padded

    @property
    def even(self) -> bool:
        return len(set(self.slices)) == 1


def row_exchange(
    width: int, rank: int, batch_size: int, world_size: int, device: torch.device
) -> RowExchange:
    """Buffers of the reduce-scatter and all-gather of ``width`` row-wise output columns."""
    slices = batch_slices(batch_size, world_size)
    padded = max(slices)
    return RowExchange(
        width=width,
        slices=slices,
        reduced=torch.empty(slices[rank] * width, device=device),
        grad_slice=torch.ones(padded * width, device=device),
        gathered=torch.empty(world_size * padded * width, device=device),
    )


# torch 2.13 renamed the tensor forms (the old names warn); older builds (the GPU images'
# 2.11) have only the old ones.
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def reduce_scatter_rows(
    rows: RowExchange, partial: torch.Tensor, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Sum the ranks' partial pooled outputs ``partial`` ``[B, W]`` (contiguous) and
    return this rank's slice of the sum, ``[B_rank, W]`` (a view of ``rows.reduced``);
    over ``group`` (default: every rank)."""
    flat = partial.reshape(-1)
    if rows.even:
        _reduce_scatter_single(rows.reduced, flat, group=group)
    else:
        dist.reduce_scatter(
            rows.reduced,
            list(torch.split(flat, [b * rows.width for b in rows.slices])),
            group=group,
        )
    return rows.reduced.view(-1, rows.width)


def all_gather_rows(rows: RowExchange, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Gather every rank's gradient slice (``rows.grad_slice``, its first ``B_rank * W``
    values) into the whole batch's gradient ``[B, W]``; over ``group`` (default: every
    rank)."""
    _all_gather_single(rows.gathered, rows.grad_slice, group=group)
    blocks = rows.gathered.view(len(rows.slices), -1, rows.width)  # [D, ceil(B/D), W]
    if rows.even:
        return blocks.view(-1, rows.width)
    return torch.cat([blocks[j, :b] for j, b in enumerate(rows.slices)])


@dataclass
class HostRowExchange:
    """Buffers and groups of the exchange of table-row-wise outputs on one rank, as
    TorchRec's TWRW sharding runs it (comm.py has the volumes).

    Every rank of host ``h`` holds one row block of each of that host's table-row-wise
    tables and computes their partial pooled sums, ``[B, W_h]``. Forward, a
    reduce-scatter within the host (``intra``, over its ``L`` ranks) leaves local rank
    ``l`` its batch slice ``[B_l, W_h]``; an all-to-all across hosts, among the ranks of
    local index ``l``, sends host ``h'`` the ``h'``-th part of that slice and receives
    every host's columns for this rank's part. Backward, the same all-to-all in reverse,
    then an all-gather within the host. A host without such tables (``W_h = 0``) skips
    the reduce-scatter but takes part in the all-to-all.
    """

    width: int  # W_h
    intra: RowExchange | None  # None on a host without table-row-wise tables
    intra_group: dist.ProcessGroup | None
    cross_group: dist.ProcessGroup | None
    send_splits: list[int]
    recv_splits: list[int]
    recv: torch.Tensor  # [part * sum_h W_h]
    grad_out: torch.Tensor  # its gradient (ones)
    grad_in: torch.Tensor  # [B_l * W_h]


def host_row_exchange(
    host_widths: Sequence[int],
    rank: int,
    host_size: int,
    batch_size: int,
    device: torch.device,
    groups: tuple[dist.ProcessGroup | None, dist.ProcessGroup | None] = (None, None),
) -> HostRowExchange:
    """The table-row-wise exchange of ``rank`` for hosts of ``host_size`` ranks whose
    table-row-wise columns are ``host_widths`` (one per host); ``groups``: this rank's
    (within-host, across-host) process groups."""
    host, local = divmod(rank, host_size)
    width = host_widths[host]
    local_slices = batch_slices(batch_size, host_size)
    parts = batch_slices(local_slices[local], len(host_widths))
    return HostRowExchange(
        width=width,
        intra=row_exchange(width, local, batch_size, host_size, device) if width else None,
        intra_group=groups[0],
        cross_group=groups[1],
        send_splits=[n * width for n in parts],
        recv_splits=[parts[host] * w for w in host_widths],
        recv=torch.empty(parts[host] * sum(host_widths), device=device),
        grad_out=torch.ones(parts[host] * sum(host_widths), device=device),
        grad_in=torch.empty(local_slices[local] * width, device=device),
    )


#: Process groups of table-row-wise exchanges by (world size, host size): every host's
#: ranks, then every local index's ranks across hosts. ``dist.new_group`` must be called
#: by every rank in the same order, so they are made once, by every rank alike.
_HOST_GROUPS: dict[tuple[int, int], tuple[list[dist.ProcessGroup], list[dist.ProcessGroup]]] = {}


def host_groups(
    world_size: int, host_size: int
) -> tuple[list[dist.ProcessGroup], list[dist.ProcessGroup]]:
    """(one group per host, one group per local index) for hosts of ``host_size``."""
    key = (world_size, host_size)
    if key not in _HOST_GROUPS:
        hosts = world_size // host_size
        intra = [
            dist.new_group(list(range(h * host_size, (h + 1) * host_size))) for h in range(hosts)
        ]
        cross = [
            dist.new_group([h * host_size + j for h in range(hosts)]) for j in range(host_size)
        ]
        _HOST_GROUPS[key] = (intra, cross)
    return _HOST_GROUPS[key]


def host_rows_forward(exchange: HostRowExchange, partial: torch.Tensor | None) -> None:
    """Forward table-row-wise exchange: reduce-scatter within the host (where it holds
    such tables), then the all-to-all across hosts."""
    send = exchange.grad_in  # empty on a host without such tables
    if exchange.intra is not None:
        assert partial is not None
        send = reduce_scatter_rows(exchange.intra, partial, exchange.intra_group).reshape(-1)
    dist.all_to_all_single(
        exchange.recv,
        send,
        exchange.recv_splits,
        exchange.send_splits,
        group=exchange.cross_group,
    )


def host_rows_backward(exchange: HostRowExchange) -> torch.Tensor | None:
    """Backward table-row-wise exchange: the all-to-all across hosts in reverse, then
    the all-gather within the host; the whole batch's gradient ``[B, W_h]`` (None on a
    host without such tables)."""
    dist.all_to_all_single(
        exchange.grad_in,
        exchange.grad_out,
        exchange.send_splits,
        exchange.recv_splits,
        group=exchange.cross_group,
    )
    if exchange.intra is None:
        return None
    return all_gather_rows(exchange.intra, exchange.intra_group)


class _IdCache:
    """Per-table ids, generated once per (table, batch, seed) in this process."""

    def __init__(self) -> None:
        self._ids: dict[tuple[TableSpec, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, table: TableSpec, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        key = (table, batch_size, seed)
        if key not in self._ids:
            self._ids[key] = table_ids(table, batch_size, seed)
        return self._ids[key]


_ID_CACHE = _IdCache()


#: The column order of a rank's fused operator output, by how each unit's output is
#: exchanged (comm.exchange_of): all-to-all, then row-wise, then table-row-wise blocks.
_EXCHANGE_ORDER = {"a2a": 0, "rows": 1, "host_rows": 2}


def rank_units(task: Task, placement: Placement, rank: int) -> list[TableSpec]:
    """The tables and shards of ``rank``'s fused operator, in its output's column order:
    unit order, row-wise blocks after the all-to-all's units, table-row-wise blocks last
    (each part goes to its own collective)."""
    units = placement.units(task)
    return sorted(
        (units[i] for i in placement.tables_on(rank)),
        key=lambda u: _EXCHANGE_ORDER[exchange_of(u)],
    )


def placement_exchange(
    task: Task,
    placement: Placement,
    rank: int,
    batch_size: int,
    device: torch.device,
    groups: tuple[dist.ProcessGroup | None, dist.ProcessGroup | None] = (None, None),
) -> _Exchange:
    """The buffers of a placement's output exchange on ``rank``: all-to-all widths of the
    tables and column shards; the row shards' width (summed dims: every rank holds a
    block of every row-wise table, so it is the same on all ranks); the table-row-wise
    exchange where the placement has such tables (``groups``: this rank's within-host
    and across-host groups)."""
    widths = output_widths(placement.units(task), placement.device_of, task)
    host_rows = None
    if any(widths.host_rows):
        # Every rank of a host holds the same columns: its first rank's are the host's.
        host_widths = widths.host_rows[:: task.host_size]
        host_rows = host_row_exchange(host_widths, rank, task.host_size, batch_size, device, groups)
    row_width = widths.rows[rank]
    return _exchange(widths.a2a, rank, batch_size, device, row_width, host_rows)


def _build_rank_shards(command: MeasureCommand, group: RankGroup) -> list[FusedShard | None]:
    """This rank's fused operator for each placement (None where it holds no table)."""
    built: dict[tuple[TableSpec, ...], FusedShard] = {}
    out: list[FusedShard | None] = []
    for placement in command.placements:
        units = rank_units(command.task, placement, group.rank)
        tables = [cap_rows(unit, command.row_cap) for unit in units]
        if not tables:
            out.append(None)
            continue
        key = tuple(tables)  # not names: two splits of one table share shard names
        if key not in built:
            ids = [_ID_CACHE.get(t, command.batch_size, command.seed) for t in tables]
            built[key] = build_fused(
                tables, ids, command.batch_size, group.device, kernel=command.kernel
            )
        out.append(built[key])
    return out


def _check_all_built(group: RankGroup, error: str | None) -> None:
    """Wait (up to the build timeout) for every rank to build; raise if any failed."""
    if group.world_size > 1:
        dist.monitored_barrier(
            group=group.control,
            timeout=timedelta(seconds=group.build_timeout_s),
            wait_all_ranks=True,
        )
    errors: list[str | None] = [None] * group.world_size
    dist.all_gather_object(errors, error, group=group.control)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        rank, message = failed[0]
        raise BackendError(
            f"distributed backend: rank {rank} could not build its operator: {message}"
        )


def _timed_iteration(
    shard: FusedShard | None,
    exchange: _Exchange,
    group: RankGroup,
    batch_size: int,
    turns: bool,
) -> tuple[float, float, float, float]:
    """One training iteration of the embedding part; its four stage times in ms.

    With ``turns`` the ranks compute one after the other (each computing rank alone on
    the host), and the forward communication time is the all-to-all alone: the wait for
    the slowest rank is added from the gathered times (``add_turn_waits``).
    """
    clock = time.perf_counter
    out = None
    fwd_comp = bwd_comp = 0.0
    if turns:
        for turn in range(group.world_size):
            dist.barrier()
            if turn == group.rank and shard is not None:
                start = clock()
                out = shard.op(shard.indices, shard.offsets)
                group.sync()
                fwd_comp = (clock() - start) * 1e3
        dist.barrier()
        group.sync()
        t1 = clock()
    else:
        dist.barrier()
        group.sync()
        start = clock()
        if shard is not None:
            out = shard.op(shard.indices, shard.offsets)
            group.sync()
            fwd_comp = (clock() - start) * 1e3
        t1 = clock()
    rows = exchange.rows
    send, partial, host_partial = _split_output(out, exchange)
    if exchange.all_to_all:
        dist.all_to_all_single(exchange.recv, send, exchange.recv_splits, exchange.send_splits)
    if rows is not None and partial is not None:
        reduce_scatter_rows(rows, partial)
    if exchange.host_rows is not None:
        host_rows_forward(exchange.host_rows, host_partial)
    group.sync()
    t2 = clock()
    dist.barrier()
    group.sync()
    t3 = clock()
    if exchange.all_to_all:
        dist.all_to_all_single(
            exchange.grad_in, exchange.grad_out, exchange.send_splits, exchange.recv_splits
        )
    grad = exchange.grad_in.view(batch_size, exchange.width)
    if rows is not None:
        grad = torch.cat([grad, all_gather_rows(rows)], dim=1)
    if exchange.host_rows is not None:
        host_grad = host_rows_backward(exchange.host_rows)
        if host_grad is not None:
            grad = torch.cat([grad, host_grad], dim=1)
    group.sync()
    t4 = clock()
    for turn in range(group.world_size if turns else 1):
        if turns:
            dist.barrier()
        if out is not None and (not turns or turn == group.rank):
            start = clock()
            out.backward(grad)
            group.sync()
            bwd_comp = (clock() - start) * 1e3
    return fwd_comp, (t2 - t1) * 1e3, (t4 - t3) * 1e3, bwd_comp


def _split_output(
    out: torch.Tensor | None, exchange: _Exchange
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The all-to-all's send buffer, the row-wise blocks' partial sums and the
    table-row-wise blocks' (None where there are none) of this rank's pooled output
    ``[B, w_rank + W_rows + W_h]``.

    Splitting copies the parts (timed with the forward communication, as the exchange's
    own work); without row blocks the output is sent as it is.
    """
    rows = exchange.rows
    host_width = exchange.host_rows.width if exchange.host_rows is not None else 0
    if out is None:
        if rows is not None or host_width:
            raise BackendError("distributed backend: a rank holds row shards but no operator")
        return exchange.grad_in, None, None  # empty: no table
    pooled = out.detach()
    if rows is None and not host_width:
        return pooled.reshape(-1), None, None
    row_end = exchange.width + (rows.width if rows is not None else 0)
    send = pooled[:, : exchange.width].contiguous().view(-1)
    partial = pooled[:, exchange.width : row_end].contiguous() if rows is not None else None
    host_partial = pooled[:, row_end:].contiguous() if host_width else None
    return send, partial, host_partial


def add_turn_waits(times: FloatArray) -> FloatArray:
    """Forward communication including the wait for the slowest rank, for times taken
    in turns: ``times[device, ..., stage]`` (stages in STAGES order); a copy."""
    out = times.copy()
    fwd = times[..., 0]
    out[..., 1] += fwd.max(axis=0, keepdims=True) - fwd
    return out


def _rotations(items: int, windows: int) -> Iterator[tuple[int, int]]:
    """(window, item) in the interleaved order: every item once per window, rotated."""
    for window in range(windows):
        for j in range(items):
            yield window, (j + window) % items


def run_measure(
    command: MeasureCommand,
    group: RankGroup,
    progress: Callable[[int, int], None] | None = None,
) -> list[RankStageTimes] | None:
    """Execute a measurement on this rank; rank 0 gets every rank's times, others None."""
    task, timing, turns = command.task, command.timing, command.compute_turns
    error: str | None = None
    shards: list[FusedShard | None] = []
    group.report("building")
    try:
        shards = _build_rank_shards(command, group)
    except (BackendError, RuntimeError, MemoryError) as err:
        error = f"{type(err).__name__}: {err}"
    _check_all_built(group, error)
    device = group.torch_device
    groups: tuple[dist.ProcessGroup | None, dist.ProcessGroup | None] = (None, None)
    if task.num_hosts > 1 and any(
        s.kind == "table_row" for placement in command.placements for s in placement.splits
    ):
        intra, cross = host_groups(task.num_devices, task.host_size)
        host, local = divmod(group.rank, task.host_size)
        groups = (intra[host], cross[local])
    exchanges = [
        placement_exchange(task, placement, group.rank, command.batch_size, device, groups)
        for placement in command.placements
    ]
    num = len(command.placements)
    stage_ms = np.zeros((num, timing.windows, timing.calls_per_window, len(STAGES)))
    with quiet_timing():
        group.report("warm-up")
        for k in range(num):
            for _ in range(timing.warmup_calls):
                _timed_iteration(shards[k], exchanges[k], group, command.batch_size, turns)
        for done, (window, k) in enumerate(_rotations(num, timing.windows), start=1):
            if k == window % num:
                group.report(f"window {window + 1} of {timing.windows}")
            for call in range(timing.calls_per_window):
                stage_ms[k, window, call] = _timed_iteration(
                    shards[k], exchanges[k], group, command.batch_size, turns
                )
            if progress is not None:
                progress(done, num * timing.windows)
    group.report("gathering")
    return _gather(RankStageTimes(group.rank, stage_ms), group)


def run_comm_grid(command: CommGridCommand, group: RankGroup) -> list[RankCommTimes] | None:
    """Time each grid point's collective alone; rank 0 gets every rank's times."""
    timing = command.timing
    device = group.torch_device
    generator = torch.Generator().manual_seed(0)
    collectives = []
    for point in command.points:
        if len(point.widths) != group.world_size:
            raise BackendError(
                f"comm grid point has {len(point.widths)} widths, the group has "
                f"{group.world_size} ranks"
            )
        collectives.append(_grid_collective(point, group.rank, device, generator))
    num = len(command.points)
    comm_ms = np.zeros((num, timing.windows, timing.calls_per_window))

    def once(k: int) -> float:
        dist.barrier()
        group.sync()
        start = time.perf_counter()
        collectives[k]()
        group.sync()
        return (time.perf_counter() - start) * 1e3

    with quiet_timing():
        group.report("comm warm-up")
        for k in range(num):
            for _ in range(timing.warmup_calls):
                once(k)
        for window, k in _rotations(num, timing.windows):
            if k == window % num:
                group.report(f"comm window {window + 1} of {timing.windows}")
            for call in range(timing.calls_per_window):
                comm_ms[k, window, call] = once(k)
    group.report("gathering")
    return _gather(RankCommTimes(group.rank, comm_ms), group)


def _grid_collective(
    point: CommPoint, rank: int, device: torch.device, generator: torch.Generator
) -> Callable[[], object]:
    """The collective of one grid point on ``rank``, with its buffers, ready to call."""
    if point.collective == "all_to_all":
        exchange = _exchange(point.widths, rank, point.batch_size, device)
        send = torch.rand(sum(exchange.send_splits), generator=generator).to(device)
        return lambda: dist.all_to_all_single(
            exchange.recv, send, exchange.recv_splits, exchange.send_splits
        )
    width = point.widths[rank]
    rows = row_exchange(width, rank, point.batch_size, len(point.widths), device)
    if point.collective == "reduce_scatter":
        partial = torch.rand(point.batch_size, width, generator=generator).to(device)
        return lambda: reduce_scatter_rows(rows, partial)
    return lambda: all_gather_rows(rows)


def _gather(item: _T, group: RankGroup) -> list[_T] | None:
    gathered: list[_T] | None = [item] * group.world_size if group.rank == 0 else None
    dist.gather_object(item, gathered, dst=0, group=group.control)
    return gathered


def execute(command: MeasureCommand | CommGridCommand, group: RankGroup) -> None:
    """Run a command on a non-zero rank (its results go to rank 0)."""
    if isinstance(command, MeasureCommand):
        run_measure(command, group)
    else:
        run_comm_grid(command, group)


def serve(group: RankGroup) -> None:
    """The worker loop of a non-zero rank: execute commands until told to shut down.

    A command that fails the same way on every rank (an operator that cannot be built)
    raises BackendError everywhere; the worker reports it and waits for the next
    command. Any other error leaves the loop by raising.
    """
    seq = 0
    while True:
        group.report(f"idle, waiting for command {seq}")
        command = receive_command(group.store, seq)
        seq += 1
        if isinstance(command, ShutdownCommand):
            return
        group.report(f"command {seq - 1}")
        try:
            execute(command, group)
        except BackendError as err:
            print(f"rank {group.rank}: {err}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Entry point of a spawned worker process
# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Join the group the driver set up, serve it, return the exit code."""
    parser = argparse.ArgumentParser(description="dreamshard distributed-backend worker")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout-s", type=float, required=True)
    parser.add_argument("--build-timeout-s", type=float, required=True)
    parser.add_argument("--startup-timeout-s", type=float, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    group: RankGroup | None = None
    try:
        store = TCPStore(
            args.host,
            args.port,
            args.world_size,
            is_master=False,
            timeout=timedelta(seconds=IDLE_TIMEOUT_S),
        )
        group = init_rank_group(
            store,
            args.rank,
            args.world_size,
            args.device,
            args.timeout_s,
            args.build_timeout_s,
            args.startup_timeout_s,
        )
        serve(group)
    except dist.DistError:
        # A collective or the store failed: another rank (or the driver) went away.
        traceback.print_exc()
        return EXIT_PEER_FAILURE
    except Exception:
        traceback.print_exc()
        return EXIT_WORKER_ERROR
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    # The commands are classes of protocol.py, so unpickled ones are instances of the
    # classes the isinstance checks name even when this module runs as ``__main__``.
    sys.exit(main())
