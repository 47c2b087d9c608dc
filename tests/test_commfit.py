"""Fitting the all-to-all model: exact recovery, the volume form, the row-wise collectives
checked but not fitted, profiles old and new."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from dreamshard.backends.comm import NVLINK_GPU, AllToAllModel
from dreamshard.backends.commfit import (
    CommFit,
    CommFitConfig,
    CommSample,
    fit_best_model,
    fit_comm,
    fit_model,
    fit_report,
    grid_points,
    row_wise_points,
    slowest_volume_bytes,
    update_profile,
)
from dreamshard.backends.distributed.protocol import CommPoint
from dreamshard.backends.fbgemm import default_comm
from dreamshard.backends.sim.profile import SimProfile, load_profile
from dreamshard.errors import InputError

from .test_cli import assert_one_line_error, run

CONFIG = CommFitConfig(batch_sizes=(1024, 4096), widths=(0, 16, 256), max_points_per_batch=8)


def exact_samples(model: AllToAllModel) -> list[CommSample]:
    return [CommSample(p, model.time_ms(p.widths, p.batch_size)) for p in grid_points(CONFIG)]


def test_grid_leaves_out_silent_exchanges_and_samples_per_batch() -> None:
    points = grid_points(CONFIG)
    # 3 widths on 2 ranks: 9 combinations, 8 with a sender; all 8 kept per batch size.
    assert len(points) == 16
    assert all(any(w > 0 for w in p.widths) for p in points)
    sampled = grid_points(CommFitConfig(num_devices=3, widths=(0, 16, 256), batch_sizes=(64,)))
    assert len(sampled) == 25 and len(set(sampled)) == 25


def test_volume_by_hand() -> None:
    # B=8, widths 16 and 48: dev0 sends 64 values, receives 192; dev1 the reverse.
    point = CommPoint(8, (16, 48))
    assert slowest_volume_bytes(point, "max") == 192 * 4
    assert slowest_volume_bytes(point, "sum") == 256 * 4


@pytest.mark.parametrize("volume", ["max", "sum"])
def test_fit_recovers_exact_parameters(volume: str) -> None:
    truth = AllToAllModel(0.3, 1.5, "truth", volume)
    fitted = fit_model(exact_samples(truth), "fit", volume)
    assert fitted.latency_ms == pytest.approx(0.3, rel=1e-6)
    assert fitted.bandwidth_gbps == pytest.approx(1.5, rel=1e-6)
    assert fit_best_model(exact_samples(truth), "fit").volume == volume


def test_fit_comm_reports_held_out_error_and_source() -> None:
    truth = AllToAllModel(0.2, 2.0, "truth", "sum")
    result = fit_comm(CONFIG, exact_samples(truth))
    assert isinstance(result, CommFit)
    assert len(result.holdout_samples) == 4 and len(result.fit_samples) == 12
    assert result.holdout_errors()["max_ape"] < 1e-6
    assert "held-out 4 points" in result.model.source and result.model.volume == "sum"


def test_row_wise_points_at_every_batch_and_width() -> None:
    config = CommFitConfig(num_devices=3, batch_sizes=(1024, 4096), row_widths=(16, 128))
    points = row_wise_points(config)
    assert len(points) == 2 * 2 * 2
    assert {p.collective for p in points} == {"reduce_scatter", "all_gather"}
    assert CommPoint(4096, (128, 128, 128), "all_gather") in points
    assert row_wise_points(CommFitConfig(row_widths=())) == []


def test_row_wise_points_are_checked_not_fitted() -> None:
    """Reduce-scatters twice as slow as the all-to-all of their volume, all-gathers as
    fast: the fit is still exact, and the errors say so per collective."""
    truth = AllToAllModel(0.2, 2.0, "truth", "sum")
    config = replace(CONFIG, row_widths=(16, 256))
    row_wise = [
        CommSample(
            p,
            truth.time_ms(p.widths, p.batch_size)
            * (2.0 if p.collective == "reduce_scatter" else 1.0),
        )
        for p in row_wise_points(config)
    ]
    result = fit_comm(config, exact_samples(truth) + row_wise)
    assert result.model.latency_ms == pytest.approx(0.2, rel=1e-6)
    assert len(result.fit_samples) + len(result.holdout_samples) == 16
    scatter, gather = result.row_wise_errors()
    assert (scatter.collective, scatter.points) == ("reduce_scatter", 4)
    assert scatter.median_ratio == pytest.approx(2.0) and scatter.median_ape == pytest.approx(50.0)
    assert gather.collective == "all_gather" and gather.max_ape < 1e-6
    assert "reduce_scatter as an all-to-all of its volume: median APE 50.0%" in result.model.source
    report = fit_report(config, result)
    assert [e["collective"] for e in report["row_wise_errors"]] == ["reduce_scatter", "all_gather"]
    assert sum(row["split"] == "row-wise" for row in report["points"]) == 8


def test_fit_needs_growing_times() -> None:
    flat = [CommSample(p, 1.0) for p in grid_points(CONFIG)]
    with pytest.raises(InputError, match="do not grow"):
        fit_model(flat, "fit")


def test_update_profile_replaces_only_comm(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    model = AllToAllModel(0.1, 3.0, "fitted here", "sum")
    update_profile("cpu-zen4", model, out)
    updated = load_profile(out)
    assert updated.comm == model
    assert updated.kernel == load_profile("cpu-zen4").kernel


def test_profiles_without_a_volume_still_load(tmp_path: Path) -> None:
    data = load_profile("h100-public").to_dict()
    del data["comm"]["volume"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    assert load_profile(path).comm.volume == "max"
    data["comm"]["volume"] = "both"
    with pytest.raises(InputError, match=r"comm\.volume"):
        SimProfile.from_dict(data, "bad")


def test_fbgemm_takes_its_comm_model_from_the_profile() -> None:
    assert default_comm("cpu") == load_profile("cpu-zen4").comm
    assert default_comm("cpu", "h100-public") == load_profile("h100-public").comm
    assert default_comm("cuda") == NVLINK_GPU


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--devices", "1"], ["at least 2 devices"]),
        (["--widths", "16,wide"], ["--widths", "comma-separated integers"]),
        (["--profile", "nope"], ["unknown simulator profile 'nope'"]),
        (["--row-widths", "16,0"], ["row-wise widths must be positive"]),
    ],
)
def test_calibrate_comm_bad_input(tmp_path: Path, args: list[str], parts: list[str]) -> None:
    out = tmp_path / "p.json"
    assert_one_line_error(run("calibrate-comm", "--out", out, *args), *parts)
    assert not out.exists()
