"""A trained DreamShard model and its checkpoint format.

A checkpoint folder holds ``model.pt`` (weights, feature normaliser, feature schema,
resolved training config, package version and format number) and ``config.json`` (the
same config, readable). Loading a checkpoint of another format or feature schema fails
with a clear error instead of producing wrong placements.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamshard import __version__
from dreamshard.data.features import NETWORK_FEATURE_NAMES, FeatureNormalizer
from dreamshard.errors import InputError
from dreamshard.fileio import write_json
from dreamshard.method.costnet import CostNet, PlacementBatch
from dreamshard.method.policy import PolicyNet
from dreamshard.runtime import one_thread
from dreamshard.types import Placement, Task

#: Version of the checkpoint layout; bump when a saved model would load wrongly.
CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.pt"


class CheckpointError(InputError):
    """A checkpoint is missing, damaged or from an incompatible version."""


@dataclass
class DreamShardModel:
    """Everything needed to place tables: normaliser, cost network, policy network.

    Attributes:
        normalizer: Feature normalisation fitted on the training tables.
        costnet: The cost network.
        policy: The policy network.
        config: Resolved training configuration (saved with the weights).
        info: Facts about training (backend, tasks, measurements, wall time).
    """

    normalizer: FeatureNormalizer
    costnet: CostNet = field(default_factory=CostNet)
    policy: PolicyNet = field(default_factory=PolicyNet)
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """The checkpoint payload."""
        return {
            "format": CHECKPOINT_FORMAT,
            "package_version": __version__,
            "feature_names": list(NETWORK_FEATURE_NAMES),
            "normalizer": self.normalizer.to_dict(),
            "costnet": self.costnet.state_dict(),
            "costnet_structured_overall": self.costnet.structured_overall,
            "policy": self.policy.state_dict(),
            "config": self.config,
            "info": self.info,
        }

    def save(self, folder: str | Path) -> None:
        """Write ``model.pt`` and ``config.json`` into ``folder`` (atomically per file)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{MODEL_FILE}.tmp"
        torch.save(self.state(), tmp)
        tmp.replace(out / MODEL_FILE)
        write_json(out / "config.json", {"config": self.config, "info": self.info})

    def predict_cost_ms(self, tasks: Sequence[Task], placements: Sequence[Placement]) -> np.ndarray:
        """The cost network's estimate of each placement's overall cost, in ms.

        ``tasks[i]`` is the task ``placements[i]`` places; all go through one forward
        pass (no gradients, one thread).
        """
        if len(tasks) != len(placements):
            raise ValueError(f"{len(tasks)} tasks for {len(placements)} placements")
        if not placements:
            return np.zeros(0)
        features: dict[int, np.ndarray] = {}
        for task in tasks:
            if id(task) not in features:
                features[id(task)] = self.normalizer.transform(task.tables)
        batch = PlacementBatch.build(
            [features[id(t)] for t in tasks], placements, [t.num_devices for t in tasks]
        )
        with torch.no_grad(), one_thread():
            _, overall = self.costnet(batch)
        predicted: np.ndarray = overall.double().numpy() * self.costnet.cost_scale_ms
        return predicted

    def cost_mape(
        self,
        tasks: Sequence[Task],
        placements: Sequence[Placement],
        measured_ms: Sequence[float],
    ) -> float:
        """Mean absolute percentage error (%) of :meth:`predict_cost_ms` against the
        measured costs of the same placements; NaN when there are none.

        The one definition of the cost network's error: training reports it on each
        iteration's new measurements, the benchmarks on measured test placements.
        """
        if len(measured_ms) != len(placements):
            raise ValueError(f"{len(measured_ms)} measured costs for {len(placements)} placements")
        if not placements:
            return float("nan")
        measured = np.asarray(measured_ms, dtype=np.float64)
        predicted = self.predict_cost_ms(tasks, placements)
        return float(np.mean(np.abs(predicted - measured) / measured) * 100)

    @classmethod
    def from_state(cls, state: dict[str, Any], where: str) -> DreamShardModel:
        """Rebuild a model from a checkpoint payload, checking compatibility."""
        fmt = state.get("format")
        if fmt != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{where}: checkpoint format {fmt!r} (written by dreamshard "
                f"{state.get('package_version', '?')}); this dreamshard {__version__} reads "
                f"format {CHECKPOINT_FORMAT}: retrain the model"
            )
        if state.get("feature_names") != list(NETWORK_FEATURE_NAMES):
            raise CheckpointError(f"{where}: the model was trained on other table features")
        try:
            normalizer = FeatureNormalizer.from_dict(state["normalizer"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: damaged feature normaliser ({err})") from None
        model = cls(
            normalizer=normalizer,
            costnet=CostNet(structured_overall=bool(state.get("costnet_structured_overall", True))),
            config=dict(state.get("config", {})),
            info=dict(state.get("info", {})),
        )
        try:
            model.costnet.load_state_dict(state["costnet"])
            model.policy.load_state_dict(state["policy"])
        except (KeyError, RuntimeError) as err:
            raise CheckpointError(f"{where}: damaged or mismatched weights ({err})") from None
        model.costnet.eval()
        model.policy.eval()
        return model

    @classmethod
    def load(cls, folder: str | Path) -> DreamShardModel:
        """Load ``folder/model.pt``; raises CheckpointError with the reason."""
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise CheckpointError(f"{folder}: no {MODEL_FILE} (not a trained DreamShard model)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
            raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a DreamShard checkpoint")
        return cls.from_state(state, str(path))
