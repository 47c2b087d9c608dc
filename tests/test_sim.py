"""Tests of the simulated cost backend (backends/sim/)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dreamshard.backends.base import ShardSample
from dreamshard.backends.sim.fit import fit_profile, prediction_errors
from dreamshard.backends.sim.model import SimBackend, shard_timing
from dreamshard.backends.sim.profile import (
    KernelParams,
    SimProfile,
    available_profiles,
    load_profile,
)
from dreamshard.constants import NUM_ACCESS_BINS
from dreamshard.errors import InputError, InvalidPlacementError
from dreamshard.types import CostBackend, Device, Placement, TableSpec, Task

GIB = 1024**3


def hist_at(bin_index: int) -> tuple[float, ...]:
    """All distinct rows in one access-count bin (bin 0: each row touched once)."""
    return tuple(1.0 if k == bin_index else 0.0 for k in range(NUM_ACCESS_BINS))


UNIFORM = hist_at(0)
HOT = hist_at(9)  # every distinct row touched 257-512 times per batch


def table(
    name: str, rows: int, dim: int, pooling: float = 10.0, hist: tuple[float, ...] = UNIFORM
) -> TableSpec:
    return TableSpec(name=name, rows=rows, dim=dim, pooling_factor=pooling, access_hist=hist)


@pytest.fixture(scope="module")
def profile() -> SimProfile:
    return load_profile("cpu-zen4")


@pytest.fixture(scope="module")
def task() -> Task:
    tables = (
        table("big_uniform", 1_000_000, 64, 20.0),
        table("big_hot", 1_000_000, 64, 20.0, HOT),
        table("wide_small", 10_000, 128, 5.0),
        table("narrow", 1_000, 8, 2.0),
        table("mid", 100_000, 32, 10.0, hist_at(2)),
    )
    devices = (Device("d0", 4 * GIB), Device("d1", 4 * GIB), Device("d2", 4 * GIB))
    return Task(name="tiny", tables=tables, devices=devices)


def test_forward_fusion_is_subadditive_while_the_footprint_fits(profile: SimProfile) -> None:
    # Footprints of 64 KiB each: fused, they still fit in the cache.
    a, b = table("a", 500, 32), table("b", 1_000, 16)
    fused = shard_timing(profile, [a, b]).fwd_comp_ms
    apart = shard_timing(profile, [a]).fwd_comp_ms + shard_timing(profile, [b]).fwd_comp_ms
    assert fused < apart
    # The fixed per-operator cost is paid once, so the saving is about it.
    assert apart - fused >= 0.9 * profile.kernel.fwd_op_fixed_ms


def test_fusion_is_superadditive_once_the_footprint_outgrows_the_cache(
    profile: SimProfile,
) -> None:
    # Eight tables whose batches touch 4,000 rows of 128 bytes each (512 KB): each fits in
    # the cache alone, together (4 MB) they do not, so their rows miss when fused.
    parts = [table(f"t{i}", 4_000, 32, 5.0) for i in range(8)]
    per_table = 4_000 * 128
    assert per_table < profile.kernel.cache_bytes < 8 * per_table
    fused = shard_timing(profile, parts).bwd_comp_ms
    apart = sum(shard_timing(profile, [t]).bwd_comp_ms for t in parts)
    assert fused > 1.2 * apart


def test_dim_is_sublinear_and_its_exponent_grows_with_rows(profile: SimProfile) -> None:
    ratios = []
    for rows in (1_000, 1_000_000):
        narrow = shard_timing(profile, [table("n", rows, 4)])
        wide = shard_timing(profile, [table("w", rows, 128)])
        for n, w in (
            (narrow.fwd_comp_ms, wide.fwd_comp_ms),
            (narrow.bwd_comp_ms, wide.bwd_comp_ms),
        ):
            assert n < w < 32 * n
        ratios.append(wide.fwd_comp_ms / narrow.fwd_comp_ms)
    # MEASUREMENT.md: 2.7x at 1e3 rows, 7.4x at 1e6 rows.
    assert ratios[1] > 2 * ratios[0]


def test_hot_rows_are_cheaper_than_uniform_access(profile: SimProfile) -> None:
    uniform = shard_timing(profile, [table("u", 1_000_000, 64, 20.0, UNIFORM)])
    hot = shard_timing(profile, [table("h", 1_000_000, 64, 20.0, HOT)])
    assert hot.fwd_comp_ms < uniform.fwd_comp_ms / 1.3
    assert hot.bwd_comp_ms < uniform.bwd_comp_ms / 1.3


def test_cost_rises_with_table_size_beyond_cache(profile: SimProfile) -> None:
    fwd = [
        shard_timing(profile, [table("t", rows, 64)]).fwd_comp_ms
        for rows in (1_000, 100_000, 10_000_000)
    ]
    assert fwd[0] < fwd[1] < fwd[2]


def test_misses_follow_the_touched_rows_not_the_table_size(profile: SimProfile) -> None:
    """A lookup costs more once the rows a batch touches outgrow the cache (MEASUREMENT
    data: a 1e6-row table whose batch touches 12k rows runs at in-cache speed)."""

    def marginal_ns(pooling: float, stage: str) -> float:
        # Cost of the lookups added by doubling the pooling factor of a 1e7-row table
        # with uniform access (every lookup touches a new row), per added lookup.
        low = shard_timing(profile, [table("t", 10_000_000, 16, pooling)])
        high = shard_timing(profile, [table("t", 10_000_000, 16, 2 * pooling)])
        added = getattr(high, stage) - getattr(low, stage)
        return added * 1e6 / (4096 * pooling)

    for stage in ("fwd_comp_ms", "bwd_comp_ms"):
        # 1 -> 2 lookups per sample: 0.25 -> 0.5 MB touched (in cache); 50 -> 100:
        # 13 -> 26 MB (beyond it).
        assert marginal_ns(50.0, stage) > 1.3 * marginal_ns(1.0, stage)


def test_backward_sort_cost_grows_with_the_id_range(profile: SimProfile) -> None:
    # Same lookups and distinct rows (221), ids below 255 (one 8-bit radix pass) or below
    # 100,000 (three passes).
    small = shard_timing(profile, [table("s", 255, 16, 20.0, HOT)])
    large = shard_timing(profile, [table("l", 100_000, 16, 20.0, HOT)])
    extra_ns = (large.bwd_comp_ms - small.bwd_comp_ms) * 1e6 / (4096 * 20.0)
    assert extra_ns == pytest.approx(2 * profile.kernel.bwd_sort_pass_ns, rel=1e-6)


def test_monotone_in_pooling_factor(profile: SimProfile) -> None:
    timings = [
        shard_timing(profile, [table("t", 100_000, 32, pooling)]) for pooling in (1, 2, 5, 20, 50)
    ]
    fwd = [t.fwd_comp_ms for t in timings]
    bwd = [t.bwd_comp_ms for t in timings]
    assert fwd == sorted(fwd) and len(set(fwd)) == len(fwd)
    assert bwd == sorted(bwd) and len(set(bwd)) == len(bwd)
    # MEASUREMENT.md: backward with the fused update costs 2-3x the forward (2.2-3.0 for
    # the middle half of the 200 calibration shards, up to 4.1).
    assert 2.0 <= bwd[-1] / fwd[-1] <= 3.5


def test_empty_shard_costs_nothing(profile: SimProfile, task: Task) -> None:
    timing = shard_timing(profile, [])
    assert (timing.fwd_comp_ms, timing.bwd_comp_ms) == (0.0, 0.0)
    # A device without tables runs no operator; it only waits for the others.
    (result,) = SimBackend(profile).measure(task, [Placement((0, 0, 2, 2, 0))])
    idle = result.per_device[1]
    assert (idle.fwd_comp_ms, idle.bwd_comp_ms) == (0.0, 0.0)
    slowest_fwd = max(c.fwd_comp_ms for c in result.per_device)
    assert idle.fwd_comm_ms == pytest.approx(slowest_fwd + idle.bwd_comm_ms, rel=1e-12)


def test_measure_gives_synchronised_stage_costs(profile: SimProfile, task: Task) -> None:
    backend = SimBackend(profile)
    assert isinstance(backend, CostBackend)
    placement = Placement((0, 1, 1, 2, 0))
    (result,) = backend.measure(task, [placement])
    assert result.backend == "sim" and result.rel_spread is None
    assert len(result.per_device) == task.num_devices

    shards = placement.shards(task.num_devices)
    timings = [shard_timing(profile, [task.tables[i] for i in s]) for s in shards]
    widths = [sum(task.tables[i].dim for i in s) for s in shards]
    a2a = profile.comm.time_ms(widths, backend.batch_size)
    for costs, timing in zip(result.per_device, timings, strict=True):
        assert costs.fwd_comp_ms == pytest.approx(timing.fwd_comp_ms, rel=1e-12)
        assert costs.bwd_comp_ms == pytest.approx(timing.bwd_comp_ms, rel=1e-12)
        assert costs.bwd_comm_ms == pytest.approx(a2a, rel=1e-12)
    expected = max(t.fwd_comp_ms for t in timings) + 2 * a2a + max(t.bwd_comp_ms for t in timings)
    assert a2a > 0
    assert result.cost_ms == pytest.approx(expected, rel=1e-12)
    assert backend.cost_ms(task, placement) == pytest.approx(expected, rel=1e-12)


def test_fast_paths_equal_measure(profile: SimProfile, task: Task) -> None:
    backend = SimBackend(profile)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, task.num_devices, size=(20, task.num_tables))
    measured = backend.measure(task, [Placement(tuple(int(d) for d in r)) for r in rows])
    batch = backend.costs_ms(task, rows)
    for r, m, c in zip(rows, measured, batch, strict=True):
        assert backend.cost_ms(task, r) == pytest.approx(m.cost_ms, rel=1e-12)
        assert c == pytest.approx(m.cost_ms, rel=1e-12)


def test_invalid_placements_are_rejected(profile: SimProfile, task: Task) -> None:
    backend = SimBackend(profile)
    with pytest.raises(InvalidPlacementError, match=r"devices 0\.\.2"):
        backend.cost_ms(task, (0, 1, 2, 3, 0))
    small = replace(task, devices=(Device("d0", 10 * 1024**2), Device("d1", 4 * GIB)))
    with pytest.raises(InvalidPlacementError, match=r"device 0 \(d0\)"):
        backend.cost_ms(small, (0, 1, 1, 1, 1))


@pytest.mark.parametrize(
    ("tables", "proxy_placement"),
    [
        # Greedy by dim (METHOD.md section 6): wide128 -> 0, then mid64, heavy_a and
        # heavy_b all -> 1 (running dims 64 and 96 < 128): both uncached tables together.
        (
            (
                table("wide128", 1_000, 128, 1.0),
                table("mid64", 1_000, 64, 2.0),
                table("heavy_a", 2_000_000, 32, 30.0),
                table("heavy_b", 2_000_000, 32, 30.0),
            ),
            (0, 1, 1, 1),
        ),
        # Greedy by size: the 512 MB hot table -> 0, then both 128 MB uniform tables and
        # the small one -> 1, although hot rows make the big table cheap.
        (
            (
                table("big_hot", 4_000_000, 32, 30.0, HOT),
                table("uniform_a", 1_000_000, 32, 30.0),
                table("uniform_b", 1_000_000, 32, 30.0),
                table("small", 1_000, 32, 2.0),
            ),
            (0, 1, 1, 1),
        ),
    ],
    ids=["dim", "size"],
)
def test_naive_proxies_are_not_optimal(
    tables: tuple[TableSpec, ...], proxy_placement: tuple[int, ...]
) -> None:
    task = Task("proxy", tables, (Device("a", 4 * GIB), Device("b", 4 * GIB)))
    backend = SimBackend()
    proxy_cost = backend.cost_ms(task, proxy_placement)
    best = min(
        backend.cost_ms(task, p) for p in itertools.product(range(2), repeat=task.num_tables)
    )
    assert best < 0.8 * proxy_cost


def random_samples(seed: int, count: int) -> list[tuple[TableSpec, ...]]:
    rng = np.random.default_rng(seed)
    shards = []
    for s in range(count):
        tables = []
        for i in range(int(rng.integers(1, 9))):
            hist = rng.dirichlet(np.full(NUM_ACCESS_BINS, 0.3))
            tables.append(
                TableSpec(
                    name=f"s{s}t{i}",
                    rows=int(10 ** rng.uniform(3, 7)),
                    dim=int(rng.choice([4, 8, 16, 32, 64, 128, 256])),
                    pooling_factor=float(rng.uniform(1, 50)),
                    access_hist=tuple(float(h) for h in hist),
                )
            )
        shards.append(tuple(tables))
    return shards


def test_fit_recovers_a_known_profile(profile: SimProfile) -> None:
    rng = np.random.default_rng(1)
    true_kernel = KernelParams.from_vector(
        profile.kernel.to_vector() * np.exp(rng.uniform(-0.7, 0.7, len(KernelParams.names())))
    )
    truth = replace(profile, kernel=true_kernel)
    samples = [
        ShardSample(tables=tables, batch_size=4096, timing=shard_timing(truth, tables))
        for tables in random_samples(seed=2, count=60)
    ]
    before = prediction_errors(profile, samples)
    fitted = fit_profile(
        samples, "fit", "test fit", "synthetic", profile.comm, init=profile, measured=False
    )
    after = prediction_errors(fitted, samples)
    assert fitted.measured is False and fitted.name == "fit"
    assert np.median(before["total"]) > 5.0  # the perturbation is visible...
    for key in ("fwd", "bwd", "total"):
        assert max(after[key]) < 1.0  # ...and the fit removes it on every sample


def test_prediction_errors_are_percentages(profile: SimProfile) -> None:
    tables = (table("t", 10_000, 16),)
    timing = shard_timing(profile, tables)
    doubled = replace(timing, fwd_comp_ms=2 * timing.fwd_comp_ms)
    errors = prediction_errors(profile, [ShardSample(tables, 4096, doubled)])
    assert errors["fwd"] == [pytest.approx(50.0)]
    assert errors["bwd"] == [pytest.approx(0.0, abs=1e-9)]


def test_packaged_profiles_load_and_round_trip() -> None:
    assert {"cpu-zen4", "h100-public"} <= set(available_profiles())
    for name in available_profiles():
        loaded = load_profile(name)
        assert loaded.name == name
        assert SimProfile.from_json(loaded.to_json()) == loaded
    gpu = load_profile("h100-public")
    assert gpu.measured is False and "not measured" in gpu.description


def test_load_profile_reports_unknown_names() -> None:
    with pytest.raises(InputError, match=r"available: .*cpu-zen4.*h100-public"):
        load_profile("no-such-profile")


def test_load_profile_from_path_checks_fields(tmp_path: Path, profile: SimProfile) -> None:
    path = tmp_path / "p.json"
    profile.save(path)
    assert load_profile(path) == profile
    data = profile.to_dict()
    data["kernel"]["fwd_lookup_ns"] = -1.0
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="fwd_lookup_ns"):
        load_profile(path)
    del data["kernel"]["fwd_lookup_ns"]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"missing field.*fwd_lookup_ns"):
        load_profile(path)


def test_profiles_of_the_old_format_are_refused(tmp_path: Path, profile: SimProfile) -> None:
    data = profile.to_dict()
    data["format_version"] = 1
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"format_version 1 .*refit"):
        load_profile(path)


@pytest.mark.parametrize(
    ("key", "value", "part"),
    [
        ("bandwidth_gbps", 0, "comm.bandwidth_gbps must be a finite number > 0, got 0"),
        ("bandwidth_gbps", -1.5, "comm.bandwidth_gbps must be a finite number > 0, got -1.5"),
        (
            "bandwidth_gbps",
            float("nan"),
            "comm.bandwidth_gbps must be a finite number > 0, got nan",
        ),
        ("latency_ms", float("inf"), "comm.latency_ms must be a finite number >= 0, got inf"),
        ("latency_ms", "1", "comm.latency_ms must be a finite number >= 0, got '1'"),
    ],
)
def test_profile_comm_must_be_usable(
    tmp_path: Path, profile: SimProfile, key: str, value: object, part: str
) -> None:
    data = profile.to_dict()
    data["comm"][key] = value
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as caught:
        load_profile(path)
    assert str(caught.value) == f"{path}: {part}"


@pytest.mark.parametrize(
    ("content", "part"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a UTF-8 text file"),
        (b"[" * 100_000, "invalid JSON (nested too deeply)"),
        (b"", "line 1: invalid JSON"),
    ],
)
def test_profile_file_that_is_not_json_is_one_line(
    tmp_path: Path, content: bytes, part: str
) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and part in message and "\n" not in message


def test_profile_save_is_atomic_and_names_an_unwritable_path(
    tmp_path: Path, profile: SimProfile
) -> None:
    (tmp_path / "file").write_text("keep")
    with pytest.raises(InputError, match="is not a folder"):
        profile.save(tmp_path / "file" / "p.json")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
