"""A trained DreamShard model and its checkpoint format.

A checkpoint folder holds ``model.pt`` (weights, feature normaliser, feature schema,
resolved training config, package version and format number) and ``config.json`` (the
same config, readable). Loading a checkpoint of another format or feature schema, or
one whose weights or normaliser could only give meaningless placements (not finite, a
zero spread), fails with one line naming the file instead of producing wrong placements.

Torch files are written whole to a temporary file next to their target, which then
replaces it (:func:`save_torch_atomic`), so a reader never sees half a file.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import pickle
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamshard import __version__
from dreamshard.data.features import NETWORK_FEATURE_NAMES, FeatureNormalizer
from dreamshard.errors import InputError
from dreamshard.fileio import current_umask, write_json
from dreamshard.method.costnet import CostNet, PlacementBatch
from dreamshard.method.policy import PolicyNet
from dreamshard.runtime import one_thread
from dreamshard.types import Placement, Task

#: Version of the checkpoint layout; bump when a saved model would load wrongly.
CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"


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
            "costnet_task_context": self.costnet.task_context,
            "costnet_compute_context": self.costnet.compute_context,
            "policy": self.policy.state_dict(),
            "config": self.config,
            "info": self.info,
        }

    def save(self, folder: str | Path) -> None:
        """Write ``model.pt`` and ``config.json`` into ``folder`` (atomically per file)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_torch_atomic(self.state(), out / MODEL_FILE)
        self.save_config(out)

    def save_config(self, folder: Path) -> None:
        """Write the readable ``config.json`` next to ``model.pt``."""
        write_json(folder / CONFIG_FILE, {"config": self.config, "info": self.info})

    def non_finite_weight(self) -> str | None:
        """Name of the first weight holding inf or NaN (``costnet.x`` / ``policy.x``), or
        None when every weight is finite."""
        for prefix, net in (("costnet", self.costnet), ("policy", self.policy)):
            for key, value in net.state_dict().items():
                if not bool(torch.isfinite(value).all()):
                    return f"{prefix}.{key}"
        return None

    def predict_cost_ms(self, tasks: Sequence[Task], placements: Sequence[Placement]) -> np.ndarray:
        """The cost network's estimate of each placement's overall cost, in ms.

        ``tasks[i]`` is the task ``placements[i]`` places; all go through one forward
        pass (no gradients, one thread). A split placement is rated as the table-wise
        placement of its units (``Placement.resolve``).
        """
        if len(tasks) != len(placements):
            raise ValueError(f"{len(tasks)} tasks for {len(placements)} placements")
        if not placements:
            return np.zeros(0)
        resolved = [p.resolve(t) for t, p in zip(tasks, placements, strict=True)]
        tasks = [t for t, _ in resolved]
        placements = [p for _, p in resolved]
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
    def from_state(cls, state: object, where: str) -> DreamShardModel:
        """Rebuild a model from a checkpoint payload, checking compatibility.

        Args:
            state: What a model file held (:meth:`state`).
            where: The file it came from, named in errors.

        Raises:
            CheckpointError: ``state`` is not a model, is of another format or feature
                schema, or its normaliser or weights are unusable; one line naming
                ``where``.
        """
        if not isinstance(state, dict) or "format" not in state:
            raise CheckpointError(f"{where}: not a DreamShard model file")
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
            _check_normalizer(normalizer)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: damaged feature normaliser ({err})") from None
        for name in ("config", "info"):
            if not isinstance(state.get(name, {}), Mapping):
                raise CheckpointError(f"{where}: damaged {name} (not a mapping)")
        model = cls(
            normalizer=normalizer,
            costnet=CostNet(
                structured_overall=bool(state.get("costnet_structured_overall", True)),
                # Models saved before the task context had none.
                task_context=bool(state.get("costnet_task_context", False)),
                # Models saved before shards were used had it wherever they had a context.
                compute_context=bool(state.get("costnet_compute_context", True)),
            ),
            config=dict(state.get("config", {})),
            info=dict(state.get("info", {})),
        )
        mismatches = [
            f"{name}: {problem}"
            for name, net in (("costnet", model.costnet), ("policy", model.policy))
            if (problem := _weights_mismatch(net, state.get(name)))
        ]
        if mismatches:
            raise CheckpointError(
                f"{where}: weights do not match this version's networks ({'; '.join(mismatches)})"
            )
        try:
            model.costnet.load_state_dict(state["costnet"])
            model.policy.load_state_dict(state["policy"])
        except (KeyError, RuntimeError, TypeError) as err:
            # Only what the check above does not foresee; torch's message spans lines.
            detail = " ".join(str(err).split())
            raise CheckpointError(f"{where}: damaged weights ({detail})") from None
        bad = model.non_finite_weight()
        if bad is not None:
            raise CheckpointError(
                f"{where}: weights are not finite ({bad}): the model is damaged or its "
                "training diverged; retrain it"
            )
        scale = model.costnet.cost_scale_ms
        if not scale > 0:
            raise CheckpointError(f"{where}: cost scale {scale} ms is not positive: retrain it")
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
            # weights_only: a model holds tensors and plain values only, and a file passed
            # around (``place --model``) must not run code when read.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # Garbage and files of other objects fail alike here; torch's message spans
            # a screen.
            raise CheckpointError(
                f"{path}: not a DreamShard model file (cannot read it as a torch file of "
                "tensors and plain values)"
            ) from None
        except (OSError, RuntimeError, EOFError, ValueError) as err:
            detail = " ".join(str(err).split())
            raise CheckpointError(f"{path}: cannot read checkpoint ({detail})") from None
        return cls.from_state(state, str(path))


#: What ``--model`` / ``--init`` accept for the model shipped with the package.
PACKAGED = "packaged"


def packaged_model_dir(profile: str) -> Path:
    """Folder of the pretrained model shipped for hardware profile ``profile``
    (``dreamshard/models/<profile>/``; how it was made is in its ``provenance.json``).

    Raises:
        CheckpointError: No model ships for that profile (naming those that do).
    """
    root = Path(str(importlib.resources.files("dreamshard"))) / "models"
    folder = root / Path(profile).stem
    if not (folder / MODEL_FILE).is_file():
        shipped = sorted(p.parent.name for p in root.glob(f"*/{MODEL_FILE}"))
        raise CheckpointError(
            f"no packaged model for profile {profile!r} (packaged: "
            f"{', '.join(shipped) or 'none'}): pass --model DIR of a trained model"
        )
    return folder


def resolve_model_dir(model: str | Path | None, profile: str) -> Path:
    """The model folder ``model`` names: ``None`` or ``"packaged"`` is the packaged
    model of ``profile``; anything else is a folder path."""
    if model is None or str(model) == PACKAGED:
        return packaged_model_dir(profile)
    return Path(model)


def _check_normalizer(normalizer: FeatureNormalizer) -> None:
    """Raise ValueError naming the first feature whose statistics cannot normalise: a
    mean that is not finite, or a spread that is not positive and finite (dividing by it
    gives inf or NaN for every table)."""
    for name, mean, std in zip(NETWORK_FEATURE_NAMES, normalizer.mean, normalizer.std, strict=True):
        if not math.isfinite(mean):
            raise ValueError(f"mean of {name!r} is {mean}")
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"std of {name!r} is {std}")


def _weights_mismatch(net: torch.nn.Module, saved: object) -> str:
    """How ``saved`` differs from ``net``'s state dict (missing and unexpected keys,
    other shapes), in one line; empty when it fits."""
    if not isinstance(saved, Mapping):
        return "no weights"
    expected = net.state_dict()
    problems = [f"missing {k!r}" for k in expected if k not in saved]
    problems += [f"unexpected {k!r}" for k in saved if k not in expected]
    for key, value in saved.items():
        if key not in expected:
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key!r} is not a tensor")
        elif value.shape != expected[key].shape:
            problems.append(
                f"{key!r} has shape {list(value.shape)}, not {list(expected[key].shape)}"
            )
    if len(problems) > 3:
        # A file of other networks mismatches everywhere; the first few say enough.
        problems = [*problems[:3], f"{len(problems) - 3} more"]
    return ", ".join(problems)


def write_temp_torch(obj: object, target: Path) -> Path:
    """``torch.save`` ``obj`` into a new temporary file next to ``target``, flushed to disk.

    The caller moves it onto ``target`` (``os.replace``) or removes it; the name starts
    with ``.{target.name}.`` and ends with ``.tmp`` so :func:`remove_stale_temp_files`
    recognises one a killed process left. On any error the file is removed.
    """
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
            # mkstemp's private 0600 would outlive the rename: give the mode any new
            # file gets, as torch.save to a path did.
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def save_torch_atomic(obj: object, target: Path) -> None:
    """``torch.save`` ``obj`` to ``target`` so that readers see the old file or the new
    one, never half of one, and no temporary file stays behind on an error."""
    tmp = write_temp_torch(obj, target)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temp_files(folder: Path, names: Sequence[str]) -> None:
    """Remove the temporary files that writing ``names`` in ``folder`` leaves when the
    writer is killed (``.{name}.*tmp``); call only while no one else writes there."""
    if not folder.is_dir():
        return
    prefixes = tuple(f".{name}." for name in names)
    for path in folder.iterdir():
        if path.name.startswith(prefixes) and path.name.endswith(".tmp") and path.is_file():
            path.unlink(missing_ok=True)
