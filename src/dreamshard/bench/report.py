"""The Markdown report of a benchmark run, rendered from its typed results (a saved run:
``render_report(load_results("results.json"))``)."""

from __future__ import annotations

from dataclasses import asdict

from dreamshard.bench.results import BenchmarkResults
from dreamshard.placers.registry import LEARNED_PLACER


def _fmt(value: float | None, spec: str = ".3f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def render_report(results: BenchmarkResults) -> str:
    """The report: setup, results per suite, where DreamShard loses, training, versions."""
    cfg = results.config
    env = results.environment
    suites = results.suites
    lines: list[str] = []
    add = lines.append
    kind = (
        "simulated: the calibrated analytical model"
        if results.backend == "sim"
        else "real kernel measurements"
    )
    add(f"# DreamShard benchmark{' (quick)' if results.quick else ''}")
    add("")
    add(f"Command: `{results.command}`")
    add("")
    add(
        f"Backend: `{results.backend}` ({kind}). Every cost below is the backend's "
        "measurement of the placement, never the cost network's estimate. Pool: "
        f"{cfg.pool_tables} DLRM-like tables (dim {cfg.dim}), split into disjoint "
        f"halves: {cfg.num_train_tasks} training tasks per family from one half, "
        f"{cfg.num_test_tasks} test tasks per suite from the other. Seed {cfg.seed}. "
        f"Total wall time {results.wall_s / 60:.1f} min."
    )
    failed = [
        f"{p} on {st.failures} of {s.tasks} tasks of {name}"
        for name, s in suites.items()
        for p, st in s.placers.items()
        if st.failures
    ]
    if failed:
        add("")
        add(
            "Placers that found no placement within memory (those tasks are left out of "
            "every mean of their suite): " + "; ".join(failed) + "."
        )
    add("")

    # -- where DreamShard does not win: first, plainly ------------------------------------
    add("## Where DreamShard does not beat a baseline")
    add("")
    losses = []
    for name, s in suites.items():
        beaten_by = s.dreamshard.not_better_than if s.dreamshard is not None else ()
        if beaten_by:
            ds = s.placers[LEARNED_PLACER].mean_cost_ms
            parts = [f"{p} ({s.placers[p].mean_cost_ms:.3f} ms)" for p in beaten_by]
            losses.append(
                f"- **{name}**: DreamShard's mean cost ({ds:.3f} ms) is not lower than "
                f"that of {', '.join(parts)}."
            )
    for name, s in suites.items():
        stats = s.placers
        if LEARNED_PLACER not in stats or not stats[LEARNED_PLACER].failures:
            continue
        fewer = [
            p
            for p in s.main_placers
            if p != LEARNED_PLACER and stats[p].failures < stats[LEARNED_PLACER].failures
        ]
        if fewer:
            others = ", ".join(f"{p} ({stats[p].failures})" for p in fewer)
            losses.append(
                f"- **{name}**: DreamShard found no placement within memory on "
                f"{stats[LEARNED_PLACER].failures} of {s.tasks} tasks, where "
                f"{others} failed on fewer "
                "(failed tasks are left out of every mean of the suite)."
            )
    if losses:
        lines.extend(losses)
    elif any(s.dreamshard is not None for s in suites.values()):
        add("DreamShard's mean measured cost is lower than every baseline's on every suite.")
    else:
        add("DreamShard was not evaluated.")
    gen = results.generalisation
    cross = [
        f"{fam} on {suite} ({value:.3f}x)"
        for fam, row in zip(gen.families, gen.speedup, strict=True)
        for suite, value in zip(gen.suites, row, strict=True)
        if value is not None and value <= 1.0
    ]
    if cross:
        add("")
        add(
            "Generalisation cells where a family's model does not beat the suite's strongest "
            "baseline: " + "; ".join(cross) + "."
        )
    add("")

    # -- per-suite results ---------------------------------------------------------------
    add("## Results per suite")
    add("")
    add(
        "Mean and standard deviation of the measured cost over the test tasks every placer "
        "placed; `ratio` is the mean per-task cost relative to the strongest baseline "
        "(± std over tasks); `geo-mean ratio` is the geometric mean of those ratios with "
        "its bootstrap 95% CI over tasks (`*`: the interval excludes 1) and `wins/losses` "
        "count the tasks cheaper/dearer than the strongest baseline; `place ms` is the mean "
        "time to produce one placement (for `rnn` it includes its per-task training on the "
        "backend)."
    )
    for name, s in suites.items():
        spec = s.spec
        add("")
        add(
            f"### {name}: {spec.tables} tables on {spec.devices} devices, "
            f"{spec.memory} each (model: family {spec.family})"
        )
        add("")
        add(
            f"{s.tasks} test tasks, {s.common_tasks} placed by every placer; memory "
            f"binds (an expert rule ignoring memory would overflow a device) on "
            f"{s.memory_binds_tasks} of {s.tasks}."
        )
        ref = s.reference
        if ref is not None:
            add("")
            add(
                f"`{ref}` is the reference, not a baseline: a long search on the backend's "
                "own costs (many thousands of evaluations per task, so simulator only); "
                f"`% above {ref}` is the geometric mean of each placer's per-task cost ratio "
                "to it, minus 1."
            )
        add("")
        extra = f" % above {ref} |" if ref is not None else ""
        add(
            "| placer | mean cost ms | std ms | ratio to strongest | geo-mean ratio [95% CI] "
            f"| wins/losses | place ms | failures |{extra}"
        )
        add("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if ref is not None else ""))
        for p in s.main_placers:
            st = s.placers[p]
            ratio = (
                f"{st.mean_ratio_to_strongest:.3f} ± {st.std_ratio_to_strongest:.3f}"
                if st.mean_ratio_to_strongest is not None and st.std_ratio_to_strongest is not None
                else "-"
            )
            noise = st.mean_measurement_rel_spread
            mean = f"{st.mean_cost_ms:.3f}" + (f" (±{noise * 100:.1f}%)" if noise else "")
            c = st.paired_to_strongest
            geo = (
                f"{c.geomean_ratio:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]"
                + ("*" if c.significant else "")
                if c is not None
                else "-"
            )
            wins = f"{c.wins}/{c.losses}" if c is not None else "-"
            above = ""
            if ref is not None:
                above = f" {_fmt(st.pct_above_reference, '+.1f')} |"
            add(
                f"| {p} | {mean} | {st.std_cost_ms:.3f} | {ratio} | {geo} | {wins} | "
                f"{st.mean_place_time_ms:.1f} | {st.failures} |{above}"
            )
        add("")
        if s.dreamshard is not None:
            standing = s.dreamshard
            add(
                f"Strongest baseline: **{s.strongest_baseline}**; DreamShard speedup over it: "
                f"**{standing.speedup:.3f}x** "
                f"(cost {(1 / standing.speedup - 1) * 100:+.1f}%). Strongest baseline "
                f"that spends no measurements: {s.strongest_measurement_free_baseline} "
                f"(speedup {_fmt(standing.speedup_vs_measurement_free)}x)."
            )
            add(
                "Tasks where DreamShard is cheaper: "
                + ", ".join(
                    f"vs {p} {w.wins}/{s.common_tasks}" for p, w in standing.task_wins.items()
                )
                + "."
            )
        else:
            add(f"Strongest baseline: **{s.strongest_baseline}**.")
        if s.rnn_measurements:
            add(
                f"`rnn` spent {s.rnn_measurements} backend measurements on this suite "
                f"({s.rnn_measurements / max(1, s.tasks):.0f} per task)."
            )
        if s.cost_net_mape is not None:
            add(
                f"Cost network MAPE on the measured test placements of this suite: "
                f"{s.cost_net_mape:.1f}%."
            )

    # -- summary table -------------------------------------------------------------------
    add("")
    add("## Speedup of DreamShard over the strongest baseline")
    add("")
    add("| suite | strongest baseline | speedup | strongest measurement-free | speedup |")
    add("|---|---|---:|---|---:|")
    for name, s in suites.items():
        speedup = s.dreamshard.speedup if s.dreamshard is not None else None
        free = s.dreamshard.speedup_vs_measurement_free if s.dreamshard is not None else None
        add(
            f"| {name} | {s.strongest_baseline} | {_fmt(speedup)}x | "
            f"{s.strongest_measurement_free_baseline} | {_fmt(free)}x |"
        )

    # -- generalisation ------------------------------------------------------------------
    if gen.families:
        add("")
        add("## Generalisation")
        add("")
        add(
            "Speedup over each suite's strongest baseline of the model trained on each "
            "family (rows), evaluated on each suite (columns), no retraining."
        )
        add("")
        add("| trained on \\ evaluated on | " + " | ".join(gen.suites) + " |")
        add("|---|" + "---:|" * len(gen.suites))
        for fam_name, row in zip(gen.families, gen.speedup, strict=True):
            add(f"| {fam_name} | " + " | ".join(f"{_fmt(v)}x" for v in row) + " |")

    # -- training ------------------------------------------------------------------------
    if results.families:
        add("")
        add("## Training")
        add("")
        add(
            "| family | tables | devices | memory | train tasks | iterations | "
            "backend measurements | wall s | cost-net MAPE on last new measurements |"
        )
        add("|---|---|---:|---|---:|---:|---:|---:|---:|")
        for name, fam in results.families.items():
            fspec = fam.spec
            tables = (
                f"{fspec.min_tables}"
                if fspec.min_tables == fspec.max_tables
                else f"{fspec.min_tables}-{fspec.max_tables}"
            )
            mape = fam.final_cost_mape_on_new
            add(
                f"| {name} | {tables} | {fspec.devices} | {fspec.memory} | "
                f"{fam.train_tasks} | {fspec.train.iterations} | {fam.measurements} | "
                f"{fam.train_wall_s:.1f} | {_fmt(mape, '.1f')}% |"
            )
        train = asdict(next(iter(results.families.values())).spec.train)
        add("")
        add(
            "Training settings (first family): "
            + ", ".join(f"{k} {v}" for k, v in train.items())
            + "."
        )
    rnn = cfg.rnn
    add("")
    add(
        f"`rnn` (Mirhoseini et al. 2017): per task, {rnn.budget} backend measurements in "
        f"updates of {rnn.samples_per_update} samples (LSTM encoder, attentional LSTM "
        f"decoder, hidden {rnn.hidden}, REINFORCE with a moving-average baseline, entropy "
        f"bonus {rnn.entropy_weight}); it returns the best placement it measured."
    )

    # -- plots and environment -----------------------------------------------------------
    add("")
    add("## Plots")
    add("")
    for plot in results.plots:
        add(f"![{plot}]({plot})")
        add("")
    add("## Hardware and versions")
    add("")
    for key, value in env.items():
        add(f"- {key}: {value}")
    backend = asdict(cfg.backend_options)
    add(f"- backend options: {', '.join(f'{k} {v}' for k, v in backend.items())}")
    add("")
    return "\n".join(lines)
