"""Fitting the all-to-all model to measured collectives (METHOD.md section 5).

The single-device backends (``fbgemm``, ``sim``) take their communication stages from an
:class:`~dreamshard.backends.comm.AllToAllModel`. Here that model is fitted to real
``all_to_all_single`` calls of pooled outputs, timed by the ``distributed`` backend's
worker group (gloo between processes on a CPU host, NCCL between GPUs), over a grid of
global batch sizes and per-rank output widths:

1. every grid point is timed in several windows (interleaved, like every measurement
   here); its duration is the median over calls of the slowest rank's time;
2. a random share of the points is held out; the model's two parameters are fitted on
   the rest by non-negative least squares on *relative* errors (durations span two
   orders of magnitude), for each way a device's sent and received bytes may combine
   (``AllToAllModel.volume``: their max on full-duplex links, their sum where both
   directions share the CPUs); the form that fits the fitting points better is kept;
3. the errors on the held-out points (median and max absolute percentage error) are
   reported and recorded with the model, which is stored as the ``comm`` section of a
   hardware profile (backends/sim/profile.py's profile JSON).

Row-wise tables exchange their outputs with a reduce-scatter (forward) and an all-gather
(backward) instead, which comm.py models as an all-to-all of the same volume, one more
collective with its own latency. The grid also times those two collectives alone at a
few widths (every rank the same width: each row-wise table has a block on every rank);
they take no part in the fit, and the fitted model's error on them says how far that
volume-equivalence holds on the host (:meth:`CommFit.row_wise_errors`).
"""

from __future__ import annotations

import itertools
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

from dreamshard.backends.comm import OUTPUT_BYTES_PER_VALUE, VOLUME_MODES, AllToAllModel
from dreamshard.backends.distributed.protocol import COLLECTIVES, CommPoint, TimingSettings
from dreamshard.backends.sim.profile import SimProfile, load_profile
from dreamshard.constants import DEFAULT_SEED
from dreamshard.errors import InputError
from dreamshard.fileio import atomic_write_text
from dreamshard.runtime import cpu_model


@dataclass(frozen=True)
class CommFitConfig:
    """What to measure for a communication-model fit.

    Attributes:
        num_devices: Ranks of the all-to-all (processes, one per device).
        batch_sizes: Global batch sizes of the grid (samples).
        widths: Per-rank output widths (sum of dims) the grid draws from; 0 is a rank
            without tables.
        row_widths: Widths (summed dims of row-wise tables, the same on every rank) at
            which the reduce-scatter and the all-gather of row-wise outputs are timed, at
            every batch size; empty: none.
        max_points_per_batch: Width combinations per batch size; all of them when there
            are no more, else a seeded random sample.
        holdout_fraction: Share of the grid points kept out of the fit.
        windows: Time windows per point.
        calls_per_window: Timed calls per point per window.
        warmup_calls: Untimed calls per point.
        device: ``cpu`` (gloo) or ``cuda`` (NCCL).
        seed: Seed of the width sample and the hold-out split.
    """

    num_devices: int = 2
    batch_sizes: tuple[int, ...] = (1024, 4096, 16384)
    widths: tuple[int, ...] = (0, 16, 64, 256, 1024)
    row_widths: tuple[int, ...] = (16, 128, 1024)
    max_points_per_batch: int = 25
    holdout_fraction: float = 0.25
    windows: int = 4
    calls_per_window: int = 5
    warmup_calls: int = 2
    device: str = "cpu"
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.num_devices < 2:
            raise InputError(
                f"a communication fit needs at least 2 devices, got {self.num_devices}"
            )
        if not self.batch_sizes or min(self.batch_sizes) < self.num_devices:
            raise InputError("batch sizes must be at least the number of devices")
        if not self.widths or min(self.widths) < 0 or max(self.widths) <= 0:
            raise InputError("widths must be non-negative with at least one positive")
        if any(w < 1 for w in self.row_widths):
            raise InputError(f"row-wise widths must be positive, got {list(self.row_widths)}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise InputError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.windows < 1 or self.calls_per_window < 1 or self.max_points_per_batch < 1:
            raise InputError("windows, calls per window and points per batch must be >= 1")

    @property
    def timing(self) -> TimingSettings:
        return TimingSettings(self.windows, self.calls_per_window, self.warmup_calls)


#: The collectives of row-wise tables' outputs (comm.py models each as an all-to-all).
ROW_WISE_COLLECTIVES: tuple[str, ...] = tuple(c for c in COLLECTIVES if c != "all_to_all")


@dataclass(frozen=True)
class CommSample:
    """One timed grid point: its collective's median duration in ms."""

    point: CommPoint
    time_ms: float


@dataclass(frozen=True)
class RowWiseError:
    """How well the all-to-all model predicts one row-wise collective as an all-to-all of
    the same volume (one collective, one latency).

    Attributes:
        collective: ``reduce_scatter`` or ``all_gather``.
        points: Grid points timed.
        median_ape: Median absolute percentage error.
        max_ape: Largest absolute percentage error.
        median_ratio: Median of measured / predicted (> 1: slower than the model says).
    """

    collective: str
    points: int
    median_ape: float
    max_ape: float
    median_ratio: float


@dataclass(frozen=True)
class CommFit:
    """A fitted model with the points it was fitted and tested on.

    Attributes:
        model: The fitted all-to-all model.
        fit_samples: All-to-all points it was fitted to.
        holdout_samples: All-to-all points held out of the fit.
        row_wise_samples: Reduce-scatter and all-gather points, never fitted to.
    """

    model: AllToAllModel
    fit_samples: tuple[CommSample, ...]
    holdout_samples: tuple[CommSample, ...]
    row_wise_samples: tuple[CommSample, ...] = ()

    def holdout_errors(self) -> dict[str, float]:
        """Median and max absolute percentage error on the held-out points."""
        ape = [_ape(self.model, s) for s in self.holdout_samples]
        return {"median_ape": float(np.median(ape)), "max_ape": float(np.max(ape))}

    def fit_errors(self) -> dict[str, float]:
        """The same on the points the model was fitted to."""
        ape = [_ape(self.model, s) for s in self.fit_samples]
        return {"median_ape": float(np.median(ape)), "max_ape": float(np.max(ape))}

    def row_wise_errors(self) -> list[RowWiseError]:
        """The model's error on each row-wise collective timed (in ROW_WISE_COLLECTIVES
        order; those without points left out)."""
        out = []
        for collective in ROW_WISE_COLLECTIVES:
            samples = [s for s in self.row_wise_samples if s.point.collective == collective]
            if not samples:
                continue
            ape = [_ape(self.model, s) for s in samples]
            ratio = [s.time_ms / _predicted_ms(self.model, s) for s in samples]
            out.append(
                RowWiseError(
                    collective=collective,
                    points=len(samples),
                    median_ape=float(np.median(ape)),
                    max_ape=float(np.max(ape)),
                    median_ratio=float(np.median(ratio)),
                )
            )
        return out


def grid_points(config: CommFitConfig) -> list[CommPoint]:
    """The grid: per batch size, every width combination or a seeded sample of them.

    Combinations where no rank sends anything (all widths 0) are left out.
    """
    rng = np.random.default_rng(config.seed)
    combos = [
        c
        for c in itertools.product(config.widths, repeat=config.num_devices)
        if any(w > 0 for w in c)
    ]
    points: list[CommPoint] = []
    for batch in config.batch_sizes:
        if len(combos) <= config.max_points_per_batch:
            chosen = combos
        else:
            idx = rng.choice(len(combos), size=config.max_points_per_batch, replace=False)
            chosen = [combos[i] for i in sorted(idx)]
        points.extend(CommPoint(batch_size=batch, widths=tuple(c)) for c in chosen)
    return points


def row_wise_points(config: CommFitConfig) -> list[CommPoint]:
    """The reduce-scatter and all-gather points: every batch size and row-wise width."""
    return [
        CommPoint(batch_size=batch, widths=(width,) * config.num_devices, collective=collective)
        for batch in config.batch_sizes
        for width in config.row_widths
        for collective in ROW_WISE_COLLECTIVES
    ]


def slowest_volume_bytes(point: CommPoint, volume: str = "max") -> float:
    """Bytes the busiest rank moves: its sent and received bytes combined as ``volume``
    says (``"max"`` or ``"sum"``, see comm.py)."""
    num = len(point.widths)
    total = sum(point.widths)
    slowest = 0.0
    for width in point.widths:
        sent = point.batch_size * width * (num - 1) / num
        received = point.batch_size / num * (total - width)
        slowest = max(slowest, sent + received if volume == "sum" else max(sent, received))
    return slowest * OUTPUT_BYTES_PER_VALUE


def fit_model(samples: Sequence[CommSample], source: str, volume: str = "max") -> AllToAllModel:
    """Latency and bandwidth minimising the squared relative error, both non-negative.

    ``time = latency_ms + bytes / (bandwidth_gbps * 1e6)`` is linear in
    (latency_ms, ms per byte); dividing each row by its measured time makes the least
    squares relative.
    """
    if len(samples) < 2:
        raise InputError(f"a communication fit needs at least 2 points, got {len(samples)}")
    times = np.array([s.time_ms for s in samples])
    if np.any(times <= 0):
        raise InputError("measured all-to-all times must be positive")
    volumes = np.array([slowest_volume_bytes(s.point, volume) for s in samples])
    design = np.stack([np.ones_like(volumes), volumes], axis=1) / times[:, None]
    (latency_ms, ms_per_byte), _ = nnls(design, np.ones_like(times))
    if ms_per_byte <= 0:
        raise InputError("the measured times do not grow with the volume; cannot fit a bandwidth")
    return AllToAllModel(
        latency_ms=float(latency_ms),
        bandwidth_gbps=float(1.0 / (ms_per_byte * 1e6)),
        source=source,
        volume=volume,
    )


def fit_best_model(samples: Sequence[CommSample], source: str) -> AllToAllModel:
    """The model of each volume form (comm.VOLUME_MODES) fitted to ``samples``; the one
    with the smaller median relative error on them."""
    models = [fit_model(samples, source, volume) for volume in VOLUME_MODES]
    return min(models, key=lambda m: float(np.median([_ape(m, s) for s in samples])))


def split_holdout(
    samples: Sequence[CommSample], fraction: float, seed: int
) -> tuple[list[CommSample], list[CommSample]]:
    """(fitting, held-out) samples, a seeded random split."""
    order = np.random.default_rng(seed).permutation(len(samples))
    num_holdout = max(1, round(fraction * len(samples)))
    holdout = [samples[i] for i in sorted(order[:num_holdout])]
    fit = [samples[i] for i in sorted(order[num_holdout:])]
    return fit, holdout


def measure_grid(
    config: CommFitConfig, measure: Callable[[Sequence[CommPoint], TimingSettings], list[float]]
) -> list[CommSample]:
    """Time every grid point, all-to-all and row-wise, interleaved in one run of
    ``measure`` (DistributedBackend.measure_comm)."""
    points = grid_points(config) + row_wise_points(config)
    times = measure(points, config.timing)
    return [CommSample(p, t) for p, t in zip(points, times, strict=True)]


def fit_comm(config: CommFitConfig, samples: Sequence[CommSample]) -> CommFit:
    """Hold out a share of the all-to-all points, fit on the rest, record the held-out
    error and the error on the row-wise points."""
    all_to_all = [s for s in samples if s.point.collective == "all_to_all"]
    row_wise = tuple(s for s in samples if s.point.collective != "all_to_all")
    fit, holdout = split_holdout(all_to_all, config.holdout_fraction, config.seed)
    draft = fit_best_model(fit, source="")
    checked = CommFit(draft, tuple(fit), tuple(holdout), row_wise)
    errors = checked.holdout_errors()
    row_errors = "".join(
        f"; {e.collective} as an all-to-all of its volume: median APE {e.median_ape:.1f}%"
        f" (measured / predicted {e.median_ratio:.2f})"
        for e in checked.row_wise_errors()
    )
    backend = "NCCL" if config.device == "cuda" else "gloo"
    source = (
        f"fitted to {len(fit)} {backend} all_to_all_single timings between "
        f"{config.num_devices} processes on {_host()} (batch {min(config.batch_sizes)}-"
        f"{max(config.batch_sizes)}, per-rank widths {min(config.widths)}-{max(config.widths)}; "
        f"volume form {draft.volume!r} fitted better than the other); "
        f"held-out {len(holdout)} points: median APE {errors['median_ape']:.1f}%, "
        f"max {errors['max_ape']:.1f}%{row_errors} (dreamshard calibrate-comm)"
    )
    # The row-wise collectives' factors: their median measured / predicted as all-to-alls
    # of the same volume (1.0 where none was timed).
    factors = {e.collective: e.median_ratio for e in checked.row_wise_errors()}
    model = AllToAllModel(
        draft.latency_ms,
        draft.bandwidth_gbps,
        source,
        draft.volume,
        reduce_scatter_factor=factors.get("reduce_scatter", 1.0),
        all_gather_factor=factors.get("all_gather", 1.0),
    )
    return CommFit(model, tuple(fit), tuple(holdout), row_wise)


def update_profile(profile: str | Path, model: AllToAllModel, out: str | Path) -> SimProfile:
    """The profile ``profile`` with ``model`` as its ``comm`` section, written to ``out``
    atomically (``out`` may be the profile's own file)."""
    updated = SimProfile(**{**load_profile(profile).__dict__, "comm": model})
    atomic_write_text(out, updated.to_json())
    return updated


def fit_report(config: CommFitConfig, result: CommFit) -> dict[str, Any]:
    """Everything worth keeping beside a fitted model: settings, points, errors."""

    def rows(samples: Sequence[CommSample], split: str) -> list[dict[str, Any]]:
        return [
            {
                "split": split,
                "collective": s.point.collective,
                "batch_size": s.point.batch_size,
                "widths": list(s.point.widths),
                "volume_bytes": slowest_volume_bytes(s.point, result.model.volume),
                "measured_ms": s.time_ms,
                "predicted_ms": _predicted_ms(result.model, s),
            }
            for s in samples
        ]

    return {
        "config": asdict(config),
        "model": asdict(result.model),
        "holdout_errors_percent": result.holdout_errors(),
        "fit_errors_percent": result.fit_errors(),
        "row_wise_errors": [asdict(e) for e in result.row_wise_errors()],
        "points": rows(result.fit_samples, "fit")
        + rows(result.holdout_samples, "holdout")
        + rows(result.row_wise_samples, "row-wise"),
    }


def _predicted_ms(model: AllToAllModel, sample: CommSample) -> float:
    """The model's time of a point; a row-wise collective counts as one all-to-all of the
    same volume (comm.py)."""
    return model.time_ms(sample.point.widths, sample.point.batch_size)


def _ape(model: AllToAllModel, sample: CommSample) -> float:
    predicted = _predicted_ms(model, sample)
    return abs(predicted - sample.time_ms) / sample.time_ms * 100.0


def _host() -> str:
    return f"{platform.machine()} / {cpu_model()}"
