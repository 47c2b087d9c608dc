"""Fused embedding operators: one per device, built from its tables and their ids.

Every measuring backend (``fbgemm`` here, ``distributed`` across processes) times the
same thing: one fused table-batched embedding operator per device, a forward that looks
up and pools a batch of ids for all of the device's tables at once, and a backward with
the optimizer's sparse update fused in. :func:`build_fused` builds it with one of two
*kernels* (:func:`select_kernel` picks; the choice is recorded in ``FusedShard.kernel``):

- ``fbgemm``: FBGEMM's ``SplitTableBatchedEmbeddingBagsCodegen`` (the CPU build here, the
  CUDA build where installed). The default wherever it runs.
- ``torch-fused``: :class:`TorchFusedEmbeddingBags`, PyTorch's own kernels, one
  ``embedding_bag`` launch per group of same-dim tables and an ``index_add_`` SGD update
  in the backward. Used on CUDA when fbgemm_gpu's CUDA operators are not installed (the
  borrowed GPU machines have PyTorch only); on CPU only when asked for.

:func:`time_fused_call` times one forward and one backward, inside :func:`quiet_timing`;
:func:`cap_rows` gives a table as it runs under a row cap. fbgemm_gpu is imported only
when an FBGEMM operator is built, so this module imports with PyTorch and numpy alone.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dreamshard.constants import DEVICE_TYPES
from dreamshard.errors import BackendError
from dreamshard.runtime import one_thread
from dreamshard.types import TableSpec

#: Learning rate of the fused SGD update; its value does not change the cost.
SGD_LEARNING_RATE = 0.01

#: FBGEMM's table-batched embedding operator (CPU or CUDA build).
FBGEMM_KERNEL = "fbgemm"
#: PyTorch's own kernels, fused per group of same-dim tables (:class:`TorchFusedEmbeddingBags`).
TORCH_FUSED_KERNEL = "torch-fused"
KERNEL_NAMES: tuple[str, ...] = (FBGEMM_KERNEL, TORCH_FUSED_KERNEL)

_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def fbgemm_variant() -> str | None:
    """The installed fbgemm_gpu build (``"cpu"``, ``"cuda"``, ...); None if it does not import."""
    try:
        import fbgemm_gpu
        import fbgemm_gpu.split_table_batched_embeddings_ops_training
    except (ImportError, OSError):
        return None
    return str(getattr(fbgemm_gpu, "__variant__", "unknown"))


def select_kernel(device: str, requested: str | None = None) -> str:
    """The kernel that runs fused operators on ``device``.

    Args:
        device: ``cpu`` or ``cuda``.
        requested: A name from ``KERNEL_NAMES``, or None to choose: FBGEMM on CPU; on
            CUDA FBGEMM when fbgemm_gpu's CUDA build is installed, else ``torch-fused``.

    Raises:
        BackendError: Unknown device or kernel, CUDA asked for but not visible, or FBGEMM
            asked for (or needed on CPU) but not installed for the device.
    """
    if device not in DEVICE_TYPES:
        raise BackendError(f"unknown device {device!r} (use {' or '.join(DEVICE_TYPES)})")
    if requested is not None and requested not in KERNEL_NAMES:
        raise BackendError(f"unknown kernel {requested!r} (known: {', '.join(KERNEL_NAMES)})")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("device 'cuda' asked for but torch sees no CUDA device")
    if requested == TORCH_FUSED_KERNEL:
        return TORCH_FUSED_KERNEL
    variant = fbgemm_variant()
    if device == "cpu":
        if variant is None:
            raise BackendError(
                "the fbgemm kernel needs fbgemm_gpu (pip install fbgemm-gpu-cpu==1.8.0); "
                "use --backend sim for the simulator"
            )
        return FBGEMM_KERNEL
    has_cuda_ops = variant is not None and variant not in ("cpu", "docs")
    if requested == FBGEMM_KERNEL and not has_cuda_ops:
        raise BackendError(
            f"kernel 'fbgemm' on cuda needs fbgemm_gpu's CUDA build (installed: "
            f"{variant or 'none'}); use kernel {TORCH_FUSED_KERNEL!r}"
        )
    return FBGEMM_KERNEL if has_cuda_ops else TORCH_FUSED_KERNEL


@dataclass
class FusedShard:
    """A built fused operator with its inputs, ready to time.

    Attributes:
        op: Callable ``op(indices, offsets) -> pooled [batch, sum of dims]``.
        indices: All ids of the device's tables, table after table.
        offsets: Bag offsets over ``indices`` (tables x batch + 1 entries).
        grad: Upstream gradient of the pooled output (ones).
        weight_bytes: Bytes of the weights the operator holds.
        kernel: Which implementation runs it (recorded with results).
    """

    op: Any
    indices: torch.Tensor
    offsets: torch.Tensor
    grad: torch.Tensor
    weight_bytes: int
    kernel: str = "fbgemm"


def concat_ids(
    ids: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-table ``(indices, offsets)`` joined into one FBGEMM batch (table-major)."""
    indices, offsets, total = [], [np.zeros(1, dtype=np.int64)], 0
    for table_ids, table_offsets in ids:
        indices.append(np.asarray(table_ids, dtype=np.int64))
        offsets.append(np.asarray(table_offsets[1:], dtype=np.int64) + total)
        total += len(table_ids)
    if not indices:
        return np.zeros(0, dtype=np.int64), offsets[0]
    return np.concatenate(indices), np.concatenate(offsets)


def build_fused(
    tables: Sequence[TableSpec],
    ids: Sequence[tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    device: str = "cpu",
    kernel: str | None = None,
) -> FusedShard:
    """The fused operator for ``tables`` (SGD update fused into the backward) and its inputs.

    Args:
        tables: The device's tables, as they run (rows already capped if need be).
        ids: Per-table ``(indices, offsets)`` of one batch, in the order of ``tables``.
        batch_size: Samples per batch (bags per table).
        device: ``cpu`` or ``cuda``.
        kernel: A name from ``KERNEL_NAMES``; None lets :func:`select_kernel` choose.

    Raises:
        BackendError: Mixed dtypes, no such kernel on the device, or the operator could
            not be built (out of memory).
    """
    kernel = select_kernel(device, kernel)
    dtypes = {t.dtype for t in tables}
    if len(dtypes) > 1:
        raise BackendError(f"tables of one device must share a dtype to fuse, got {sorted(dtypes)}")
    torch_device = torch.device(device)
    indices, offsets = concat_ids(ids)
    op: Any
    if kernel == TORCH_FUSED_KERNEL:
        try:
            op = TorchFusedEmbeddingBags(tables, batch_size, torch_device)
        except (RuntimeError, MemoryError) as err:
            raise BackendError(f"could not build the fused operator: {err}") from None
    else:
        op = _build_fbgemm(tables, torch_device)
    return FusedShard(
        op=op,
        indices=torch.from_numpy(indices).to(torch_device),
        offsets=torch.from_numpy(offsets).to(torch_device),
        grad=torch.ones(batch_size, sum(t.dim for t in tables), device=torch_device),
        weight_bytes=sum(t.size_bytes for t in tables),
        kernel=kernel,
    )


def _build_fbgemm(tables: Sequence[TableSpec], device: torch.device) -> Any:
    """FBGEMM's TBE operator with the EXACT_SGD update fused into its backward."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    cuda = device.type == "cuda"
    location = EmbeddingLocation.DEVICE if cuda else EmbeddingLocation.HOST
    compute = ComputeDevice.CUDA if cuda else ComputeDevice.CPU
    precision = SparseType.FP16 if {t.dtype for t in tables} == {"fp16"} else SparseType.FP32
    try:
        return SplitTableBatchedEmbeddingBagsCodegen(
            [(t.rows, t.dim, location, compute) for t in tables],
            optimizer=EmbOptimType.EXACT_SGD,
            learning_rate=SGD_LEARNING_RATE,
            weights_precision=precision,
            device=device,
        )
    except (RuntimeError, MemoryError) as err:
        raise BackendError(f"could not build the fused operator: {err}") from None


def time_fused_call(shard: FusedShard, device: str = "cpu") -> tuple[float, float]:
    """One forward and one backward (with the update); their durations in ms."""
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = shard.op(shard.indices, shard.offsets)
    if cuda:
        torch.cuda.synchronize()
    middle = time.perf_counter()
    out.backward(shard.grad)
    if cuda:
        torch.cuda.synchronize()
    end = time.perf_counter()
    return (middle - start) * 1e3, (end - middle) * 1e3


@contextmanager
def quiet_timing() -> Iterator[None]:
    """One torch thread (FBGEMM's CPU kernels are single-threaded; more threads add noise)
    and no GC while timing."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with one_thread():
            yield
    finally:
        if gc_was_enabled:
            gc.enable()


def cap_rows(table: TableSpec, row_cap: int | None) -> TableSpec:
    """The table as it runs under a row cap: with ``row_cap`` rows if it has more.

    Args:
        table: The table.
        row_cap: Most rows a table runs with; None runs every table at full size.

    Returns:
        ``table`` itself when it is within the cap, else a copy with ``rows=row_cap``
        (ids are then generated for the smaller table, same statistics otherwise).
    """
    if row_cap is None or table.rows <= row_cap:
        return table
    return replace(table, rows=row_cap)


# -- torch-fused kernel -----------------------------------------------------------------


@dataclass
class _DimGroup:
    """Tables of one dim, held in one weight tensor (rows of table after table).

    Attributes:
        dim: Embedding dimension of every table of the group.
        tables: Positions of the group's tables in the operator's table order.
        weight: ``[sum of the group's rows, dim]`` weights.
        table_index: ``tables`` as a tensor, to pick the group's bags.
        bag_row_offset: ``[len(tables) * batch]``: first weight row of each bag's table.
        contiguous: The group's tables are consecutive in the operator's table order.
    """

    dim: int
    tables: tuple[int, ...]
    weight: torch.Tensor
    table_index: torch.Tensor
    bag_row_offset: torch.Tensor
    contiguous: bool


class TorchFusedEmbeddingBags:
    """A table-batched embedding operator from PyTorch's own kernels (kernel ``torch-fused``).

    Same contract as FBGEMM's TBE with EXACT_SGD: ``op(indices, offsets)`` takes the ids of
    all tables in FBGEMM layout (table-major bags, ``tables * batch + 1`` offsets) and returns
    the pooled sums ``[batch, sum of dims]``, columns in table order; ``out.backward(grad)``
    applies ``w[r] -= lr * sum of the gradients of the bags that looked up row r`` to the
    weights in place and computes no gradient tensor.

    Fusion: the tables of each dim share one weight tensor; per group, the forward is one
    ``embedding_bag`` launch over all the group's bags (ids shifted by their table's first
    row) and the backward one ``index_select`` of bag gradients and one ``index_add_`` into
    the weights. Unlike FBGEMM, which sorts ids and reduces each row's gradients before
    writing, ``index_add_`` accumulates duplicates with atomic adds on CUDA, so very hot
    rows contend. With more than one group, the forward reads the tables' id boundaries
    to the host (one device synchronisation).
    """

    def __init__(
        self,
        tables: Sequence[TableSpec],
        batch_size: int,
        device: torch.device,
        learning_rate: float = SGD_LEARNING_RATE,
    ) -> None:
        """Args:
        tables: The tables, in the operator's table order.
        batch_size: Bags per table in every call.
        device: Where the weights live and the kernels run.
        learning_rate: SGD step of the fused update.
        """
        if not tables:
            raise BackendError("a fused operator needs at least one table")
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.device = device
        self.dims = tuple(t.dim for t in tables)
        self.col_offsets = tuple(int(c) for c in np.cumsum((0, *self.dims)))
        self._table_bag_starts = torch.arange(len(tables) + 1, device=device) * batch_size
        self.dtype = _TORCH_DTYPES[tables[0].dtype]
        by_dim: dict[int, list[int]] = {}
        for position, table in enumerate(tables):
            by_dim.setdefault(table.dim, []).append(position)
        self.groups: list[_DimGroup] = []
        self._row_starts: dict[int, tuple[int, int]] = {}  # table -> (group, first row)
        for group_number, (dim, members) in enumerate(by_dim.items()):
            rows = [tables[t].rows for t in members]
            starts = np.cumsum((0, *rows))[:-1]
            for t, start in zip(members, starts, strict=True):
                self._row_starts[t] = (group_number, int(start))
            bound = 1.0 / float(np.sqrt(max(rows)))
            weight = torch.empty(sum(rows), dim, dtype=self.dtype, device=device)
            weight.uniform_(-bound, bound)
            self.groups.append(
                _DimGroup(
                    dim=dim,
                    tables=tuple(members),
                    weight=weight,
                    table_index=torch.tensor(members, device=device),
                    bag_row_offset=torch.from_numpy(np.repeat(starts, batch_size)).to(device),
                    contiguous=members == list(range(members[0], members[-1] + 1)),
                )
            )
        self._rows = tuple(t.rows for t in tables)
        # A leaf that requires grad, so outputs are part of an autograd graph whose
        # backward runs the fused update.
        self._anchor = torch.zeros(0, device=device, requires_grad=True)

    def __call__(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Pooled sums ``[batch, sum of dims]`` of one batch (FBGEMM layout)."""
        expected = len(self.dims) * self.batch_size + 1
        if offsets.numel() != expected:
            raise BackendError(
                f"expected {expected} offsets (tables x batch + 1), got {offsets.numel()}"
            )
        out: torch.Tensor = _TorchFusedLookup.apply(  # type: ignore[no-untyped-call]
            self._anchor, self, indices, offsets
        )
        return out

    def split_embedding_weights(self) -> list[torch.Tensor]:
        """Each table's weights ``[rows, dim]``, as views (like FBGEMM's method of this name)."""
        views = []
        for t, rows in enumerate(self._rows):
            group, start = self._row_starts[t]
            views.append(self.groups[group].weight[start : start + rows])
        return views

    # -- the two passes (called by _TorchFusedLookup) -------------------------------------

    def group_inputs(
        self, indices: torch.Tensor, offsets: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per group: ids shifted into the group's weight rows, and bag lengths."""
        batch, num_tables = self.batch_size, len(self.dims)
        lengths = offsets[1:] - offsets[:-1]  # [tables * batch]
        if len(self.groups) == 1 and self.groups[0].contiguous:
            groups_ids = [indices]
            groups_lengths = [lengths]
        else:
            bounds = offsets[self._table_bag_starts].tolist()  # one host sync
            groups_ids, groups_lengths = [], []
            for group in self.groups:
                first, last = group.tables[0], group.tables[-1]
                if group.contiguous:
                    ids = indices[bounds[first] : bounds[last + 1]]
                else:
                    ids = torch.cat([indices[bounds[t] : bounds[t + 1]] for t in group.tables])
                groups_ids.append(ids)
                groups_lengths.append(
                    lengths.view(num_tables, batch).index_select(0, group.table_index).reshape(-1)
                )
        out = []
        for group, ids, group_lengths in zip(self.groups, groups_ids, groups_lengths, strict=True):
            if len(group.tables) > 1:
                shift = group.bag_row_offset.repeat_interleave(
                    group_lengths, output_size=ids.numel()
                )
                ids = ids + shift
            out.append((ids, group_lengths))
        return out

    def forward_pooled(self, inputs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Pooled sums ``[batch, sum of dims]`` (float32) from :meth:`group_inputs`."""
        batch = self.batch_size
        out = torch.empty(batch, self.col_offsets[-1], dtype=torch.float32, device=self.device)
        for group, (ids, lengths) in zip(self.groups, inputs, strict=True):
            k, dim = len(group.tables), group.dim
            group_offsets = torch.zeros(k * batch + 1, dtype=ids.dtype, device=self.device)
            torch.cumsum(lengths, 0, out=group_offsets[1:])
            pooled = F.embedding_bag(
                ids, group.weight, group_offsets, mode="sum", include_last_offset=True
            ).view(k, batch, dim)  # [tables of the group, batch, dim]
            if group.contiguous:
                first = self.col_offsets[group.tables[0]]
                out[:, first : first + k * dim].view(batch, k, dim).copy_(pooled.transpose(0, 1))
            else:
                for j, t in enumerate(group.tables):
                    out[:, self.col_offsets[t] : self.col_offsets[t + 1]].copy_(pooled[j])
        return out

    def backward_update(
        self, inputs: Sequence[tuple[torch.Tensor, torch.Tensor]], grad: torch.Tensor
    ) -> None:
        """The fused SGD step for the upstream gradient ``grad [batch, sum of dims]``."""
        batch = self.batch_size
        for group, (ids, lengths) in zip(self.groups, inputs, strict=True):
            k, dim = len(group.tables), group.dim
            if group.contiguous:
                first = self.col_offsets[group.tables[0]]
                bag_grad = grad[:, first : first + k * dim].reshape(batch, k, dim).transpose(0, 1)
            else:
                bag_grad = torch.stack(
                    [grad[:, self.col_offsets[t] : self.col_offsets[t + 1]] for t in group.tables]
                )
            bag_grad = bag_grad.reshape(k * batch, dim).to(self.dtype)  # [bags of the group, dim]
            bag_of_id = torch.repeat_interleave(lengths, output_size=ids.numel())
            group.weight.index_add_(
                0, ids, bag_grad.index_select(0, bag_of_id), alpha=-self.learning_rate
            )


class _TorchFusedLookup(torch.autograd.Function):
    """Forward: the pooled lookup; backward: the in-place SGD update, no gradient out."""

    @staticmethod
    def forward(
        ctx: Any,
        anchor: torch.Tensor,
        op: TorchFusedEmbeddingBags,
        indices: torch.Tensor,
        offsets: torch.Tensor,
    ) -> torch.Tensor:
        inputs = op.group_inputs(indices, offsets)
        ctx.op = op
        ctx.inputs = inputs
        return op.forward_pooled(inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None, None]:
        ctx.op.backward_update(ctx.inputs, grad)
        return None, None, None, None
