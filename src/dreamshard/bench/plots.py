"""PNG plots of a benchmark's results (matplotlib, headless Agg backend).

Every plot reads only the typed results, so plots can be redrawn from a saved run:
``write_plots(load_results("results.json"), folder)``
(:func:`dreamshard.bench.results.load_results`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dreamshard.bench.results import BenchmarkResults
from dreamshard.placers.registry import LEARNED_PLACER
from dreamshard.types import PlacementCost

#: Stacked stage colours, in stage order.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("fwd_comp_ms", "forward computation", "#4c72b0"),
    ("fwd_comm_ms", "forward communication (incl. wait)", "#8fb0de"),
    ("bwd_comm_ms", "backward communication", "#f0a35e"),
    ("bwd_comp_ms", "backward computation", "#c44e52"),
)


def _save(fig: Figure, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_costs(results: BenchmarkResults, path: Path) -> Path:
    """Grouped bars: mean measured cost per placer per suite, relative to the suite's
    strongest baseline (per-task ratio; error bars: one standard deviation over tasks)."""
    suites = results.suites
    names = list(suites)
    placers: list[str] = []
    for s in suites.values():
        placers += [p for p in s.main_placers if p not in placers]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(names) + 2), 4.6))
    width = 0.8 / max(1, len(placers))
    cmap = plt.get_cmap("tab10")
    x = np.arange(len(names))
    for k, p in enumerate(placers):
        stats = [suites[n].placers.get(p) for n in names]
        means = [st.mean_ratio_to_strongest if st is not None else None for st in stats]
        stds = [st.std_ratio_to_strongest if st is not None else None for st in stats]
        ax.bar(
            x + (k - (len(placers) - 1) / 2) * width,
            [m if m is not None else np.nan for m in means],
            width,
            yerr=[s if s is not None else 0.0 for s in stds],
            capsize=2,
            label=p,
            color="black" if p == LEARNED_PLACER else cmap(k % 10),
            error_kw={"elinewidth": 0.8},
        )
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, names)
    ax.set_ylabel("measured cost / strongest baseline's")
    ax.set_title(f"Mean measured cost per suite ({results.backend}; lower is better)")
    ratios = [
        st.mean_ratio_to_strongest
        for s in suites.values()
        for st in s.placers.values()
        if st.mean_ratio_to_strongest is not None
    ]
    if ratios:
        ax.set_ylim(max(0.0, min(ratios) - 0.15), max(ratios) + 0.2)
    fig.legend(*ax.get_legend_handles_labels(), ncol=len(placers), fontsize=8, loc="lower center")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path, tight=False)


def plot_stage_breakdown(results: BenchmarkResults, suite: str, path: Path) -> Path | None:
    """Stacked per-device stage costs of DreamShard and the strongest baseline on the
    suite's first task both placed."""
    summary = results.suites[suite]
    strongest = summary.strongest_baseline
    evaluation = results.evaluations[suite]
    if strongest is None or LEARNED_PLACER not in evaluation.placers:
        return None
    by_key = {(r.placer, r.task): r for r in evaluation.results}

    def costs_of(placer: str, task: str) -> PlacementCost | None:
        cost = by_key[(placer, task)].cost
        return cost if cost is not None and cost.per_device else None

    task = next((t for t in evaluation.common_tasks() if costs_of(LEARNED_PLACER, t)), None)
    if task is None:
        return None
    shown = [(p, costs_of(p, task)) for p in (LEARNED_PLACER, strongest)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, (placer, cost) in zip(axes, shown, strict=True):
        assert cost is not None  # a common task: every placer's placement was measured
        devices = cost.per_device
        x = np.arange(len(devices))
        bottom = np.zeros(len(devices))
        for key, label, colour in STAGES:
            values = np.array([getattr(d, key) for d in devices])
            ax.bar(x, values, bottom=bottom, label=label, color=colour)
            bottom += values
        ax.set_xticks(x, [f"dev{i}" for i in x])
        ax.set_title(f"{placer}: cost {cost.cost_ms:.2f} ms")
        ax.set_xlabel("device")
    axes[0].set_ylabel("ms per iteration")
    fig.legend(
        *axes[0].get_legend_handles_labels(), fontsize=8, loc="lower center", ncol=len(STAGES)
    )
    fig.suptitle(f"Per-device stage costs, {suite} task {task} ({results.backend})")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path, tight=False)


def plot_training(results: BenchmarkResults, path: Path) -> Path | None:
    """Measured mean cost of the sampled placements per training iteration, per family,
    and the cost network's error on each iteration's new measurements."""
    families = results.families
    if not families:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, fam in families.items():
        hist = fam.history
        its = [h.iteration for h in hist]
        left.plot(its, [h.measured_mean_cost_ms for h in hist], marker="o", ms=3, label=name)
        mape = [(h.iteration, h.new_cost_mape) for h in hist if h.new_cost_mape is not None]
        if mape:
            right.plot(*zip(*mape, strict=True), marker="o", ms=3, label=name)
    left.set_xlabel("iteration")
    left.set_ylabel("measured mean cost of sampled placements (ms)")
    left.set_title("Training: measured cost per iteration")
    right.set_xlabel("iteration")
    right.set_ylabel("cost-network MAPE on new measurements (%)")
    right.set_title("Cost network error before fitting")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(fontsize=8)
    if right.lines:
        right.legend(fontsize=8)
    return _save(fig, path)


def plot_generalisation(results: BenchmarkResults, path: Path) -> Path | None:
    """Heat map: speedup of each family's model over each suite's strongest baseline."""
    gen = results.generalisation
    if not gen.families or not gen.suites:
        return None
    values = np.array(
        [[v if v is not None else np.nan for v in row] for row in gen.speedup], dtype=float
    )
    fig, ax = plt.subplots(figsize=(1.3 * len(gen.suites) + 2.5, 0.8 * len(gen.families) + 2.0))
    span = max(0.05, float(np.nanmax(np.abs(values - 1.0)))) if np.isfinite(values).any() else 0.1
    image = ax.imshow(values, cmap="RdYlGn", vmin=1 - span, vmax=1 + span, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.3f}x", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(gen.suites)), gen.suites, rotation=20)
    ax.set_yticks(range(len(gen.families)), gen.families)
    ax.set_xlabel("evaluated on suite")
    ax.set_ylabel("trained on family")
    ax.set_title("DreamShard speedup over the strongest baseline (>1: faster)")
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def write_plots(results: BenchmarkResults, out_dir: Path) -> list[Path]:
    """Every plot into ``out_dir/plots``; returns the files written."""
    folder = out_dir / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    breakdown = results.config.breakdown_suite
    written = [
        plot_costs(results, folder / "cost_per_suite.png"),
        plot_stage_breakdown(results, breakdown, folder / "stage_breakdown.png"),
        plot_training(results, folder / "training_curve.png"),
        plot_generalisation(results, folder / "generalisation.png"),
    ]
    return [p for p in written if p is not None]
