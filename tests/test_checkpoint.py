from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dreamshard import __version__
from dreamshard.data.features import NETWORK_FEATURE_NAMES, FeatureNormalizer
from dreamshard.errors import InfeasiblePlacementError, InputError
from dreamshard.method.checkpoint import MODEL_FILE, CheckpointError, DreamShardModel
from dreamshard.method.costnet import CostNet, PlacementBatch
from dreamshard.method.mdp import rollout, task_tensors
from dreamshard.placers.dreamshard import DreamShardPlacer
from dreamshard.placers.registry import PlacerOptions, make_placer
from dreamshard.types import Placement, TableSpec, Task

from .conftest import table, task

pytestmark = pytest.mark.usefixtures("single_thread")

BIG = 10**9


def make_model(tables: list[TableSpec], seed: int = 0, structured: bool = True) -> DreamShardModel:
    torch.manual_seed(seed)
    model = DreamShardModel(
        normalizer=FeatureNormalizer.fit(tables),
        costnet=CostNet(structured_overall=structured),
        config={"seed": seed, "iterations": 3},
        info={"backend": "sim"},
    )
    model.costnet.cost_scale_ms = 3.5
    return model


def predictions(model: DreamShardModel, t: Task) -> tuple[torch.Tensor, ...]:
    """Cost-network outputs for two placements and the greedy placement of ``t``."""
    features = model.normalizer.transform(t.tables)
    placements = [Placement((0, 1, 0, 1)), Placement((1, 1, 1, 0))]
    batch = PlacementBatch.build([features] * 2, placements, [2, 2])
    with torch.no_grad():
        device, overall = model.costnet(batch)
        tt = task_tensors(t, model.normalizer, model.costnet)
        greedy = rollout(model.policy, model.costnet, tt, 1, greedy=True)
        sampled = rollout(
            model.policy, model.costnet, tt, 8, False, torch.Generator().manual_seed(0)
        )
    return device, overall, greedy.device_of, sampled.device_of, sampled.log_prob


def edit_checkpoint(folder: Path, **changes: object) -> None:
    path = folder / MODEL_FILE
    state = torch.load(path, weights_only=False)
    state.update(changes)
    torch.save(state, path)


@pytest.fixture
def saved(tmp_path: Path, four_tables: list[TableSpec]) -> Path:
    make_model(four_tables).save(tmp_path)
    return tmp_path


@pytest.mark.parametrize("structured", [True, False])
def test_save_load_round_trip_gives_identical_predictions(
    tmp_path: Path, four_tables: list[TableSpec], structured: bool
) -> None:
    model = make_model(four_tables, structured=structured)
    model.save(tmp_path)
    assert (tmp_path / MODEL_FILE).is_file()
    assert (tmp_path / "config.json").is_file()
    loaded = DreamShardModel.load(tmp_path)
    assert loaded.normalizer == model.normalizer
    assert loaded.config == model.config
    assert loaded.info == model.info
    assert loaded.costnet.cost_scale_ms == 3.5
    assert loaded.costnet.structured_overall == structured
    t = task(four_tables, [BIG, BIG])
    for before, after in zip(predictions(model, t), predictions(loaded, t), strict=True):
        assert torch.equal(before, after)
    # A differently seeded model really predicts differently (the check above has teeth).
    other = predictions(make_model(four_tables, seed=1, structured=structured), t)
    assert not torch.equal(other[1], predictions(model, t)[1])


def test_computation_heads_without_the_task_context_are_saved_as_such(
    tmp_path: Path, four_tables: list[TableSpec]
) -> None:
    model = make_model(four_tables)
    model.costnet.drop_compute_context()
    model.save(tmp_path)
    loaded = DreamShardModel.load(tmp_path)
    assert not loaded.costnet.compute_context
    t = task(four_tables, [BIG, BIG])
    for before, after in zip(predictions(model, t), predictions(loaded, t), strict=True):
        assert torch.equal(before, after)


def test_a_model_saved_before_the_compute_context_setting_keeps_it(saved: Path) -> None:
    state = torch.load(saved / MODEL_FILE, weights_only=False)
    del state["costnet_compute_context"]
    torch.save(state, saved / MODEL_FILE)
    assert DreamShardModel.load(saved).costnet.compute_context


def test_changed_format_names_format_and_version(saved: Path) -> None:
    edit_checkpoint(saved, format=99, package_version="0.0.1-old")
    with pytest.raises(CheckpointError) as err:
        DreamShardModel.load(saved)
    message = str(err.value)
    assert "format 99" in message
    assert "0.0.1-old" in message
    assert __version__ in message


def test_missing_model_file_raises(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=MODEL_FILE):
        DreamShardModel.load(tmp_path)


def test_truncated_model_file_raises(saved: Path) -> None:
    path = saved / MODEL_FILE
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read"):
        DreamShardModel.load(saved)


def test_file_that_is_not_a_checkpoint_raises_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / MODEL_FILE).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        DreamShardModel.load(tmp_path)


def test_feature_name_mismatch_raises(saved: Path) -> None:
    edit_checkpoint(saved, feature_names=[*NETWORK_FEATURE_NAMES[:-1], "something_else"])
    with pytest.raises(CheckpointError, match="other table features"):
        DreamShardModel.load(saved)


def test_damaged_normalizer_raises(saved: Path) -> None:
    edit_checkpoint(saved, normalizer={"mean": [0.0], "std": [1.0]})
    with pytest.raises(CheckpointError, match="normali"):
        DreamShardModel.load(saved)


def test_mismatched_weights_raise(saved: Path) -> None:
    state = torch.load(saved / MODEL_FILE, weights_only=False)
    costnet = dict(state["costnet"])
    costnet.pop(next(iter(costnet)))
    edit_checkpoint(saved, costnet=costnet)
    with pytest.raises(CheckpointError, match="weights do not match"):
        DreamShardModel.load(saved)


def test_dreamshard_placer_loads_model_and_places_validly(
    saved: Path, four_tables: list[TableSpec]
) -> None:
    t = task(four_tables, [BIG, BIG, BIG])
    placer = make_placer("dreamshard", PlacerOptions(model_dir=str(saved)))
    placement = placer.place(t)
    placement.validate(t)
    # It is the loaded model's greedy placement.
    greedy = predictions(DreamShardModel.load(saved), t)[2]
    assert placement.device_of == tuple(greedy[0].tolist())


def test_dreamshard_placer_with_samples_respects_memory(saved: Path) -> None:
    tables = [table(f"t{i}", 625, dim) for i, dim in enumerate([16, 16, 12, 12, 8, 8])]
    t = task(tables, [90_000, 90_000])  # only one table of each size per device fits
    placer = make_placer("dreamshard", PlacerOptions(model_dir=str(saved), samples=32))
    placement = placer.place(t)
    placement.validate(t)


def test_dreamshard_placer_without_model_dir_takes_the_packaged_model(tmp_path: Path) -> None:
    from dreamshard.backends import BackendOptions
    from dreamshard.backends.sim.profile import load_profile
    from dreamshard.method.checkpoint import packaged_model_dir

    for profile in ("cpu-zen4", "h100-public"):
        options = PlacerOptions(backend_options=BackendOptions(profile=profile))
        placer = make_placer("dreamshard", options)
        packaged = DreamShardModel.load(packaged_model_dir(profile))
        assert placer.model.normalizer.to_dict() == packaged.normalizer.to_dict()  # type: ignore[attr-defined]
    cpu, gpu = (DreamShardModel.load(packaged_model_dir(p)) for p in ("cpu-zen4", "h100-public"))
    cpu_w, gpu_w = cpu.costnet.state_dict().values(), gpu.costnet.state_dict().values()
    weights = zip(cpu_w, gpu_w, strict=True)
    assert not all(torch.equal(a, b) for a, b in weights)  # a model of its own
    # A profile without a packaged model: one line naming the ones there are.
    own = tmp_path / "my-cpu.json"
    load_profile("cpu-zen4").save(own)
    other = PlacerOptions(backend_options=BackendOptions(profile=str(own)))
    with pytest.raises(
        InputError,
        match=r"no packaged model for profile '.*my-cpu.json' \(packaged: cpu-zen4, h100-public\)",
    ):
        make_placer("dreamshard", other)


def test_dreamshard_placer_falls_back_to_samples_when_greedy_does_not_fit() -> None:
    # 2,000 rows on two devices of 1,000 rows: only {600, 400} / {500, 300, 200} fits.
    tables = [table(f"t{i}", rows, 16) for i, rows in enumerate([600, 500, 400, 300, 200])]
    t = task(tables, [64_000, 64_000])
    model = make_model(tables, seed=1)
    with torch.no_grad():
        greedy = rollout(
            model.policy, model.costnet, task_tensors(t, model.normalizer, model.costnet), 1, True
        )
    assert not bool(greedy.feasible[0])  # the case the fallback exists for
    placement = DreamShardPlacer(model).place(t)
    placement.validate(t)
    assert {tuple(i for i, d in enumerate(placement.device_of) if d == k) for k in (0, 1)} == {
        (0, 2),
        (1, 3, 4),
    }


def test_dreamshard_placer_reports_a_task_nothing_fits() -> None:
    tables = [table(f"t{i}", rows, 16) for i, rows in enumerate([600, 600, 600])]
    with pytest.raises(InfeasiblePlacementError, match="t"):
        DreamShardPlacer(make_model(tables)).place(task(tables, [64_000, 64_000]))


# -- files that are not (sound) DreamShard models -----------------------------------------


@pytest.mark.parametrize(
    "payload", [{"a": 1}, torch.zeros(3), [1, 2]], ids=["dict", "tensor", "list"]
)
def test_an_unrelated_torch_file_is_named_as_not_a_model_file(
    tmp_path: Path, payload: object
) -> None:
    torch.save(payload, tmp_path / MODEL_FILE)
    with pytest.raises(CheckpointError) as err:
        DreamShardModel.load(tmp_path)
    assert str(err.value) == f"{tmp_path / MODEL_FILE}: not a DreamShard model file"


def without_a_key(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if k != "encoder.net.0.weight"}


def with_extra_key(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**weights, "extra.weight": torch.zeros(2)}


def with_other_shape(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**weights, "encoder.net.0.weight": torch.zeros(3, 3)}


@pytest.mark.parametrize(
    ("edit", "detail"),
    [
        (without_a_key, "missing 'encoder.net.0.weight'"),
        (with_extra_key, "unexpected 'extra.weight'"),
        (
            with_other_shape,
            f"'encoder.net.0.weight' has shape [3, 3], not [128, {len(NETWORK_FEATURE_NAMES)}]",
        ),
    ],
)
def test_mismatched_weights_are_one_line_naming_the_file_and_keys(
    saved: Path, edit: object, detail: str
) -> None:
    state = torch.load(saved / MODEL_FILE, weights_only=False)
    assert callable(edit)
    edit_checkpoint(saved, costnet=edit(state["costnet"]))
    with pytest.raises(CheckpointError) as err:
        DreamShardModel.load(saved)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{saved / MODEL_FILE}: weights do not match")
    assert f"costnet: {detail}" in message


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_file(saved: Path, value: float) -> None:
    state = torch.load(saved / MODEL_FILE, weights_only=False)
    policy = dict(state["policy"])
    key = next(iter(policy))
    policy[key] = policy[key].clone().fill_(value)
    edit_checkpoint(saved, policy=policy)
    with pytest.raises(CheckpointError, match=f"not finite \\(policy.{key}\\)") as err:
        DreamShardModel.load(saved)
    assert str(err.value).startswith(str(saved / MODEL_FILE))


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_a_cost_scale_that_is_not_positive_is_refused(saved: Path, scale: float) -> None:
    state = torch.load(saved / MODEL_FILE, weights_only=False)
    edit_checkpoint(saved, costnet={**state["costnet"], "_cost_scale_ms": torch.tensor(scale)})
    with pytest.raises(CheckpointError, match="cost scale"):
        DreamShardModel.load(saved)


@pytest.mark.parametrize(
    ("field", "value"), [("std", 0.0), ("std", float("nan")), ("std", -1.0), ("mean", float("inf"))]
)
def test_a_normaliser_with_unusable_statistics_is_refused(
    saved: Path, field: str, value: float
) -> None:
    state = torch.load(saved / MODEL_FILE, weights_only=False)
    normalizer = dict(state["normalizer"])
    normalizer[field] = [value, *normalizer[field][1:]]
    edit_checkpoint(saved, normalizer=normalizer)
    with pytest.raises(CheckpointError, match=f"damaged feature normaliser.*{field}") as err:
        DreamShardModel.load(saved)
    assert str(err.value).startswith(str(saved / MODEL_FILE))


def test_saving_leaves_no_temporary_file_when_the_write_fails(
    tmp_path: Path, four_tables: list[TableSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save

    def failing_save(obj: object, f: object) -> None:
        real_save(obj, f)  # type: ignore[arg-type]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        make_model(four_tables).save(tmp_path)
    assert list(tmp_path.iterdir()) == []


class Foreign:
    """An object of a class DreamShard never saves."""


def test_a_torch_file_of_other_objects_is_not_unpickled(tmp_path: Path) -> None:
    # Loading it would run the pickled classes' code; a model holds only values.
    torch.save({"format": 1, "payload": Foreign()}, tmp_path / MODEL_FILE)
    with pytest.raises(CheckpointError) as err:
        DreamShardModel.load(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / MODEL_FILE}: not a DreamShard model file (cannot read it as a torch "
        "file of tensors and plain values)"
    )


@pytest.mark.parametrize("field", ["config", "info"])
def test_a_config_that_is_not_a_mapping_is_named(saved: Path, field: str) -> None:
    edit_checkpoint(saved, **{field: [1, 2, 3]})
    with pytest.raises(CheckpointError, match=f"damaged {field}"):
        DreamShardModel.load(saved)
