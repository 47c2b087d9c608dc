"""Cost backends: where placement costs come from (METHOD.md section 5).

- ``fbgemm``: real FBGEMM fused operators, one emulated device at a time (default).
- ``sim``: a calibrated analytical simulator (labelled as such in every result).
- ``distributed``: one process per device (gloo on CPU, NCCL on GPU), real all-to-alls;
  launches its own worker group, or uses the one ``torchrun`` started.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED, MAX_TIMING_REPEATS
from dreamshard.errors import InputError
from dreamshard.types import CostBackend

BACKEND_NAMES: tuple[str, ...] = ("fbgemm", "sim", "distributed")


@dataclass(frozen=True)
class BackendOptions:
    """Options shared by the backends; each backend reads the ones it understands.

    Attributes:
        batch_size: Global batch of one training iteration.
        seed: Seed of generated ids.
        profile: Hardware profile (packaged name or JSON path): the simulator's kernel
            model (``sim``) and the all-to-all model of the communication stages
            (``sim``, ``fbgemm``).
        row_cap: Run tables with at most this many rows; ``fbgemm`` only (logged).
        windows: Time windows of repetitions; ``fbgemm`` only.
        calls_per_window: Timed calls per shard per window; ``fbgemm`` only.
        device: ``cpu`` or ``cuda``; ``fbgemm`` and ``distributed``.
        timeout_s: Collective timeout in seconds: a failed or hung rank is reported
            within about this long; ``distributed`` only.
        kernel: ``fbgemm``, ``torch-fused`` or None (FBGEMM where it runs on the device,
            else torch-fused); ``fbgemm`` and ``distributed``.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = DEFAULT_SEED
    profile: str = "cpu-zen4"
    row_cap: int | None = None
    windows: int = 8
    calls_per_window: int = 8
    device: str = "cpu"
    kernel: str | None = None
    timeout_s: float = 30.0


def make_backend(
    name: str,
    options: BackendOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CostBackend:
    """The backend called ``name``; unknown names raise InputError listing the known ones."""
    opts = options or BackendOptions()
    if opts.batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {opts.batch_size}")
    if name in ("fbgemm", "distributed") and not (
        1 <= opts.windows <= MAX_TIMING_REPEATS and 1 <= opts.calls_per_window <= MAX_TIMING_REPEATS
    ):
        raise InputError(
            f"windows and calls per window must be between 1 and {MAX_TIMING_REPEATS:,}"
        )
    if name == "fbgemm":
        from dreamshard.backends.fbgemm import FbgemmBackend, FbgemmConfig, default_comm

        config = FbgemmConfig(
            batch_size=opts.batch_size,
            windows=opts.windows,
            calls_per_window=opts.calls_per_window,
            row_cap=opts.row_cap,
            seed=opts.seed,
            device=opts.device,
            kernel=opts.kernel,
            # The profile's comm section; the default (CPU) profile does not describe GPUs.
            comm=default_comm(
                opts.device,
                opts.profile if opts.device == "cpu" or opts.profile != "cpu-zen4" else None,
            ),
        )
        return FbgemmBackend(config, progress=progress)
    if name == "sim":
        from dreamshard.backends.sim.model import SimBackend
        from dreamshard.backends.sim.profile import load_profile

        return SimBackend(load_profile(opts.profile), batch_size=opts.batch_size)
    if name == "distributed":
        from dreamshard.backends.distributed.backend import DistributedBackend, DistributedConfig

        return DistributedBackend(
            DistributedConfig(
                batch_size=opts.batch_size,
                windows=opts.windows,
                calls_per_window=opts.calls_per_window,
                row_cap=opts.row_cap,
                seed=opts.seed,
                device=opts.device,
                kernel=opts.kernel,
                timeout_s=opts.timeout_s,
            ),
            progress=progress,
        )
    raise InputError(f"unknown backend {name!r} (known: {', '.join(BACKEND_NAMES)})")
