"""Fitting the simulator to real FBGEMM measurements (METHOD.md section 5).

Random shards (sets of tables fused into one operator) are drawn from DLRM-like pools,
measured on the ``fbgemm`` backend, and split into a fitting set and a held-out set.
The simulator's kernel parameters are fitted on the first; its errors are reported on
the second, so the accuracy it claims is on shards it never saw.

A share of the shards (``split_share``) holds one piece of a split heavy table (pooling
100-500, dims 64-256): a column shard or a row block, as split plans put on a device
(``types.TableSplit``), so the fit sees what split placements run.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dreamshard.backends.base import ShardSample
from dreamshard.backends.comm import AllToAllModel
from dreamshard.backends.fbgemm import FbgemmBackend, FbgemmConfig
from dreamshard.backends.sim.fit import fit_profile, prediction_errors
from dreamshard.backends.sim.profile import SimProfile
from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED
from dreamshard.data.augment import with_heavy_tables
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.errors import InputError
from dreamshard.runtime import cpu_model
from dreamshard.types import TableSpec, TableSplit, column_split_sizes, row_split_sizes


@dataclass(frozen=True)
class CalibrationConfig:
    """What to measure for a calibration.

    Attributes:
        num_shards: Shards measured in all (fitting + held out).
        holdout_fraction: Share of the shards kept out of the fit to report errors on.
        max_tables_per_shard: Shards hold 1..this many tables.
        mixed_dim_share: Share of shards drawn from a pool of mixed dims (4..128), so the
            fit sees the dim effect; the rest come from a dim-16 pool.
        max_rows: Row cap of the dim-16 pool (and of the real runs it should match).
        mixed_dim_max_rows: Row cap of the mixed-dim pool (wide tables are large).
        split_share: Share of shards whose first table is replaced by a column shard or
            row block (2, 4 or 8 pieces) of a heavy table of at most ``max_rows`` rows.
        batch_size: Global batch size.
        windows: Time windows per shard measurement.
        calls_per_window: Timed calls per shard per window.
        seed: Seed of the pools and the draws.
    """

    num_shards: int = 200
    holdout_fraction: float = 0.25
    max_tables_per_shard: int = 16
    mixed_dim_share: float = 0.3
    max_rows: int = 1_000_000
    mixed_dim_max_rows: int = 200_000
    split_share: float = 0.25
    batch_size: int = DEFAULT_BATCH_SIZE
    windows: int = 4
    calls_per_window: int = 6
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.num_shards < 10:
            raise InputError(f"num_shards must be at least 10, got {self.num_shards}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise InputError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.max_tables_per_shard < 1:
            raise InputError("max_tables_per_shard must be at least 1")
        if not 0.0 <= self.split_share <= 1.0:
            raise InputError(f"split_share must be in [0, 1], got {self.split_share}")


@dataclass(frozen=True)
class Calibration:
    """A fitted profile with the shards it was fitted and tested on."""

    profile: SimProfile
    fit_samples: tuple[ShardSample, ...]
    holdout_samples: tuple[ShardSample, ...]

    def holdout_errors(self) -> dict[str, float]:
        """Median and 90th-percentile absolute percentage errors on the held-out shards,
        and (``piece_`` keys, where any were held out) on those holding a piece of a
        split table."""
        errors = prediction_errors(self.profile, self.holdout_samples)
        with_piece = [any(t.shard is not None for t in s.tables) for s in self.holdout_samples]
        out: dict[str, float] = {}
        for key, values in errors.items():
            out[f"{key}_median_ape"] = float(np.median(values))
            out[f"{key}_p90_ape"] = float(np.percentile(values, 90))
            pieces = [v for v, p in zip(values, with_piece, strict=True) if p]
            if pieces:
                out[f"piece_{key}_median_ape"] = float(np.median(pieces))
                out[f"piece_{key}_p90_ape"] = float(np.percentile(pieces, 90))
        return out


def sample_shards(config: CalibrationConfig) -> list[tuple[TableSpec, ...]]:
    """Random shards from a dim-16 pool and a mixed-dim pool (names kept distinct)."""
    rng = np.random.default_rng(config.seed)
    plain = generate_table_pool(
        num_tables=856, seed=config.seed, dim=16, max_rows=config.max_rows, name_prefix="c16_"
    )
    mixed = generate_table_pool(
        num_tables=856,
        seed=config.seed + 1,
        dims=(4, 8, 16, 32, 64, 128),
        max_rows=config.mixed_dim_max_rows,
        name_prefix="cmix_",
    )
    heavy = [
        t
        for t in with_heavy_tables(
            generate_table_pool(
                num_tables=856, seed=config.seed + 2, dim=16, name_prefix="cheavy_"
            ),
            share=1.0,
            seed=config.seed + 3,
        )
        if t.rows <= config.max_rows
    ]
    pieces = np.random.default_rng(config.seed + 4)  # its own stream: split_share=0 is
    shards = []  # exactly the calibration without pieces
    for _ in range(config.num_shards):
        pool = mixed if rng.random() < config.mixed_dim_share else plain
        size = int(rng.integers(1, config.max_tables_per_shard + 1))
        chosen = rng.choice(len(pool), size=size, replace=False)
        tables = [pool[i] for i in sorted(chosen)]
        piece = _piece_of(heavy[int(pieces.integers(len(heavy)))], pieces)
        if pieces.random() < config.split_share:
            tables[0] = piece
        shards.append(tuple(tables))
    return shards


def _piece_of(table: TableSpec, rng: np.random.Generator) -> TableSpec:
    """One random column shard or row block of ``table`` cut in 2, 4 or 8 pieces."""
    parts = int(rng.choice([2, 4, 8]))
    if rng.random() < 0.5:
        split = TableSplit(0, "column", column_split_sizes(table.dim, parts))
    else:
        split = TableSplit(0, "row", row_split_sizes(table.rows, parts))
    return split.shards(table)[int(rng.integers(parts))]


def measure_samples(
    shards: Sequence[tuple[TableSpec, ...]],
    backend: FbgemmBackend,
) -> list[ShardSample]:
    """Measure shards on FBGEMM (interleaved) as simulator fitting samples."""
    timings = backend.measure_shards(shards)
    return [
        ShardSample(tables=s, batch_size=backend.config.batch_size, timing=t)
        for s, t in zip(shards, timings, strict=True)
    ]


def measure_calibration(
    config: CalibrationConfig,
    comm: AllToAllModel,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[ShardSample], list[ShardSample]]:
    """Measure random shards on FBGEMM; returns (fitting samples, held-out samples)."""
    backend = FbgemmBackend(
        FbgemmConfig(
            batch_size=config.batch_size,
            windows=config.windows,
            calls_per_window=config.calls_per_window,
            seed=config.seed,
            comm=comm,
        ),
        progress=progress,
    )
    samples = measure_samples(sample_shards(config), backend)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(samples))
    num_holdout = max(1, round(config.holdout_fraction * len(samples)))
    holdout = [samples[i] for i in order[:num_holdout]]
    fit = [samples[i] for i in order[num_holdout:]]
    return fit, holdout


def fit_calibration(
    config: CalibrationConfig,
    name: str,
    comm: AllToAllModel,
    fit: Sequence[ShardSample],
    holdout: Sequence[ShardSample],
) -> Calibration:
    """Fit a simulator profile to the fitting samples of a calibration."""
    profile = fit_profile(
        fit,
        name=name,
        description=(
            f"fitted to {len(fit)} FBGEMM CPU shard measurements (batch {config.batch_size}, "
            f"1 thread, reference-normalised); {len(holdout)} more held out for the error report"
        ),
        fitted_on=f"{platform.processor() or platform.machine()} / {cpu_model()}, "
        f"fbgemm-gpu-cpu, calibration config {asdict(config)}",
        comm=comm,
        loss="soft_l1",  # damps the few shards a level shift hit despite normalisation
    )
    return Calibration(profile=profile, fit_samples=tuple(fit), holdout_samples=tuple(holdout))


def samples_report(
    fit: Sequence[ShardSample], holdout: Sequence[ShardSample]
) -> list[dict[str, Any]]:
    """The measured shards, by table name (sample_shards() regenerates the tables)."""

    def rows(samples: Sequence[ShardSample], split: str) -> list[dict[str, Any]]:
        return [
            {
                "split": split,
                "tables": [t.name for t in s.tables],
                "pieces": {
                    t.name: {
                        "table": t.shard.table.name,
                        "kind": t.shard.kind,
                        "offset": t.shard.offset,
                        "size": t.shard.size,
                    }
                    for t in s.tables
                    if t.shard is not None
                },
                "fwd_comp_ms": s.timing.fwd_comp_ms,
                "bwd_comp_ms": s.timing.bwd_comp_ms,
            }
            for s in samples
        ]

    return rows(fit, "fit") + rows(holdout, "holdout")


def calibration_report(calibration: Calibration) -> dict[str, Any]:
    """Numbers worth saving next to a fitted profile."""
    return {
        "profile": calibration.profile.name,
        "fit_shards": len(calibration.fit_samples),
        "holdout_shards": len(calibration.holdout_samples),
        "holdout_errors": calibration.holdout_errors(),
        "samples": samples_report(calibration.fit_samples, calibration.holdout_samples),
    }
