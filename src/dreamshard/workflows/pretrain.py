"""Pretraining the packaged model on the simulator (measurements there are free).

The model shipped in ``dreamshard/models/<profile>/`` is made by :func:`pretrain`:
DreamShard's training (``method.train``, with its measurement mix) on augmented tasks
(``data.augment``: dims 4-256, 2-1,024 devices, memory loose to binding) measured on the
calibrated simulator of that profile. How it was made (this config, seeds, data sizes,
wall time, package version) is written next to it in ``provenance.json``. Users place
with it directly, or fine-tune it on their hardware (``dreamshard train --init
packaged``).
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dreamshard import __version__
from dreamshard.backends import BackendOptions, make_backend
from dreamshard.data.augment import DIMS, augmented_table_pool, augmented_tasks
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.fileio import read_json, write_json
from dreamshard.workflows.experiment import Log, TrainedModel, train_model

if TYPE_CHECKING:
    from dreamshard.method.train import TrainConfig

PROVENANCE_FILE = "provenance.json"


def _default_train() -> TrainConfig:
    from dreamshard.method.train import TrainConfig

    return TrainConfig(
        iterations=30,
        measurements_per_iteration=100,
        cost_steps=400,
        policy_batches=20,
        seed=2026,
    )


@dataclass(frozen=True)
class PretrainConfig:
    """What the packaged model is trained on.

    Attributes:
        profile: Hardware profile of the simulator (packaged name).
        num_tables: Tables in the augmented pool.
        num_tasks: Augmented training tasks.
        seed: Seed of the pools and the tasks (training has its own, in ``train``).
        train: Training settings.
        dlrm_tables: Tables in a DLRM-like pool (dims drawn from the augmented ones),
            used when ``dlrm_tasks`` > 0.
        dlrm_tasks: Tasks of augmented shapes drawn from that pool, beside the
            augmented ones (0: none).
        large_tasks: Large tasks (``data.augment``: 32 to 256 devices, up to 1,200
            tables) drawn from the augmented pool, beside the others (0: none).
        init: Continue from this model (``"packaged"``: the packaged model of
            ``profile``; else a model folder); None: fresh networks.
    """

    profile: str = "cpu-zen4"
    num_tables: int = 3000
    num_tasks: int = 300
    seed: int = 2026
    train: TrainConfig = field(default_factory=_default_train)
    dlrm_tables: int = 3000
    dlrm_tasks: int = 0
    large_tasks: int = 0
    init: str | None = None


def pretrain(config: PretrainConfig, out_dir: str | Path, log: Log | None = None) -> TrainedModel:
    """Train the model of ``config.profile`` on augmented simulated tasks into
    ``out_dir`` (resuming a checkpoint there) and write its provenance."""
    from dreamshard.method.checkpoint import resolve_model_dir

    start = time.perf_counter()
    pool = augmented_table_pool(config.num_tables, config.seed)
    tasks = augmented_tasks(pool, config.num_tasks, config.seed + 1)
    if config.dlrm_tasks:
        dlrm = generate_table_pool(
            config.dlrm_tables, seed=config.seed + 2, dims=DIMS, name_prefix="d"
        )
        tasks += augmented_tasks(dlrm, config.dlrm_tasks, config.seed + 3, name_prefix="pre-d")
    if config.large_tasks:
        tasks += augmented_tasks(
            pool, config.large_tasks, config.seed + 4, name_prefix="pre-l", large=True
        )
    init_provenance = None
    if config.init is not None:
        init_dir = resolve_model_dir(config.init, config.profile)
        if (init_dir / PROVENANCE_FILE).is_file():
            init_provenance = read_json(init_dir / PROVENANCE_FILE)
    backend = make_backend("sim", BackendOptions(profile=config.profile))
    trained = train_model(
        config.train, tasks, backend, out_dir, log=log, init=config.init, profile=config.profile
    )
    devices = sorted({t.num_devices for t in tasks})
    write_json(
        Path(out_dir) / PROVENANCE_FILE,
        {
            "made_by": "dreamshard.workflows.pretrain.pretrain",
            "package_version": __version__,
            "python": platform.python_version(),
            "config": asdict(config),
            "data": {
                "pool_tables": len(pool),
                "dlrm_pool_tables": config.dlrm_tables if config.dlrm_tasks else 0,
                "tasks": len(tasks),
                "tables_per_task": [
                    min(t.num_tables for t in tasks),
                    max(t.num_tables for t in tasks),
                ],
                "devices": devices,
                "measurements": trained.model.info.get("measurements"),
                "backend": f"sim ({config.profile}), simulated, not measured",
            },
            "wall_s": round(time.perf_counter() - start, 1),
            "init_provenance": init_provenance,
        },
    )
    return trained
