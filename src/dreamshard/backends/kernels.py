"""Fused embedding operators: one per device, built from its tables and their ids.

Every measuring backend (``fbgemm`` here, ``distributed`` across processes) times the
same thing: one fused table-batched embedding operator per device, a forward that looks
up and pools a batch of ids for all of the device's tables at once, and a backward with
the optimizer's sparse update fused in. :func:`build_fused` builds it with FBGEMM's
``SplitTableBatchedEmbeddingBagsCodegen`` (CPU build here, CUDA build where installed);
:func:`time_fused_call` times one forward and one backward.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dreamshard.errors import BackendError
from dreamshard.types import TableSpec

#: Learning rate of the fused SGD update; its value does not change the cost.
SGD_LEARNING_RATE = 0.01


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
) -> FusedShard:
    """FBGEMM's fused operator for ``tables`` (EXACT_SGD update fused into the backward).

    Args:
        tables: The device's tables, as they run (rows already capped if need be).
        ids: Per-table ``(indices, offsets)`` of one batch, in the order of ``tables``.
        batch_size: Samples per batch (bags per table).
        device: ``cpu`` or ``cuda``.

    Raises:
        BackendError: Mixed dtypes, or FBGEMM could not build the operator.
    """
    from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    cuda = device == "cuda"
    location = EmbeddingLocation.DEVICE if cuda else EmbeddingLocation.HOST
    compute = ComputeDevice.CUDA if cuda else ComputeDevice.CPU
    dtypes = {t.dtype for t in tables}
    if len(dtypes) > 1:
        raise BackendError(f"tables of one device must share a dtype to fuse, got {sorted(dtypes)}")
    precision = SparseType.FP16 if dtypes == {"fp16"} else SparseType.FP32
    try:
        op = SplitTableBatchedEmbeddingBagsCodegen(
            [(t.rows, t.dim, location, compute) for t in tables],
            optimizer=EmbOptimType.EXACT_SGD,
            learning_rate=SGD_LEARNING_RATE,
            weights_precision=precision,
            device=torch.device(device),
        )
    except (RuntimeError, MemoryError) as err:
        raise BackendError(f"could not build the fused operator: {err}") from None
    indices, offsets = concat_ids(ids)
    torch_device = torch.device(device)
    return FusedShard(
        op=op,
        indices=torch.from_numpy(indices).to(torch_device),
        offsets=torch.from_numpy(offsets).to(torch_device),
        grad=torch.ones(batch_size, sum(t.dim for t in tables), device=torch_device),
        weight_bytes=sum(t.size_bytes for t in tables),
    )


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
