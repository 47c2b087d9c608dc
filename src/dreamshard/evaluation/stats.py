"""Paired statistics of a comparison: each placer against a baseline, task by task.

Measured costs differ far more between tasks than between placers on one task, and a
real kernel's timing noise comes in level shifts that hit every placer of a task alike
(they are measured interleaved). So placers are compared on their per-task cost ratio
to the baseline: the geometric mean of the ratios over tasks (a ratio of 0.95 is 5%
cheaper), a bootstrap confidence interval of that mean (tasks resampled with
replacement, seeded), and the tasks won, lost and tied. A CI that excludes 1 says the
difference holds across tasks, not only on average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dreamshard.constants import DEFAULT_SEED

#: Bootstrap resamples of the tasks.
BOOTSTRAP_RESAMPLES = 10_000

#: Confidence of the interval.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedComparison:
    """One placer against a baseline over the tasks both placed.

    Attributes:
        placer: The placer.
        baseline: The baseline it is compared with.
        tasks: Tasks compared.
        geomean_ratio: Geometric mean over tasks of cost(placer) / cost(baseline).
        ci_low: Lower end of the bootstrap confidence interval of ``geomean_ratio``.
        ci_high: Upper end.
        confidence: Confidence of the interval (0.95).
        wins: Tasks where the placer is cheaper.
        losses: Tasks where it is dearer.
        ties: Tasks where both cost the same.
    """

    placer: str
    baseline: str
    tasks: int
    geomean_ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    wins: int
    losses: int
    ties: int

    @property
    def significant(self) -> bool:
        """Whether the confidence interval excludes 1."""
        return self.ci_high < 1.0 or self.ci_low > 1.0


def paired_comparison(
    placer: str,
    costs_ms: Sequence[float],
    baseline: str,
    baseline_costs_ms: Sequence[float],
    seed: int = DEFAULT_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> PairedComparison:
    """Compare two placers' costs on the same tasks (in the same order).

    Raises:
        ValueError: different numbers of tasks, no task, or a cost that is not positive.
    """
    mine = np.asarray(costs_ms, dtype=np.float64)
    theirs = np.asarray(baseline_costs_ms, dtype=np.float64)
    if mine.shape != theirs.shape or mine.ndim != 1 or not len(mine):
        raise ValueError("paired costs need the same, non-zero number of tasks")
    if not (np.all(mine > 0) and np.all(theirs > 0)):
        raise ValueError("paired costs must be positive")
    log_ratio = np.log(mine / theirs)
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(log_ratio), size=(resamples, len(log_ratio)))
    means = np.exp(log_ratio[picks].mean(axis=1))
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return PairedComparison(
        placer=placer,
        baseline=baseline,
        tasks=len(log_ratio),
        geomean_ratio=float(np.exp(log_ratio.mean())),
        ci_low=float(low),
        ci_high=float(high),
        confidence=confidence,
        wins=int((mine < theirs).sum()),
        losses=int((mine > theirs).sum()),
        ties=int((mine == theirs).sum()),
    )
