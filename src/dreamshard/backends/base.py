"""Pieces shared by the cost backends."""

from __future__ import annotations

from dataclasses import dataclass

from dreamshard.types import TableSpec


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
