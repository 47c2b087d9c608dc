"""Pieces shared by the cost backends: shard timings and the placement cost they add up to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dreamshard.types import FloatArray, TableSpec


@dataclass(frozen=True)
class ShardTiming:
    """Computation cost of one device's fused operator (all its tables), in milliseconds.

    Attributes:
        fwd_comp_ms: Forward lookup of the global batch.
        bwd_comp_ms: Backward with the fused sparse optimizer update.
    """

    fwd_comp_ms: float
    bwd_comp_ms: float


@dataclass(frozen=True)
class ShardSample:
    """A measured shard: the tables fused into one operator and what it cost."""

    tables: tuple[TableSpec, ...]
    batch_size: int
    timing: ShardTiming


def stage_synchronous_cost_ms(
    fwd_comp_ms: npt.ArrayLike,
    bwd_comp_ms: npt.ArrayLike,
    fwd_a2a_ms: npt.ArrayLike,
    bwd_a2a_ms: npt.ArrayLike,
) -> FloatArray:
    """The stage-synchronous placement cost of METHOD.md section 1.

    ``max fwd_comp + a2a_fwd + a2a_bwd + max bwd_comp``: the slowest device's forward,
    both all-to-alls, the slowest device's backward. It is the ``max_d total`` of the
    per-device costs :func:`dreamshard.types.synchronized_costs` gives. Vectorised:
    devices lie on the last axis of the computation times; leading axes (say, one per
    placement) broadcast with the all-to-all times.

    Args:
        fwd_comp_ms: Forward computation of each device, ``[..., devices]``.
        bwd_comp_ms: Backward computation of each device, the same shape.
        fwd_a2a_ms: Forward all-to-all, a number or ``[...]``.
        bwd_a2a_ms: Backward all-to-all, a number or ``[...]``.

    Returns:
        The cost in ms, ``[...]``: a 0-d array for one placement (``float()`` takes it).
    """
    fwd = np.asarray(fwd_comp_ms, dtype=np.float64)
    bwd = np.asarray(bwd_comp_ms, dtype=np.float64)
    comm = np.asarray(fwd_a2a_ms, dtype=np.float64) + np.asarray(bwd_a2a_ms, dtype=np.float64)
    cost: FloatArray = np.asarray(fwd.max(axis=-1) + comm + bwd.max(axis=-1), dtype=np.float64)
    return cost
