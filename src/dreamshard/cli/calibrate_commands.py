"""Commands that fit the simulator to this machine: ``calibrate``, ``calibrate-comm``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dreamshard.cli.options import CallsOpt, SeedOpt, WindowsOpt, check_out, parse_ints
from dreamshard.cli.output import out_console, progress
from dreamshard.constants import DEFAULT_SEED, DEVICE_TYPES
from dreamshard.errors import InputError
from dreamshard.fileio import write_json


def calibrate(
    out: Annotated[Path, typer.Option("--out", help="Profile JSON to write.")],
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Where to write the error report (default: beside --out)."),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Profile name.")] = "cpu-zen4",
    num_shards: Annotated[int, typer.Option("--num-shards", help="Shards to measure.")] = 200,
    holdout: Annotated[float, typer.Option("--holdout", help="Share of shards held out.")] = 0.25,
    split_share: Annotated[
        float,
        typer.Option(
            "--split-share",
            help="Share of shards holding a column shard or row block of a split heavy table.",
        ),
    ] = 0.25,
    seed: SeedOpt = DEFAULT_SEED,
    windows: WindowsOpt = 4,
    calls: CallsOpt = 6,
) -> None:
    """Fit the simulator to FBGEMM measurements of random shards on this machine (some
    holding pieces of split tables, as split placements run them)."""
    from dreamshard.backends.calibrate import (
        CalibrationConfig,
        calibration_report,
        fit_calibration,
        measure_calibration,
        samples_report,
    )
    from dreamshard.backends.fbgemm import default_comm

    check_out(out)
    report_path = report if report is not None else out.with_suffix(".report.json")
    check_out(report_path, out, flag="--report")
    config = CalibrationConfig(
        num_shards=num_shards,
        holdout_fraction=holdout,
        split_share=split_share,
        seed=seed,
        windows=windows,
        calls_per_window=calls,
    )
    comm = default_comm("cpu")  # keep the packaged profile's fitted all-to-all model
    with progress(f"measuring {num_shards} shards on fbgemm") as on_progress:
        fit, held_out = measure_calibration(config, comm, on_progress)
    # Keep the measurements even if the fit fails.
    write_json(report_path, {"samples": samples_report(fit, held_out)})
    result = fit_calibration(config, name, comm, fit, held_out)
    summary = calibration_report(result)
    errors = summary["holdout_errors"]
    out_console.print(
        f"held-out shards ({summary['holdout_shards']}): median APE fwd "
        f"{errors['fwd_median_ape']:.1f}%, bwd {errors['bwd_median_ape']:.1f}%, "
        f"fwd+bwd {errors['total_median_ape']:.1f}% (p90 {errors['total_p90_ape']:.1f}%)"
        + (
            f"; those holding a piece of a split table: fwd+bwd "
            f"{errors['piece_total_median_ape']:.1f}% (p90 {errors['piece_total_p90_ape']:.1f}%)"
            if "piece_total_median_ape" in errors
            else ""
        )
    )
    result.profile.save(out)
    write_json(report_path, summary)
    out_console.print(f"wrote {escape(str(out))} and {escape(str(report_path))}")


def calibrate_comm(
    out: Annotated[
        Path, typer.Option("--out", help="Profile JSON to write (may be the --profile file).")
    ],
    profile: Annotated[
        str,
        typer.Option("--profile", help="Profile whose comm section is refitted (name or path)."),
    ] = "cpu-zen4",
    devices: Annotated[int, typer.Option("--devices", help="Processes (ranks) to time.")] = 2,
    batch_sizes: Annotated[
        str, typer.Option("--batch-sizes", help="Comma-separated global batch sizes.")
    ] = "1024,4096,16384",
    widths: Annotated[
        str, typer.Option("--widths", help="Comma-separated per-rank output widths.")
    ] = "0,16,64,256,1024",
    row_widths: Annotated[
        str,
        typer.Option(
            "--row-widths",
            help="Comma-separated widths of row-wise tables' outputs at which the "
            "reduce-scatter and all-gather are timed, to check the model on them "
            "('' for none).",
        ),
    ] = "16,128,1024",
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Where to write the fit report (default: beside --out)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu (gloo) or cuda (NCCL).")] = "cpu",
    seed: SeedOpt = DEFAULT_SEED,
    windows: WindowsOpt = 4,
    calls: CallsOpt = 5,
) -> None:
    """Fit the all-to-all model to real all-to-alls between processes; store it in a profile.

    Also times the reduce-scatter and all-gather of row-wise tables' outputs and prints
    the fitted model's error on them (it counts them as all-to-alls of the same volume).
    """
    from dreamshard.backends.commfit import (
        CommFitConfig,
        fit_comm,
        fit_report,
        grid_points,
        measure_grid,
        row_wise_points,
        update_profile,
    )
    from dreamshard.backends.distributed.backend import DistributedBackend, DistributedConfig
    from dreamshard.backends.sim.profile import load_profile

    # Checked first: nothing may be printed ("gloo processes") before a bad device fails.
    if device not in DEVICE_TYPES:
        raise InputError(f"--device {device!r}: use one of {', '.join(DEVICE_TYPES)}")
    check_out(out)  # may be the --profile file: the profile is read before it is replaced
    report_path = report if report is not None else out.with_suffix(".comm-report.json")
    check_out(report_path, out, Path(profile), flag="--report")
    load_profile(profile)  # a bad profile fails before minutes of measuring
    config = CommFitConfig(
        num_devices=devices,
        batch_sizes=tuple(parse_ints(batch_sizes, "--batch-sizes")),
        widths=tuple(parse_ints(widths, "--widths")),
        row_widths=tuple(parse_ints(row_widths, "--row-widths")),
        windows=windows,
        calls_per_window=calls,
        device=device,
        seed=seed,
    )
    out_console.print(
        f"timing {len(grid_points(config))} all-to-alls and "
        f"{len(row_wise_points(config))} row-wise collectives on {devices} "
        f"{'NCCL' if device == 'cuda' else 'gloo'} processes ({windows} windows x {calls} calls)"
    )
    with DistributedBackend(DistributedConfig(device=device, seed=seed)) as backend:
        samples = measure_grid(config, backend.measure_comm)
    result = fit_comm(config, samples)
    model, errors = result.model, result.holdout_errors()
    out_console.print(
        f"fitted: latency {model.latency_ms:.3f} ms, bandwidth {model.bandwidth_gbps:.3f} GB/s, "
        f"volume {model.volume!r}; held-out points ({len(result.holdout_samples)}): "
        f"median APE {errors['median_ape']:.1f}%, max {errors['max_ape']:.1f}%",
        highlight=False,
    )
    row_errors = result.row_wise_errors()
    if row_errors:
        table = Table(title="row-wise collectives vs the fitted model (as all-to-alls)")
        for column in ("collective", "points", "median APE", "max APE", "measured / predicted"):
            table.add_column(column, justify="left" if column == "collective" else "right")
        for e in row_errors:
            table.add_row(
                e.collective,
                str(e.points),
                f"{e.median_ape:.1f}%",
                f"{e.max_ape:.1f}%",
                f"{e.median_ratio:.2f}",
            )
        out_console.print(table)
        out_console.print(
            f"row-wise factors written to the profile: reduce-scatter "
            f"{model.reduce_scatter_factor:.2f}, all-gather {model.all_gather_factor:.2f} "
            "(times an all-to-all of the same volume)",
            highlight=False,
        )
    update_profile(profile, model, out)
    write_json(report_path, fit_report(config, result))
    out_console.print(f"wrote {escape(str(out))} and {escape(str(report_path))}")
