"""benchmarks/gpu_measure.py in quick CPU mode, with only torch and numpy importable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Runs the script as the GPU machines would: fbgemm_gpu, scipy and the CLI libraries absent.
RUNNER = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
sys.argv = ['gpu_measure.py'] + {argv!r}
runpy.run_path({script!r}, run_name='__main__')
"""

BLOCKED = ("fbgemm_gpu", "scipy", "typer", "rich", "torchrec", "matplotlib", "gymnasium")


@pytest.mark.slow
def test_quick_cpu_run_without_fbgemm_writes_every_number(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--quick", "--kernel", "torch-fused", "--out", str(out)]
    code = RUNNER.format(
        blocked=set(BLOCKED), argv=argv, script=str(ROOT / "benchmarks" / "gpu_measure.py")
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},  # no PYTHONPATH: the script finds src/ itself
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "[placement  3/3]" in done.stdout and "wrote" in done.stdout
    result = json.loads(out.read_text())
    assert result["environment"]["kernel"] == "torch-fused"
    assert result["environment"]["fbgemm_gpu"] is None
    assert result["self_check"]["forward_max_abs_error"] < 1e-5
    assert result["self_check"]["update_max_abs_error"] < 1e-6
    assert len(result["shards"]) == 6
    assert all(s["fwd_ms"] > 0 and s["bwd_ms"] > 0 for s in result["shards"])
    assert len(result["placements"]) == 3 and not result["truncated"]
    for placement in result["placements"]:
        devices = placement["per_device"]
        assert len(devices) == 4
        assert sorted(n for d in devices for n in d["tables"]) == [f"t{i:02d}" for i in range(6)]
        assert placement["computation_cost_ms"] == pytest.approx(
            max(d["fwd_ms"] for d in devices) + max(d["bwd_ms"] for d in devices)
        )
