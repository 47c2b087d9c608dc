"""Fused operators: the torch-fused kernel against FBGEMM's on CPU, and kernel selection."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamshard.backends import BackendOptions, make_backend
from dreamshard.backends.fbgemm import FbgemmBackend, FbgemmConfig
from dreamshard.backends.kernels import (
    SGD_LEARNING_RATE,
    build_fused,
    cap_rows,
    quiet_timing,
    select_kernel,
    time_fused_call,
)
from dreamshard.errors import BackendError
from dreamshard.types import TableSpec

from .conftest import table

BATCH = 6


def mixed_tables() -> list[TableSpec]:
    # Two dim groups, the dim-8 group not contiguous in table order.
    return [table("a", rows=50, dim=8), table("b", rows=30, dim=16), table("c", rows=40, dim=8)]


def random_ids(tables: list[TableSpec], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in tables:
        lengths = rng.integers(0, 6, BATCH)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        # Few rows in play so that rows repeat within and across bags.
        out.append((rng.integers(0, 7, offsets[-1]).astype(np.int64), offsets))
    return out


@pytest.mark.parametrize(
    "tables",
    [mixed_tables(), [table("x", rows=20, dim=4), table("y", rows=90, dim=4)]],
    ids=["two-groups", "one-group"],
)
def test_torch_fused_matches_fbgemm_forward_and_sgd_update(tables: list[TableSpec]) -> None:
    ids = random_ids(tables)
    fbgemm = build_fused(tables, ids, BATCH, kernel="fbgemm")
    fused = build_fused(tables, ids, BATCH, kernel="torch-fused")
    assert (fbgemm.kernel, fused.kernel) == ("fbgemm", "torch-fused")
    for mine, theirs in zip(
        fused.op.split_embedding_weights(), fbgemm.op.split_embedding_weights(), strict=True
    ):
        mine.copy_(theirs)
    before = [w.detach().clone() for w in fused.op.split_embedding_weights()]

    out_fbgemm = fbgemm.op(fbgemm.indices, fbgemm.offsets)
    out_fused = fused.op(fused.indices, fused.offsets)
    assert out_fused.shape == (BATCH, sum(t.dim for t in tables))
    torch.testing.assert_close(out_fused, out_fbgemm.detach())

    grad = torch.randn(out_fbgemm.shape, generator=torch.Generator().manual_seed(1))
    out_fbgemm.backward(grad)
    out_fused.backward(grad)
    col = 0
    for t, (indices, offsets), w0, mine, theirs in zip(
        tables,
        ids,
        before,
        fused.op.split_embedding_weights(),
        fbgemm.op.split_embedding_weights(),
        strict=True,
    ):
        torch.testing.assert_close(mine, theirs.detach())
        # SGD by hand: w[r] -= lr * sum of the gradients of the bags that looked up r.
        expected = w0.clone()
        for bag in range(BATCH):
            for r in indices[offsets[bag] : offsets[bag + 1]]:
                expected[r] -= SGD_LEARNING_RATE * grad[bag, col : col + t.dim]
        torch.testing.assert_close(mine, expected)
        untouched = np.setdiff1d(np.arange(t.rows), indices)
        assert torch.equal(mine[untouched], w0[untouched])
        col += t.dim


def test_torch_fused_times_like_fbgemm_on_cpu() -> None:
    tables = mixed_tables()
    shard = build_fused(tables, random_ids(tables), BATCH, kernel="torch-fused")
    fwd_ms, bwd_ms = time_fused_call(shard)
    assert fwd_ms > 0 and bwd_ms > 0
    assert shard.weight_bytes == sum(t.size_bytes for t in tables)


def test_backend_records_the_kernel_in_its_name() -> None:
    options = BackendOptions(batch_size=32, windows=1, calls_per_window=1, kernel="torch-fused")
    backend = make_backend("fbgemm", options)
    assert isinstance(backend, FbgemmBackend)
    assert backend.name == "fbgemm[torch-fused]"
    (timing,) = backend.measure_shards([mixed_tables()])
    assert timing.fwd_comp_ms > 0 and timing.bwd_comp_ms > 0
    assert make_backend("fbgemm", BackendOptions(batch_size=32)).name == "fbgemm"


def test_kernel_selection() -> None:
    assert select_kernel("cpu") == "fbgemm"
    assert select_kernel("cpu", "torch-fused") == "torch-fused"
    with pytest.raises(BackendError, match="unknown kernel 'triton'"):
        select_kernel("cpu", "triton")
    with pytest.raises(BackendError, match="unknown device 'tpu'"):
        select_kernel("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="torch sees no CUDA device"):
        FbgemmBackend(FbgemmConfig(device="cuda"))


def test_cap_rows_caps_only_tables_with_more_rows() -> None:
    small, big = table("s", rows=100), table("b", rows=5000)
    assert cap_rows(small, 500) is small
    assert cap_rows(big, None) is big
    assert cap_rows(big, 5000) is big
    capped = cap_rows(big, 500)
    assert capped.rows == 500 and replace(capped, rows=5000) == big


def test_quiet_timing_runs_one_thread_without_gc_and_restores_both() -> None:
    threads, gc_enabled = torch.get_num_threads(), gc.isenabled()
    with quiet_timing():
        assert torch.get_num_threads() == 1
        assert not gc.isenabled()
    assert torch.get_num_threads() == threads
    assert gc.isenabled() == gc_enabled


def test_kernels_module_imports_without_fbgemm_scipy_or_cli_libraries() -> None:
    # The GPU machines have PyTorch and numpy only: block the rest and build a shard.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('fbgemm_gpu', 'scipy', 'typer', 'rich', 'torchrec'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from dreamshard.backends.kernels import build_fused, time_fused_call\n"
        "from dreamshard.data.features import table_from_ids\n"
        "t = table_from_ids('t', np.array([1, 2, 2]), np.array([0, 1, 3]), dim=8)\n"
        "shard = build_fused([t], [(np.array([1, 2, 2]), np.array([0, 1, 3]))], 2,"
        " kernel='torch-fused')\n"
        "time_fused_call(shard)\n"
        "print(shard.kernel)\n"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch-fused"


def test_cli_device_and_kernel_options(tmp_path: Path) -> None:
    from dreamshard.data.tables import save_tables

    from .test_cli import FAST, assert_one_line_error, run

    tables = tmp_path / "t.json"
    save_tables(tables, mixed_tables())
    args = ["place", "--tables", tables, "--devices", 2, "--memory", "1GB", *FAST]
    out = tmp_path / "p.json"
    result = run(*args, "--kernel", "torch-fused", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["backend"] == "fbgemm[torch-fused]"
    assert_one_line_error(run(*args, "--kernel", "triton"), "unknown kernel 'triton'")
    if not torch.cuda.is_available():
        assert_one_line_error(run(*args, "--device", "cuda"), "torch sees no CUDA device")
