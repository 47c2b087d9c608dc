from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamshard.data.features import NETWORK_FEATURE_NAMES
from dreamshard.method.costnet import (
    DEVICE_ERROR_FLOOR,
    DEVICE_ERROR_WEIGHT,
    CostNet,
    CostTargets,
    PlacementBatch,
)
from dreamshard.types import Placement, PlacementCost, StageCosts, synchronized_costs

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_FEATURES = len(NETWORK_FEATURE_NAMES)


def features(num_tables: int, seed: int) -> np.ndarray:
    """[T, F] normalised-looking random features."""
    return np.random.default_rng(seed).normal(size=(num_tables, NUM_FEATURES)).astype(np.float32)


def net(structured: bool = True, seed: int = 0) -> CostNet:
    torch.manual_seed(seed)
    return CostNet(structured_overall=structured)


def predict(model: CostNet, feats: list[np.ndarray], device_of: list[tuple[int, ...]], devices):
    batch = PlacementBatch.build(feats, [Placement(d) for d in device_of], devices)
    with torch.no_grad():
        return model(batch)


@pytest.mark.parametrize(("num_tables", "num_devices"), [(3, 2), (7, 5), (1, 1), (4, 8)], ids=str)
def test_output_shapes(num_tables: int, num_devices: int) -> None:
    device_of = tuple(i % num_devices for i in range(num_tables))
    device, overall = predict(net(), [features(num_tables, 0)], [device_of], [num_devices])
    assert device.shape == (1, num_devices, 3)
    assert overall.shape == (1,)


def test_mixed_batch_shapes_and_mask() -> None:
    feats = [features(3, 0), features(7, 1)]
    device_of = [(0, 1, 0), (0, 1, 2, 3, 4, 4, 2)]
    batch = PlacementBatch.build(feats, [Placement(d) for d in device_of], [2, 5])
    assert batch.max_devices == 5
    assert batch.segment.tolist() == [0, 1, 0, 5, 6, 7, 8, 9, 9, 7]
    assert batch.device_mask.tolist() == [[True, True, False, False, False], [True] * 5]
    device, overall = net()(batch)
    assert device.shape == (2, 5, 3)
    assert overall.shape == (2,)


@pytest.mark.parametrize("structured", [True, False])
def test_relabelling_devices_permutes_device_predictions(structured: bool) -> None:
    model = net(structured)
    feats = features(7, 0)
    device_of = (0, 1, 2, 3, 4, 4, 2)
    perm = (3, 0, 4, 1, 2)  # device d becomes device perm[d]
    relabelled = tuple(perm[d] for d in device_of)
    device, overall = predict(model, [feats, feats], [device_of, relabelled], [5, 5])
    torch.testing.assert_close(overall[1], overall[0])
    torch.testing.assert_close(device[1, list(perm)], device[0])
    # The devices really do differ (otherwise the check above would be vacuous).
    assert not torch.allclose(device[0, 0], device[0, 1])


@pytest.mark.parametrize("structured", [True, False])
def test_table_order_within_a_device_does_not_matter(structured: bool) -> None:
    model = net(structured)
    feats = features(6, 0)
    device_of = (0, 1, 0, 2, 1, 0)
    order = [5, 3, 0, 4, 2, 1]
    device, overall = predict(
        model,
        [feats, feats[order]],
        [device_of, tuple(device_of[i] for i in order)],
        [3, 3],
    )
    torch.testing.assert_close(device[1], device[0])
    torch.testing.assert_close(overall[1], overall[0])


@pytest.mark.parametrize("structured", [True, False])
def test_padding_devices_do_not_change_predictions(structured: bool) -> None:
    model = net(structured)
    small, small_place = features(3, 0), (0, 1, 1)
    large, large_place = features(7, 1), (0, 1, 2, 3, 4, 5, 5)
    alone_device, alone_overall = predict(model, [small], [small_place], [2])
    device, overall = predict(model, [small, large], [small_place, large_place], [2, 6])
    torch.testing.assert_close(overall[0], alone_overall[0])
    torch.testing.assert_close(device[0, :2], alone_device[0])


def test_cost_targets_hand_computed() -> None:
    # dev0: fwd_comp 3 (slowest), fwd_comm 1, bwd_comm 2, bwd_comp 4 -> total 10
    # dev1: fwd_comp 1 (waits 2), fwd_comm 4, bwd_comm 2, bwd_comp 5 -> total 12
    # comm target = fwd_comm + bwd_comm - (max fwd_comp - fwd_comp): dev0 3, dev1 4.
    cost = PlacementCost(
        per_device=(StageCosts(3.0, 1.0, 2.0, 4.0), StageCosts(1.0, 4.0, 2.0, 5.0)),
        backend="hand",
    )
    targets = CostTargets.build([cost], max_devices=3, cost_scale_ms=2.0)
    expected = torch.tensor([[[3.0, 4.0, 3.0], [1.0, 5.0, 4.0], [0.0, 0.0, 0.0]]]) / 2.0
    torch.testing.assert_close(targets.device, expected)
    torch.testing.assert_close(targets.overall, torch.tensor([12.0 / 2.0]))


def test_cost_targets_of_synchronized_costs_remove_the_whole_wait() -> None:
    # With synchronised devices every device's comm target is the two collectives' time.
    per_device = synchronized_costs([5.0, 2.0, 0.5], [1.0, 1.0, 1.0], 0.75, 1.25)
    targets = CostTargets.build([PlacementCost(per_device, "hand")], 3, 1.0)
    torch.testing.assert_close(targets.device[0, :, 2], torch.full((3,), 2.0))


def test_structured_overall_is_sum_of_per_stage_maxima_over_real_devices() -> None:
    model = net(structured=True)
    feats = [features(4, 0), features(5, 1)]
    # Placement 0: 3 real devices, device 1 empty. Placement 1: 4 devices, device 3 empty.
    device_of = [(0, 2, 0, 2), (0, 1, 2, 1, 0)]
    device, overall = predict(model, feats, device_of, [3, 4])
    with torch.no_grad():
        for p, (f, place, num_devices) in enumerate(zip(feats, device_of, [3, 4], strict=True)):
            enc = model.encoder(torch.from_numpy(f))
            # The task context: mean device representation and log of the device count.
            context = torch.cat(
                [enc.sum(dim=0) / num_devices, torch.log(torch.tensor([num_devices]))]
            )
            expected = []
            for d in range(num_devices):
                tables = [i for i, x in enumerate(place) if x == d]
                rep = enc[tables].sum(dim=0) if tables else torch.zeros(enc.shape[1])
                costs = torch.cat([head(torch.cat([rep, context])) for head in model.device_heads])
                if not tables:
                    costs[:2] = 0.0  # an empty device computes nothing
                expected.append(costs)
            exp = torch.stack(expected)
            torch.testing.assert_close(device[p, :num_devices], exp)
            torch.testing.assert_close(overall[p], exp.max(dim=0).values.sum())
    assert device[0, 1, :2].tolist() == [0.0, 0.0]
    assert device[1, 3, :2].tolist() == [0.0, 0.0]


def test_paper_overall_reads_max_over_device_representations() -> None:
    model = net(structured=False)
    feats = features(4, 0)
    _, overall = predict(model, [feats], [(0, 1, 1, 0)], [3])
    with torch.no_grad():
        enc = model.encoder(torch.from_numpy(feats))
        pooled = torch.maximum(enc[[0, 3]].sum(0), enc[[1, 2]].sum(0))  # empty device: 0
        torch.testing.assert_close(overall[0], model.overall_head(pooled)[0])


def test_loss_decreases_on_a_tiny_fixed_dataset() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    feats, placements, counts, costs = [], [], [], []
    for k in range(12):
        num_tables, num_devices = int(rng.integers(3, 8)), int(rng.integers(2, 5))
        f = features(num_tables, 100 + k)
        device_of = tuple(int(d) for d in rng.integers(num_devices, size=num_tables))
        # A cost that the network can express: per-table work summed per device.
        work = np.exp(f[:, 0])
        fwd = [
            float(work[[i for i, d in enumerate(device_of) if d == x]].sum())
            for x in range(num_devices)
        ]
        costs.append(PlacementCost(synchronized_costs(fwd, [2 * w for w in fwd], 0.5, 0.5), "h"))
        feats.append(f)
        placements.append(Placement(device_of))
        counts.append(num_devices)
    batch = PlacementBatch.build(feats, placements, counts)
    targets = CostTargets.build(costs, batch.max_devices, cost_scale_ms=5.0)
    model = CostNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        loss = model.loss(batch, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.01 * losses[0]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def _two_placements() -> tuple[PlacementBatch, CostTargets]:
    """Two placements, one with a nearly empty device (its cost under the floor)."""
    feats = [features(5, 0), features(4, 1)]
    device_of = [(0, 1, 1, 2, 0), (0, 0, 1, 1)]
    batch = PlacementBatch.build(feats, [Placement(d) for d in device_of], [3, 2])
    costs = [
        PlacementCost(synchronized_costs([4.0, 1.0, 0.01], [8.0, 2.0, 0.02], 0.5, 0.5), "h"),
        PlacementCost(synchronized_costs([3.0, 2.0], [6.0, 4.0], 0.2, 0.2), "h"),
    ]
    return batch, CostTargets.build(costs, batch.max_devices, cost_scale_ms=1.0)


@pytest.mark.parametrize("device_error", ["placement", "device"])
def test_device_error_sets_what_each_device_error_is_divided_by(device_error: str) -> None:
    model = net(structured=False)
    batch, targets = _two_placements()
    with torch.no_grad():
        device, overall = model(batch)
        loss = model.loss(batch, targets, relative=True, device_error=device_error)
    overall_scale = targets.overall[:, None, None]
    if device_error == "device":  # each device's own cost, floored; the device terms weighted
        scale = torch.maximum(targets.device, DEVICE_ERROR_FLOOR * overall_scale)
        weight = DEVICE_ERROR_WEIGHT
    else:
        scale, weight = overall_scale.expand_as(targets.device), 1.0
    device_terms = (((device - targets.device) / scale) ** 2)[batch.device_mask].mean(dim=0)
    overall_term = (((overall - targets.overall) / targets.overall) ** 2).mean()
    torch.testing.assert_close(loss, weight * device_terms.sum() + overall_term)


def test_an_unknown_device_error_is_refused() -> None:
    batch, targets = _two_placements()
    with pytest.raises(ValueError, match="device_error must be one of"):
        net().loss(batch, targets, device_error="own")


def _without_compute_context(seed: int = 0) -> CostNet:
    model = net(seed=seed)
    model.drop_compute_context()
    return model


def test_without_compute_context_a_devices_computation_ignores_the_rest_of_the_task() -> None:
    """The same two tables on device 0 of two tasks that differ elsewhere (other tables,
    another number of devices): the same computation, another communication; with the
    context on every head, the computation differs too (the check has teeth)."""
    shared, rest_a, rest_b = features(2, 0), features(3, 1), features(6, 2)
    feats = [np.concatenate([shared, rest_a]), np.concatenate([shared, rest_b])]
    device_of = [(0, 0, 1, 1, 1), (0, 0, 1, 2, 3, 1, 2, 3)]
    for model, same in ((_without_compute_context(), True), (net(), False)):
        device, _ = predict(model, feats, device_of, [2, 4])
        assert torch.equal(device[0, 0, :2], device[1, 0, :2]) is same
        assert not torch.equal(device[0, 0, 2], device[1, 0, 2])


def test_drop_compute_context_zeroes_only_the_computation_heads_context_weights() -> None:
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.drop_compute_context()
    assert not model.compute_context
    embed = model.encoder.embed
    for key, value in model.state_dict().items():
        if key in ("device_heads.0.0.weight", "device_heads.1.0.weight"):
            assert torch.equal(value[:, :embed], before[key][:, :embed])
            assert not value[:, embed:].any() and before[key][:, embed:].any()
        else:
            assert torch.equal(value, before[key]), key


def _shards() -> tuple[PlacementBatch, torch.Tensor]:
    feats = [features(3, 0), features(1, 1), features(5, 2)]
    batch = PlacementBatch.build(feats, [Placement((0,) * len(f)) for f in feats], [1, 1, 1])
    return batch, torch.tensor([[1.0, 2.0], [0.5, 0.25], [3.0, 4.0]])


def test_compute_loss_is_each_heads_squared_error_relative_to_the_shards_own_cost() -> None:
    model = _without_compute_context()
    batch, targets = _shards()
    with torch.no_grad():
        device, _ = model(batch)
        shards = model.compute_costs(batch)
        loss = model.compute_loss(batch, targets)
    torch.testing.assert_close(shards, device[:, 0, :2])  # the heads a placement uses
    errors = [
        float((shards[s, h] - targets[s, h]) / targets[s, h]) for s in range(3) for h in (0, 1)
    ]
    expected = sum(e**2 for e in errors) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_compute_loss_trains_the_computation_heads_only() -> None:
    model = _without_compute_context()
    batch, targets = _shards()
    model.compute_loss(batch, targets).backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert grads["device_heads.0.2.weight"].abs().sum() > 0  # fwd head, second layer
    assert grads["encoder.net.0.weight"].abs().sum() > 0
    assert grads["device_heads.2.0.weight"] is None or not grads["device_heads.2.0.weight"].any()
    # The masked context weights get no gradient either: they stay zero when trained.
    assert not grads["device_heads.0.0.weight"][:, model.encoder.embed :].any()


def test_compute_loss_refuses_heads_that_read_the_task_and_multi_device_batches() -> None:
    batch, targets = _shards()
    with pytest.raises(ValueError, match="without the task context"):
        net().compute_loss(batch, targets)
    two = PlacementBatch.build([features(2, 0)], [Placement((0, 1))], [2])
    with pytest.raises(ValueError, match="single-device"):
        _without_compute_context().compute_loss(two, targets[:1])
