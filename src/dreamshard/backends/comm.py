"""All-to-all communication model (METHOD.md sections 1 and 5).

In table-wise model parallelism every device computes pooled embeddings for the whole
global batch and an all-to-all gives each data-parallel rank its slice of the batch.
With ``D`` devices, global batch ``B``, device ``d`` holding tables of total output width
``w_d`` (sum of their dims) and ``W = sum_d w_d``:

- device ``d`` sends ``B * w_d * (D - 1) / D`` values (all but its own slice);
- device ``d`` receives ``(B / D) * (W - w_d)`` values (its slice from every other device).

Each device's transfer takes ``latency + volume / bandwidth``; the collective ends when
the slowest device is done. The volume depends on the links (``AllToAllModel.volume``):

- ``"max"``: ``max(sent, received)``, full-duplex links that send and receive at once
  (NVLink, network);
- ``"sum"``: ``sent + received``, where both directions share one resource, as between
  processes of one CPU host, where every byte is copied by the CPUs through memory.
  Measured gloo all-to-alls on the 2-core development host fit this form (an exchange
  with both ranks sending costs twice one with one rank sending; ``calibrate-comm``).

The backward all-to-all moves the gradients of the same tensors in reverse, so it has the
same size. With one device there is nothing to exchange and both stages cost zero.

Split tables (``types.TableSplit``) follow TorchRec's execution:

- a column shard's pooled output (its part of the dim, for the whole batch) goes through
  the same all-to-all as a table's, so it counts as a table of its dim;
- a row-wise table has one row block on every device; each computes partial pooled sums
  of the full dim for the whole batch, and a reduce-scatter sums them and leaves each
  device its slice (backward: an all-gather of the output gradients). Per device that
  sends ``B * dim * (D - 1) / D`` values and receives ``(D - 1)`` slices of
  ``(B / D) * dim``: exactly the volumes above with the block counted as a table of the
  full dim on every device. TorchRec issues these as collectives of their own beside
  the all-to-all; they take ``reduce_scatter_factor`` / ``all_gather_factor`` times an
  all-to-all of the same volume (fitted by ``calibrate-comm``; on gloo between CPU
  processes a reduce-scatter took 2.8x, an all-gather 1.4x). :meth:`AllToAllModel.exchange_ms`.
- a table-row-wise table (TorchRec's ``TABLE_ROW_WISE``, ``twrw_sharding.py``) has one row
  block on every device of one host (``L`` devices a host, ``H`` hosts). Forward, a
  reduce-scatter *within the host* sums the blocks' partial sums and leaves each of its
  devices ``B / L`` samples of the full dim (per device ``B * dim * (L - 1) / L`` values
  each way: the volumes above over ``L`` devices); then an all-to-all *across hosts*,
  among the ``H`` devices of one local rank, sends each its ``B / D`` samples: a device of
  host ``h`` holds ``B / L`` samples of ``W_h`` columns (the dims of host ``h``'s
  table-row-wise tables) and exchanges them like a table-wise all-to-all of batch
  ``B / L`` over ``H`` devices. Backward runs them in reverse (all-to-all, then the
  all-gather within the host). Both are collectives of their own, after the others; a
  host without such tables takes no part in the reduce-scatter.

All collectives run on the one link model of the profile: this package fits no separate
inter-host bandwidth (every process it can measure runs on one host), so table-row-wise
sharding's main gain on a real cluster, L times less inter-host traffic than row-wise,
is not in these costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dreamshard.errors import InputError
from dreamshard.types import FloatArray, TableSpec, Task

#: Bytes per value of the pooled embeddings exchanged (FP32 outputs).
OUTPUT_BYTES_PER_VALUE = 4

#: Ways a device's sent and received bytes combine into its transfer volume.
VOLUME_MODES: tuple[str, ...] = ("max", "sum")


def _is_number(value: object) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class AllToAllModel:
    """Latency-bandwidth model of one all-to-all.

    Attributes:
        latency_ms: Fixed cost of one collective on one device.
        bandwidth_gbps: Per-device transfer rate in GB/s (1e9 bytes per second).
        source: Where the numbers come from ("fitted to ..." or "assumed from ...").
        volume: How a device's bytes add up: ``"max"`` of sent and received (full duplex)
            or their ``"sum"`` (shared; see the module docstring).
        reduce_scatter_factor: A row-wise tables' reduce-scatter (forward) takes this many
            times an all-to-all of the same volume (1.0: assumed equal).
        all_gather_factor: The same for their all-gather (backward).
    """

    latency_ms: float
    bandwidth_gbps: float
    source: str
    volume: str = "max"
    reduce_scatter_factor: float = 1.0
    all_gather_factor: float = 1.0

    def __post_init__(self) -> None:
        # A zero bandwidth would divide by zero in time_ms; NaN would make every
        # placement cost NaN and every comparison meaningless.
        if not _is_number(self.latency_ms) or not self.latency_ms >= 0.0:
            raise InputError(
                f"all-to-all latency_ms must be a finite number >= 0, got {self.latency_ms!r}"
            )
        if not _is_number(self.bandwidth_gbps) or not self.bandwidth_gbps > 0.0:
            raise InputError(
                f"all-to-all bandwidth_gbps must be a finite number > 0, got "
                f"{self.bandwidth_gbps!r}"
            )
        if self.volume not in VOLUME_MODES:
            raise InputError(
                f"all-to-all volume must be one of {', '.join(VOLUME_MODES)}, got {self.volume!r}"
            )
        for name in ("reduce_scatter_factor", "all_gather_factor"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0.0:
                raise InputError(f"comm {name} must be a finite number > 0, got {value!r}")

    def time_ms(self, widths: Sequence[int], batch_size: int) -> float:
        """Duration of one all-to-all of pooled outputs for per-device output widths."""
        num_devices = len(widths)
        if num_devices <= 1:
            return 0.0
        times = self.device_time_ms(
            np.asarray(widths, np.float64), sum(widths), num_devices, batch_size
        )
        return float(times.max())

    def exchange_ms(self, widths: ExchangeWidths, batch_size: int) -> tuple[float, float]:
        """(forward, backward) ms of a placement's output exchange: the all-to-all of the
        whole tables' and column shards' outputs where there are any; for row-wise tables
        the reduce-scatter forward and the all-gather backward; for table-row-wise
        tables the reduce-scatter within each host and the all-to-all across hosts
        (backward: that all-to-all and the all-gather)."""
        a2a = self.time_ms(widths.a2a, batch_size) if any(widths.a2a) else 0.0
        fwd = bwd = a2a
        if any(widths.rows):
            row = self.time_ms(widths.rows, batch_size)
            fwd += self.reduce_scatter_factor * row
            bwd += self.all_gather_factor * row
        if any(widths.host_rows):
            host_rows = np.asarray(widths.host_rows, dtype=np.float64)
            intra, cross = self.host_row_device_ms(
                host_rows, float(host_rows.sum()), widths.host_size, len(host_rows), batch_size
            )
            fwd += self.reduce_scatter_factor * float(intra.max()) + float(cross.max())
            bwd += self.all_gather_factor * float(intra.max()) + float(cross.max())
        return fwd, bwd

    def host_row_device_ms(
        self,
        width: npt.ArrayLike,
        total_width: float,
        host_size: int,
        num_devices: int,
        batch_size: int,
    ) -> tuple[FloatArray, FloatArray]:
        """Each device's transfer time (ms) in the table-row-wise exchange (module
        docstring), vectorised over ``width``: (within-host all-to-all-equivalent of the
        reduce-scatter, before its factor; across-host all-to-all).

        Args:
            width: Summed dims of the table-row-wise blocks on each device (every device
                of a host holds a block of each of its tables, so this is its host's
                ``W_h``), any shape.
            total_width: Sum of ``width`` over all devices (``L`` times the sum of the
                hosts' ``W_h``).
            host_size: Devices per host (``L``).
            num_devices: All devices (``L * H``).
            batch_size: Global batch size.
        """
        w = np.asarray(width, dtype=np.float64)
        # Over the L devices of one host, each holding w columns of the whole batch.
        intra = np.where(w > 0, self.device_time_ms(w, host_size * w, host_size, batch_size), 0.0)
        hosts = num_devices // host_size
        cross = self.device_time_ms(w, total_width / host_size, hosts, batch_size / host_size)
        return intra, cross

    def device_time_ms(
        self,
        width: npt.ArrayLike,
        total_width: npt.ArrayLike,
        num_devices: int,
        batch_size: float,
    ) -> FloatArray:
        """Each device's transfer time (ms) in one all-to-all, vectorised over ``width``.

        The collective lasts as long as the slowest device's transfer (:meth:`time_ms`
        is the max of these over the devices); with one device nothing moves (0).

        Args:
            width: Output width (sum of dims) of each device, any shape.
            total_width: Sum of the widths of all devices (one, or one per ``width``).
            num_devices: Devices taking part.
            batch_size: Global batch size.
        """
        w = np.asarray(width, dtype=np.float64)
        if num_devices <= 1:
            return np.zeros_like(w)
        total = np.asarray(total_width, dtype=np.float64)
        sent = batch_size * w * (num_devices - 1) / num_devices
        received = batch_size / num_devices * (total - w)
        values = sent + received if self.volume == "sum" else np.maximum(sent, received)
        times: FloatArray = self.latency_ms + values * OUTPUT_BYTES_PER_VALUE / (
            self.bandwidth_gbps * 1e6
        )
        return times


def exchange_of(unit: TableSpec) -> str:
    """How a placement unit's pooled output is exchanged: ``a2a`` (a whole table or a
    column shard: the all-to-all), ``rows`` (a row-wise block: the reduce-scatter over
    every device) or ``host_rows`` (a table-row-wise block: within its host, then
    across hosts)."""
    if unit.shard is None or unit.shard.kind == "column":
        return "a2a"
    return "rows" if unit.shard.kind == "row" else "host_rows"


@dataclass(frozen=True)
class ExchangeWidths:
    """Per device, the summed dims of a placement's units by how their outputs are
    exchanged (:func:`exchange_of`), and the task's devices per host.

    Attributes:
        a2a: Whole tables and column shards (the all-to-all).
        rows: Row-wise blocks (the reduce-scatter over every device).
        host_rows: Table-row-wise blocks (within the host, then across hosts).
        host_size: Devices per host.
    """

    a2a: list[int]
    rows: list[int]
    host_rows: list[int]
    host_size: int


def output_widths(
    units: Sequence[TableSpec], device_of: Sequence[int], task: Task
) -> ExchangeWidths:
    """The exchange widths of a placement of ``units`` on the devices of ``task``."""
    out = ExchangeWidths(
        [0] * task.num_devices, [0] * task.num_devices, [0] * task.num_devices, task.host_size
    )
    for unit, d in zip(units, device_of, strict=True):
        getattr(out, exchange_of(unit))[d] += unit.dim
    return out


#: Gloo all-to-all between processes on one CPU host (loopback).
CPU_LOOPBACK = AllToAllModel(
    latency_ms=0.25,
    bandwidth_gbps=0.7,
    source=(
        "fitted by hand to gloo all_to_all_single between 2 processes on the 2-core "
        "development host (batch 4096, widths 16-1024: 0.46-12.4 ms)"
    ),
)

#: NCCL all-to-all between NVLink-connected GPUs of one node (H100 SXM class).
NVLINK_GPU = AllToAllModel(
    latency_ms=0.02,
    bandwidth_gbps=150.0,
    source=(
        "assumed from public figures: NVLink 4 at 450 GB/s per direction, of which an "
        "NCCL all-to-all reaches about a third; not measured"
    ),
)
