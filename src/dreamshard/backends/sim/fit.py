"""Calibrating the simulator: fitting a profile's kernel parameters to measured shards.

:func:`fit_profile` fits the 18 parameters of the fused-kernel model
(``backends/sim/model.py``) to shard measurements (``ShardSample``, taken on the
``fbgemm`` backend by ``backends/calibrate.py``) by least squares on log errors;
:func:`prediction_errors` reports how far a profile's predictions are from measurements.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import least_squares

from dreamshard.backends.base import ShardSample
from dreamshard.backends.comm import AllToAllModel
from dreamshard.backends.sim.model import (
    TableFeatures,
    check_batch_size,
    shards_ms,
    table_features,
    table_terms,
)
from dreamshard.backends.sim.profile import (
    DEFAULT_PROFILE_NAME,
    KernelParams,
    SimProfile,
    load_profile,
)
from dreamshard.errors import InputError
from dreamshard.types import FloatArray, IntArray, TableSpec

log = logging.getLogger(__name__)


def _samples_arrays(
    samples: Sequence[ShardSample],
) -> tuple[TableFeatures, IntArray, FloatArray]:
    """Features of every table of every sample, the sample of each table, and the
    measured (fwd, bwd) of every sample stacked as ``[samples, 2]``."""
    if not samples:
        raise InputError("no shard samples given")
    tables: list[TableSpec] = []
    batches: list[int] = []
    owner: list[int] = []
    for i, sample in enumerate(samples):
        if not sample.tables:
            raise InputError(f"shard sample {i} has no tables")
        check_batch_size(sample.batch_size)
        timing = sample.timing
        if not (timing.fwd_comp_ms > 0 and timing.bwd_comp_ms > 0):
            raise InputError(
                f"shard sample {i}: timings must be positive to fit in log space "
                f"(fwd {timing.fwd_comp_ms} ms, bwd {timing.bwd_comp_ms} ms)"
            )
        tables.extend(sample.tables)
        batches.extend([sample.batch_size] * len(sample.tables))
        owner.extend([i] * len(sample.tables))
    measured = np.array(
        [[s.timing.fwd_comp_ms, s.timing.bwd_comp_ms] for s in samples], dtype=np.float64
    )
    return table_features(tables, batches), np.array(owner, dtype=np.int64), measured


def _predict_samples(
    k: KernelParams, feats: TableFeatures, owner: IntArray, num_samples: int
) -> tuple[FloatArray, FloatArray]:
    return shards_ms(k, table_terms(k, feats), owner, num_samples)


#: Residual evaluations the least-squares fit may spend.
_FIT_MAX_EVALUATIONS = 5000

#: How far (a factor) a fitted parameter may move from its initial value.
_FIT_BOUND_FACTOR = 1e4

#: Log error beyond which a robust loss ("soft_l1", ...) treats a sample as an outlier:
#: about 10%, the top of MEASUREMENT.md's noise for a median of 10 calls.
_FIT_OUTLIER_LOG_ERROR = 0.1


def fit_profile(
    samples: Sequence[ShardSample],
    name: str,
    description: str,
    fitted_on: str,
    comm: AllToAllModel,
    init: SimProfile | None = None,
    *,
    measured: bool = True,
    prior_weight: float = 1e-2,
    loss: str = "linear",
) -> SimProfile:
    """Fit the kernel parameters to measured shards by least squares in log space.

    Minimises the squared errors of ``log(fwd)`` and ``log(bwd)`` (relative errors, so
    tiny and huge shards count alike) over ``log(params)`` (keeps them positive; the
    cache capacity and its transition width are fitted like the rest), with
    ``scipy.optimize.least_squares``. A weak pull of ``prior_weight * (log p - log p0)``
    per parameter keeps parameters the samples do not determine (say, miss penalties
    when no shard outgrows the cache) at their initial values instead of drifting.

    Args:
        samples: Measured shards.
        name: Name of the new profile.
        description: Its description.
        fitted_on: The hardware and measurements (for example "FBGEMM CPU 1.8.0, AMD
            EPYC Zen 4, 400 shards, median of 200 calls over 6 windows").
        comm: All-to-all model to store in the profile.
        init: Starting point; defaults to the packaged "cpu-zen4".
        measured: Whether the samples are real measurements (False for synthetic ones).
        prior_weight: Weight of the pull towards ``init``; 0 disables it.
        loss: ``least_squares`` loss: "linear", or "soft_l1" to damp outliers (log
            errors beyond about 0.1, i.e. 10%, count less).

    Returns:
        The fitted profile.

    Raises:
        InputError: No samples, a sample without tables or with a non-positive timing,
            or the optimiser did not converge.
    """
    start = init if init is not None else load_profile(DEFAULT_PROFILE_NAME)
    feats, owner, measured_ms = _samples_arrays(samples)
    num_samples = measured_ms.shape[0]
    log_measured = np.log(measured_ms)
    x0 = np.log(start.kernel.to_vector())

    def residuals(x: FloatArray) -> FloatArray:
        k = KernelParams.from_vector(np.exp(x))
        fwd, bwd = _predict_samples(k, feats, owner, num_samples)
        fit = np.concatenate([np.log(fwd) - log_measured[:, 0], np.log(bwd) - log_measured[:, 1]])
        if prior_weight > 0:
            fit = np.concatenate([fit, prior_weight * (x - x0)])
        return fit

    bound = math.log(_FIT_BOUND_FACTOR)
    result = least_squares(
        residuals,
        x0,
        bounds=(x0 - bound, x0 + bound),
        method="trf",
        loss=loss,
        f_scale=_FIT_OUTLIER_LOG_ERROR,
        max_nfev=_FIT_MAX_EVALUATIONS,
    )
    if result.status < 0:
        raise InputError(f"fitting profile {name!r} failed: {result.message}")
    if not result.success:
        # Out of evaluations: the fit is still the best found; its errors get reported.
        log.warning("fitting profile %r stopped early: %s", name, result.message)
    return SimProfile(
        name=name,
        description=description,
        measured=measured,
        fitted_on=fitted_on,
        kernel=KernelParams.from_vector(np.exp(result.x)),
        comm=comm,
    )


def prediction_errors(
    profile: SimProfile, samples: Sequence[ShardSample]
) -> dict[str, list[float]]:
    """Absolute percentage errors of the profile's predictions on measured shards.

    Returns:
        ``{"fwd": [...], "bwd": [...], "total": [...]}``: per sample, in sample order,
        ``100 * |predicted - measured| / measured`` of the forward, backward and
        forward+backward computation times.
    """
    feats, owner, measured_ms = _samples_arrays(samples)
    fwd, bwd = _predict_samples(profile.kernel, feats, owner, measured_ms.shape[0])
    meas_fwd, meas_bwd = measured_ms[:, 0], measured_ms[:, 1]
    meas_total = meas_fwd + meas_bwd

    def ape(pred: FloatArray, meas: FloatArray) -> list[float]:
        return [float(v) for v in 100.0 * np.abs(pred - meas) / meas]

    return {
        "fwd": ape(fwd, meas_fwd),
        "bwd": ape(bwd, meas_bwd),
        "total": ape(fwd + bwd, meas_total),
    }
