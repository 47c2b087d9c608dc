"""Pieces shared by the cost backends: shard timings and the placement cost they add up to."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dreamshard.constants import LOADED_REFERENCE_SLOWDOWN, LOADED_REFERENCE_SPREAD
from dreamshard.types import FloatArray, MeasurementConditions, TableSpec


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


def assess_conditions(
    reference_ms: Sequence[float],
    nominal_ms: float | None,
    load_average: float | None,
    cpu_count: int,
    measuring_cores: int = 1,
) -> MeasurementConditions:
    """Signs that a measurement ran on a loaded machine, each with its figure.

    Args:
        reference_ms: Times of the reference shard taken between the measured shards
            (one kind, e.g. forward), or empty where the backend times no reference.
        nominal_ms: The reference's usual time, or None.
        load_average: The 1-minute load average at the end, or None.
        cpu_count: Cores of the machine.
        measuring_cores: Cores the measurement itself keeps busy (its share of the load).
    """
    free = max(0, cpu_count - measuring_cores)
    warnings: list[str] = []
    slowdown = spread = None
    if reference_ms:
        median = float(np.median(reference_ms))
        if len(reference_ms) > 1 and median > 0:
            spread = float(np.std(reference_ms)) / median
            if spread > LOADED_REFERENCE_SPREAD:
                warnings.append(
                    f"the reference shard's timings spread {spread * 100:.0f}% "
                    f"(more than {LOADED_REFERENCE_SPREAD * 100:.0f}%)"
                )
        if nominal_ms:
            slowdown = median / nominal_ms - 1.0
            if slowdown > LOADED_REFERENCE_SLOWDOWN:
                warnings.append(
                    f"the reference shard ran {slowdown * 100:.0f}% slower than nominal "
                    f"({median:.3f} vs {nominal_ms:.3f} ms)"
                )
    if load_average is not None and load_average - measuring_cores > free:
        warnings.append(
            f"load average {load_average:.2f} on {cpu_count} cores: other work is using "
            f"more than the {free} core(s) the measurement leaves free"
        )
    return MeasurementConditions(slowdown, spread, load_average, free, tuple(warnings))


def load_average() -> float | None:
    """The machine's 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
