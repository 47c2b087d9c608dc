"""Real DLRM dataset files: loading, checking, per-table ids, features, and feeding backends."""

from __future__ import annotations

import gzip
import itertools
import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dreamshard.backends.comm import AllToAllModel
from dreamshard.backends.fbgemm import FbgemmBackend, FbgemmConfig
from dreamshard.data.dlrm import load_dlrm_file, parse_table_selection, resample_bags
from dreamshard.data.dlrm_tables import tables_from_dlrm
from dreamshard.data.features import access_histogram
from dreamshard.data.ids import table_ids
from dreamshard.data.synthetic import generate_ids
from dreamshard.data.tables import load_tables, save_tables
from dreamshard.errors import InputError
from dreamshard.types import DataSource, Placement

from .conftest import table, task
from .test_cli import assert_one_line_error, run

BATCH = 8
# Three tables x 8 samples. Table 0: ids up to 250; table 1: small ids (rows floor 100);
# table 2: one-hot-ish with empty bags.
LENGTHS = [
    [2, 3, 1, 4, 2, 2, 3, 3],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [0, 1, 0, 1, 1, 0, 2, 1],
]


def table_ids_expected() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = []
    for t, lengths in enumerate(LENGTHS):
        ids = rng.integers(0, [250, 10, 60][t], sum(lengths))
        if t == 0:
            ids[0] = 250  # max id 250 -> rows 251
        out.append(ids.astype(np.int64))
    return out


def write_file(
    path: Path,
    payload: Any = None,
    compress: bool = False,
) -> Path:
    """Write ``(indices, offsets, lengths)`` the way the public dataset does."""
    if payload is None:
        lengths = torch.tensor(LENGTHS, dtype=torch.int64)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.flatten().cumsum(0)])
        indices = torch.from_numpy(np.concatenate(table_ids_expected()))
        payload = (indices, offsets, lengths)
    if compress:
        raw = path.with_suffix("")
        torch.save(payload, raw)
        with raw.open("rb") as src, gzip.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
    else:
        torch.save(payload, path)
    return path


def good_payload() -> list[torch.Tensor]:
    lengths = torch.tensor(LENGTHS, dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.flatten().cumsum(0)])
    return [torch.from_numpy(np.concatenate(table_ids_expected())), offsets, lengths]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_file(tmp_path / "day_0.pt")


@pytest.mark.parametrize("compress", [False, True], ids=["pt", "pt.gz"])
def test_load_splits_per_table_ids(tmp_path: Path, compress: bool) -> None:
    path = write_file(tmp_path / ("d.pt.gz" if compress else "d.pt"), compress=compress)
    data = load_dlrm_file(path)
    assert (data.num_tables, data.batch_size) == (3, BATCH)
    for t, expected in enumerate(table_ids_expected()):
        indices, offsets = data.table_ids(t)
        np.testing.assert_array_equal(indices, expected)
        np.testing.assert_array_equal(offsets, np.concatenate(([0], np.cumsum(LENGTHS[t]))))
    with pytest.raises(InputError, match=r"no table 3 .*tables 0\.\.2"):
        data.table_ids(3)


def test_int32_tensors_are_accepted(tmp_path: Path) -> None:
    payload = [x.to(torch.int32) for x in good_payload()]
    data = load_dlrm_file(write_file(tmp_path / "i32.pt", tuple(payload)))
    assert data.indices.dtype == torch.int64
    np.testing.assert_array_equal(data.table_ids(1)[0], table_ids_expected()[1])


def test_loaded_files_are_cached_until_they_change(data_file: Path) -> None:
    assert load_dlrm_file(data_file) is load_dlrm_file(data_file)
    payload = good_payload()
    payload[0] = payload[0] + 1
    write_file(data_file, tuple(payload))
    reloaded = load_dlrm_file(data_file)
    np.testing.assert_array_equal(reloaded.table_ids(1)[0], table_ids_expected()[1] + 1)


def test_tables_get_the_authors_features_and_their_source(data_file: Path) -> None:
    specs = tables_from_dlrm(data_file, dim=8, batch_size=BATCH)
    assert [t.name for t in specs] == ["day_0_t0", "day_0_t1", "day_0_t2"]
    assert [t.rows for t in specs] == [251, 100, max(100, int(table_ids_expected()[2].max()) + 1)]
    for t, spec in enumerate(specs):
        assert spec.pooling_factor == pytest.approx(sum(LENGTHS[t]) / BATCH)
        assert spec.dim == 8
        assert spec.source == DataSource(str(data_file.resolve()), t)
        # Histogram batch = the file's batch: the whole table, unchanged.
        np.testing.assert_allclose(spec.access_hist, access_histogram(table_ids_expected()[t]))


def test_histogram_batch_is_the_one_the_backends_will_see(data_file: Path) -> None:
    (spec,) = tables_from_dlrm(data_file, tables=[0], batch_size=5, seed=3)
    indices, offsets = table_ids(spec, 5, seed=3)
    assert len(offsets) == 6
    np.testing.assert_allclose(spec.access_hist, access_histogram(indices))
    # Pooling stays the whole file's mean, not the sample's.
    assert spec.pooling_factor == pytest.approx(20 / 8)


def test_resample_is_deterministic_and_keeps_whole_bags() -> None:
    lengths = np.array([1, 2, 3, 4, 5])
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    indices = np.arange(15, dtype=np.int64)  # bag b holds ids offsets[b]..offsets[b+1]-1
    same = resample_bags(indices, offsets, 5, seed=0)
    assert same[0] is indices and same[1] is offsets
    small = resample_bags(indices, offsets, 3, seed=0)
    assert len(small[1]) == 4
    np.testing.assert_array_equal(small[0], resample_bags(indices, offsets, 3, seed=0)[0])
    chosen = [tuple(small[0][a:b]) for a, b in itertools.pairwise(small[1])]
    bags = [tuple(indices[a:b]) for a, b in itertools.pairwise(offsets)]
    assert len(set(chosen)) == 3 and set(chosen) <= set(bags)
    assert [bags.index(c) for c in chosen] == sorted(bags.index(c) for c in chosen)
    seeds = {tuple(resample_bags(indices, offsets, 3, seed=s)[0]) for s in range(10)}
    assert len(seeds) > 1
    big_ids, big_offsets = resample_bags(indices, offsets, 12, seed=0)
    big = [tuple(big_ids[a:b]) for a, b in itertools.pairwise(big_offsets)]
    assert len(big) == 12 and all(2 <= big.count(b) <= 3 for b in bags)


def test_ids_dispatch_real_or_synthetic(data_file: Path) -> None:
    specs = tables_from_dlrm(data_file, dim=8, batch_size=BATCH)
    indices, _ = table_ids(specs[0], BATCH, seed=0)
    np.testing.assert_array_equal(indices, table_ids_expected()[0])
    synthetic = replace(specs[0], source=None)
    generated = table_ids(synthetic, BATCH, seed=0)
    np.testing.assert_array_equal(generated[0], table_ids(synthetic, BATCH, seed=0)[0])
    assert not np.array_equal(generated[0], indices) or generated[0].size != indices.size
    # Fewer rows than the data uses (a row cap): ids folded into range.
    capped, _ = table_ids(replace(specs[0], rows=100), BATCH, seed=0)
    np.testing.assert_array_equal(capped, table_ids_expected()[0] % 100)
    assert generate_ids(synthetic, BATCH, 0)[1][-1] == round(synthetic.pooling_factor * BATCH)


def test_fbgemm_backend_measures_real_ids(data_file: Path) -> None:
    specs = tables_from_dlrm(data_file, dim=8, batch_size=BATCH)
    comm = AllToAllModel(latency_ms=0.1, bandwidth_gbps=1.0, source="test")
    config = FbgemmConfig(
        batch_size=16, windows=1, calls_per_window=1, warmup_calls=1, comm=comm, row_cap=200
    )
    backend = FbgemmBackend(config)
    (cost,) = backend.measure(task(specs, [10**9, 10**9]), [Placement((0, 1, 0))])
    assert all(c.fwd_comp_ms > 0 for c in cost.per_device)
    ids, offsets = backend._ids[specs[1].name]
    assert len(offsets) == 17 and set(ids) <= set(table_ids_expected()[1])


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_table_files_keep_the_source(tmp_path: Path, data_file: Path, suffix: str) -> None:
    specs = [*tables_from_dlrm(data_file, dim=8, batch_size=BATCH), table("synthetic")]
    path = tmp_path / f"tables{suffix}"
    save_tables(path, specs)
    assert load_tables(path) == specs


def test_relative_source_is_relative_to_the_table_file(tmp_path: Path, data_file: Path) -> None:
    (spec,) = tables_from_dlrm(data_file, tables=[1], dim=8, batch_size=BATCH)
    folder = tmp_path / "sub"
    folder.mkdir()
    path = folder / "t.json"
    save_tables(path, [spec])
    payload = json.loads(path.read_text())
    payload["tables"][0]["source_file"] = "../day_0.pt"
    path.write_text(json.dumps(payload))
    (loaded,) = load_tables(path)
    assert loaded == spec


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"source_file": "x.pt"}, "field 'source_table' is missing"),
        ({"source_table": 1}, "field 'source_file' is missing"),
        ({"source_file": "x.pt", "source_table": -1}, "'source_table' must be a table index"),
        ({"source_file": "x.pt", "source_table": 1.5}, "'source_table' must be a table index"),
        ({"source_file": 3, "source_table": 1}, "'source_file' must be a path string"),
    ],
)
def test_bad_source_fields(tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    path = tmp_path / "t.json"
    save_tables(path, [table("a")])
    payload = json.loads(path.read_text())
    payload["tables"][0].update(fields)
    path.write_text(json.dumps(payload))
    with pytest.raises(InputError, match=message):
        load_tables(path)


def _mutate(index: int, value: Any) -> tuple[Any, ...]:
    payload: list[Any] = good_payload()
    payload[index] = value
    return tuple(payload)


BAD_FILES: list[tuple[str, Any, str]] = [
    ("dict", {"indices": torch.zeros(1)}, r"expected \(indices, offsets, lengths\).*got a dict"),
    ("two", tuple(good_payload()[:2]), "got a tuple of 2 items"),
    ("list-item", _mutate(0, [1, 2]), "indices must be a tensor, got list"),
    ("float", _mutate(0, good_payload()[0].float()), "indices must hold integers.*float32"),
    ("lengths-1d", _mutate(2, torch.tensor([1, 2])), r"lengths must have shape \[tables, batch\]"),
    ("indices-2d", _mutate(0, torch.zeros(2, 2, dtype=torch.int64)), "indices must be 1-D"),
    (
        "offsets-count",
        _mutate(1, good_payload()[1][:-1]),
        r"offsets must be 1-D with tables x batch \+ 1 = 25 entries \(lengths is \[3, 8\]\)",
    ),
    (
        "tables-batch",
        _mutate(2, torch.tensor([*LENGTHS, [1] * BATCH])),
        r"offsets must be 1-D with tables x batch \+ 1 = 33 entries \(lengths is \[4, 8\]\)",
    ),
    ("offsets-start", _mutate(1, good_payload()[1] + 1), "offsets must start at 0, got 1"),
    (
        "offsets-lengths",
        _mutate(2, torch.tensor([LENGTHS[0], LENGTHS[1], [0, 1, 0, 1, 1, 0, 1, 2]])),
        "offsets do not match lengths .*table 2, sample 6",
    ),
    (
        "negative-length",
        _mutate(2, torch.tensor([LENGTHS[0], [1, 1, -1, 1, 1, 1, 1, 1], LENGTHS[2]])),
        "negative length at table 1, sample 2",
    ),
    (
        "indices-count",
        _mutate(0, torch.cat([good_payload()[0], torch.zeros(2, dtype=torch.int64)])),
        "offsets end at 34 but there are 36 indices",
    ),
]


@pytest.mark.parametrize(("name", "payload", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_one_line_input_errors(
    tmp_path: Path, name: str, payload: Any, message: str
) -> None:
    path = write_file(tmp_path / f"{name}.pt", payload)
    with pytest.raises(InputError, match=message) as err:
        load_dlrm_file(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_negative_ids_name_their_table(tmp_path: Path) -> None:
    payload = good_payload()
    payload[0][20 + 3] = -4  # table 0 holds 20 ids: position 23 is table 1's
    with pytest.raises(InputError, match="negative id -4 in table 1"):
        load_dlrm_file(write_file(tmp_path / "neg.pt", tuple(payload)))


def test_unreadable_and_unsafe_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not a tensor file\n")
    with pytest.raises(InputError, match=r"notes\.pt: not a readable torch file"):
        load_dlrm_file(text)
    broken = tmp_path / "broken.pt.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(InputError, match=r"broken\.pt\.gz: not a readable torch file"):
        load_dlrm_file(broken)
    unsafe = tmp_path / "unsafe.pt"
    torch.save((Path("x"), 1, 2), unsafe)  # arbitrary objects are refused, not unpickled
    with pytest.raises(InputError, match=r"unsafe\.pt: not a readable torch file"):
        load_dlrm_file(unsafe)
    with pytest.raises(InputError, match=r"missing\.pt: file not found"):
        load_dlrm_file(tmp_path / "missing.pt")


def test_file_name_shape_must_match(tmp_path: Path) -> None:
    path = write_file(tmp_path / "fbgemm_t856_bs65536_0.pt")
    with pytest.raises(InputError, match=r"says 856 tables x batch 65536 but lengths is \[3, 8\]"):
        load_dlrm_file(path)
    load_dlrm_file(write_file(tmp_path / "fbgemm_t3_bs8_0.pt"))


def test_table_without_ids_is_a_clear_error(tmp_path: Path) -> None:
    payload = good_payload()
    lengths = torch.tensor([LENGTHS[0], LENGTHS[1], [0] * 8])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.flatten().cumsum(0)])
    path = write_file(tmp_path / "empty.pt", (payload[0][:28], offsets, lengths))
    with pytest.raises(InputError, match="table 2 has no ids in its 8 samples"):
        tables_from_dlrm(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0-2", [0, 1, 2]), ("2,0", [0, 2]), ("1-2,0-1", [0, 1, 2]), ("1", [1])],
)
def test_table_selection(text: str, expected: Sequence[int]) -> None:
    assert parse_table_selection(text, 3) == list(expected)


@pytest.mark.parametrize(
    ("text", "message"), [("0-3", "table 3 does not exist"), ("a", "expected N"), ("2-1", "bad")]
)
def test_bad_table_selection(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_table_selection(text, 3)


def test_cli_tables_from_data(tmp_path: Path, data_file: Path) -> None:
    out = tmp_path / "real.json"
    result = run("tables-from-data", data_file, "--out", out, "--dim", "8", "--tables", "0,2")
    assert result.exit_code == 0, result.output
    assert "wrote 2 of 3 tables" in result.stdout
    tables = load_tables(out)
    assert [t.source.table for t in tables if t.source] == [0, 2]


def test_cli_bad_data_file_is_one_line(tmp_path: Path) -> None:
    bad = write_file(tmp_path / "bad.pt", tuple(good_payload()[:2]))
    result = run("tables-from-data", bad, "--out", tmp_path / "x.json")
    assert_one_line_error(result, "bad.pt", "got a tuple of 2 items")
    assert not (tmp_path / "x.json").exists()
    result = run(
        "tables-from-data",
        write_file(tmp_path / "d.pt"),
        "--out",
        tmp_path / "x.json",
        "--tables",
        "5",
    )
    assert_one_line_error(result, "--tables", "table 5 does not exist")


def test_suites_keep_the_source(tmp_path: Path, data_file: Path) -> None:
    from dreamshard.data.tasks import SuiteConfig, generate_suite, load_suite, save_suite

    pool = [*tables_from_dlrm(data_file, dim=8, batch_size=BATCH), table("a"), table("b")]
    config = SuiteConfig(
        num_train=1,
        num_test=1,
        min_tables=2,
        max_tables=2,
        num_devices=2,
        memory_bytes=10**9,
        seed=0,
    )
    suite = generate_suite(pool, config)
    save_suite(tmp_path / "suite.json", suite)
    loaded = load_suite(tmp_path / "suite.json")
    assert loaded == suite
    assert {t.source for task in loaded.train + loaded.test for t in task.tables} - {None}


def test_a_plain_pickle_is_refused_in_one_line_without_torch_warnings(tmp_path: Path) -> None:
    import pickle
    import subprocess
    import sys

    path = tmp_path / "fbgemm_t2_bs4_0.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    result = subprocess.run(
        [sys.executable, "-m", "dreamshard", "tables-from-data", str(path), "--out",
         str(tmp_path / "x.json")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0] == f"error: {path}: not a readable torch file (Weights only load failed)"
