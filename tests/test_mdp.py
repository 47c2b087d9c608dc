from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from dreamshard.data.features import FeatureNormalizer
from dreamshard.errors import InputError, InvalidPlacementError
from dreamshard.method.costnet import CostNet, PlacementBatch
from dreamshard.method.mdp import INFEASIBLE_PENALTY, EstimatedMDP, rollout, task_tensors
from dreamshard.method.policy import PolicyNet
from dreamshard.types import Placement, TableSpec, Task

from .conftest import table, task

pytestmark = pytest.mark.usefixtures("single_thread")

BIG = 10**9


def costnet(seed: int = 0, cost_scale_ms: float = 1.0) -> CostNet:
    torch.manual_seed(seed)
    net = CostNet()
    net.cost_scale_ms = cost_scale_ms
    return net


def predicted_ms(net: CostNet, t: Task, device_of: tuple[int, ...]) -> float:
    """The cost network's cost in ms of the placed tables (device -1: not placed), computed
    through CostNet.forward."""
    placed = [i for i, d in enumerate(device_of) if d >= 0]
    features = FeatureNormalizer.fit(t.tables).transform(t.tables)[placed]
    place = Placement(tuple(device_of[i] for i in placed))
    batch = PlacementBatch.build([features], [place], [t.num_devices])
    with torch.no_grad():
        _, overall = net(batch)
    return float(overall[0]) * net.cost_scale_ms


def is_valid(t: Task, device_of: tuple[int, ...]) -> bool:
    try:
        Placement(device_of).validate(t)
    except InvalidPlacementError:
        return False
    return True


def three_tables() -> list[TableSpec]:
    # memory: a 64,000  b 32,000  c 16,000 bytes
    return [table("a", 1000, 16), table("b", 250, 32), table("c", 500, 8)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tables_are_ordered_by_predicted_single_table_cost_largest_first(
    four_tables: list[TableSpec], seed: int
) -> None:
    t = task(four_tables, [BIG, BIG])
    net = costnet(seed)
    normalizer = FeatureNormalizer.fit(four_tables)
    tt = task_tensors(t, normalizer, net)
    # Each table alone on a device of this task (the task's context: all 4 tables, 2
    # devices): fwd + bwd + comm of its device.
    features = torch.from_numpy(normalizer.transform(four_tables))
    with torch.no_grad():
        enc = net.encoder(features)
        context = torch.cat([enc.sum(dim=0) / 2, torch.log(torch.tensor([2.0]))])
        alone = torch.stack(
            [
                torch.cat([h(torch.cat([enc[i], context])) for h in net.device_heads]).sum()
                for i in range(4)
            ]
        )
    assert len(set(alone.tolist())) == 4
    assert list(tt.order) == sorted(range(4), key=lambda i: -float(alone[i]))


def test_estimated_mdp_passes_gymnasium_env_checker(four_tables: list[TableSpec]) -> None:
    t = task(four_tables, [BIG, BIG, BIG])
    env = EstimatedMDP(t, FeatureNormalizer.fit(four_tables), costnet())
    check_env(env, skip_render_check=True)


def test_hand_made_episode_masks_rewards_and_final_cost() -> None:
    # 70,000 bytes per device: "a" (64,000) leaves no room beside it for "b" or "c", and
    # "b" + "c" (48,000) leave no room for "a"; whatever the order, a choice is forced.
    tables = three_tables()
    t = task(tables, [70_000, 70_000])
    net = costnet(seed=0, cost_scale_ms=2.5)
    env = EstimatedMDP(t, FeatureNormalizer.fit(tables), net)
    obs, _ = env.reset(seed=0)
    memory = [t.table_memory_bytes(x) for x in tables]
    rewards, forced = [], False
    for step in range(3):
        i = obs["table"]
        assert i == env.tt.order[step]
        used = [
            sum(m for m, d in zip(memory, obs["device_of"], strict=True) if d == x)
            for x in range(2)
        ]
        room = [used[d] + memory[i] <= 70_000 for d in range(2)]
        assert obs["action_mask"].tolist() == [int(r) for r in room]
        if not all(room):
            forced = True
            with pytest.raises(ValueError, match="not a legal action"):
                env.step(room.index(False))
        obs, reward, terminated, truncated, info = env.step(room.index(True))
        rewards.append(reward)
        assert not truncated
        assert terminated == (step == 2)
    assert forced
    device_of = tuple(int(d) for d in obs["device_of"])
    assert is_valid(t, device_of)
    assert obs["table"] == 3
    assert rewards[:2] == [0.0, 0.0]
    expected = predicted_ms(net, t, device_of)
    assert rewards[2] == pytest.approx(-expected, rel=1e-5)
    assert info["predicted_cost_ms"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(RuntimeError):
        env.step(0)


def test_out_of_range_action_raises_value_error() -> None:
    tables = three_tables()
    env = EstimatedMDP(task(tables, [BIG, BIG]), FeatureNormalizer.fit(tables), costnet())
    env.reset()
    for bad in (2, -1):
        with pytest.raises(ValueError):
            env.step(bad)
    assert env.reset()[0]["device_of"].tolist() == [-1, -1, -1]


def test_action_mask_never_offers_a_full_device_in_random_episodes(
    four_tables: list[TableSpec],
) -> None:
    t = task(four_tables, [130_000, 100_000, 70_000])
    memory = [t.table_memory_bytes(x) for x in four_tables]
    env = EstimatedMDP(t, FeatureNormalizer.fit(four_tables), costnet())
    rng = np.random.default_rng(0)
    masks_seen = set()
    for _ in range(30):
        obs, _ = env.reset()
        terminated = False
        while not terminated:
            used = np.zeros(3, dtype=np.int64)
            for i, d in enumerate(obs["device_of"]):
                if d >= 0:
                    used[d] += memory[i]
            room = used + memory[obs["table"]] <= np.array([130_000, 100_000, 70_000])
            assert obs["action_mask"].tolist() == room.astype(int).tolist()
            masks_seen.add(tuple(room.tolist()))
            obs, _, terminated, _, info = env.step(int(rng.choice(np.flatnonzero(room))))
        if not info.get("infeasible"):
            assert is_valid(t, tuple(int(d) for d in obs["device_of"]))
    assert len(masks_seen) > 1  # the memory limits did bite


def test_rollout_marks_exactly_the_episodes_that_break_memory() -> None:
    # 40k, 40k, 30k, 30k, 20k, 20k bytes on two 90k devices: only 40k + 30k + 20k on each
    # fits only with one table of each size per device; other episodes run out of room.
    tables = [table(f"t{i}", 625, dim) for i, dim in enumerate([16, 16, 12, 12, 8, 8])]
    t = task(tables, [90_000, 90_000])
    net = costnet()
    torch.manual_seed(0)
    policy = PolicyNet()
    tt = task_tensors(t, FeatureNormalizer.fit(tables), net)
    with torch.no_grad():
        result = rollout(policy, net, tt, 64, False, torch.Generator().manual_seed(0))
    placements = [tuple(int(d) for d in row) for row in result.device_of]
    assert all(-1 not in p for p in placements)
    feasible = result.feasible.tolist()
    assert feasible == [is_valid(t, p) for p in placements]
    assert 0 < sum(feasible) < 64  # both kinds occur, so the check above has teeth
    assert ((result.stuck_table == -1) == result.feasible).all()
    for p, ok, cost in zip(placements, feasible, result.predicted_cost.tolist(), strict=True):
        penalty = 1.0 if ok else 1.0 + INFEASIBLE_PENALTY
        assert cost == pytest.approx(penalty * predicted_ms(net, t, p), rel=1e-5)


def test_greedy_rollout_is_one_placement_repeated(four_tables: list[TableSpec]) -> None:
    t = task(four_tables, [BIG, BIG, BIG])
    net = costnet()
    torch.manual_seed(1)
    tt = task_tensors(t, FeatureNormalizer.fit(four_tables), net)
    with torch.no_grad():
        result = rollout(PolicyNet(), net, tt, 5, greedy=True)
    assert (result.device_of == result.device_of[0]).all()
    assert result.feasible.all()


def test_rollout_on_a_task_that_never_fits_marks_every_episode_infeasible() -> None:
    # Three 64,000-byte tables, two 100,000-byte devices: the third table never fits.
    tables = [table(n, 1000, 16) for n in "xyz"]
    t = task(tables, [100_000, 100_000])
    net = costnet()
    torch.manual_seed(0)
    tt = task_tensors(t, FeatureNormalizer.fit(tables), net)
    with torch.no_grad():
        result = rollout(PolicyNet(), net, tt, 16, False, torch.Generator().manual_seed(0))
    assert not result.feasible.any()
    assert result.stuck_table.tolist() == [tt.order[2]] * 16
    # The first two tables went to different devices (each fills one).
    first_two = result.device_of[:, list(tt.order[:2])]
    assert (first_two[:, 0] != first_two[:, 1]).all()


def test_estimated_mdp_ends_early_when_the_next_table_has_no_room() -> None:
    tables = [table(n, 1000, 16) for n in "xyz"]
    t = task(tables, [100_000, 100_000])
    net = costnet(cost_scale_ms=2.0)
    env = EstimatedMDP(t, FeatureNormalizer.fit(tables), net)
    obs, _ = env.reset()
    obs, reward, terminated, _, _ = env.step(0)
    assert (reward, terminated) == (0.0, False)
    obs, reward, terminated, _, info = env.step(1)
    assert terminated and info["infeasible"]
    assert obs["action_mask"].tolist() == [0, 0]
    partial = tuple(int(d) for d in obs["device_of"])
    assert partial.count(-1) == 1
    expected = (1.0 + INFEASIBLE_PENALTY) * predicted_ms(net, t, partial)
    assert reward == pytest.approx(-expected, rel=1e-5)


@pytest.mark.parametrize("memory", [10**19, 10**30])
def test_devices_with_more_memory_than_int64_place_like_ample_memory(
    four_tables: list[TableSpec], memory: int
) -> None:
    # Memory beyond what the tables need cannot change a placement, however large.
    net, normalizer = costnet(), FeatureNormalizer.fit(four_tables)
    policy = PolicyNet()
    placed = []
    for mem in (BIG, memory):
        tt = task_tensors(task(four_tables, [mem, mem]), normalizer, net)
        with torch.no_grad():
            result = rollout(policy, net, tt, 4, False, torch.Generator().manual_seed(0))
        assert bool(result.feasible.all())
        placed.append(result.device_of)
    assert torch.equal(placed[0], placed[1])


def test_tight_memory_is_kept_exactly_when_huge_devices_are_clamped() -> None:
    # One device has room for exactly a and b (96,000 bytes); the other is huge.
    t = task(three_tables(), [96_000, 10**25])
    tt = task_tensors(t, FeatureNormalizer.fit(t.tables), costnet())
    with torch.no_grad():
        result = rollout(PolicyNet(), costnet(), tt, 64, False, torch.Generator().manual_seed(0))
    assert bool(result.feasible.all())
    for device_of in result.device_of.tolist():
        Placement(tuple(device_of)).validate(t)  # never more than 96,000 bytes on device 0
    assert {tuple(d) for d in result.device_of.tolist()} != {(1, 1, 1)}  # device 0 is used


def test_tables_beyond_int64_bytes_raise_input_error() -> None:
    t = task([table("huge", rows=10**18, dim=16)], [BIG])
    with pytest.raises(InputError, match="task 't': its tables need"):
        task_tensors(t, FeatureNormalizer.fit(t.tables), costnet())


def test_a_table_whose_features_overflow_raises_input_error_naming_it() -> None:
    tables = [table("a", 1000, 16), table("b", 1000, 16, pooling=1e308)]
    t = task(tables, [BIG])
    normalizer = FeatureNormalizer.fit(tables[:1])
    with (
        np.errstate(over="ignore", invalid="ignore"),
        pytest.raises(InputError, match="task 't': table 'b': its features are not finite"),
    ):
        task_tensors(t, normalizer, costnet())


@pytest.mark.parametrize(("seed", "compute_context"), [(0, True), (1, True), (2, False)])
def test_numpy_greedy_rollout_places_like_the_torch_rollout(
    seed: int, compute_context: bool
) -> None:
    from dreamshard.data.synthetic import generate_table_pool
    from dreamshard.data.tasks import make_devices, make_task
    from dreamshard.method.mdp import greedy_rollout
    from dreamshard.method.policy import PolicyNet

    torch.manual_seed(seed)
    pool = generate_table_pool(30, seed=seed, dims=[16, 32, 64], max_rows=10**6)
    sizes = sorted(t.size_bytes for t in pool)
    # Tight memory, so that legal masks and dead ends matter too.
    memory = sum(sizes) // 4 + sizes[-1]
    t = make_task("g", pool, make_devices(4, memory))
    normalizer = FeatureNormalizer.fit(pool)
    net, policy = costnet(seed), PolicyNet()
    if not compute_context:
        net.drop_compute_context()
    net.eval()
    with torch.no_grad():
        tt = task_tensors(t, normalizer, net)
        expected = rollout(policy, net, tt, 1, greedy=True)
        fast = greedy_rollout(policy, net, tt)
    assert torch.equal(fast.device_of, expected.device_of)
    assert torch.equal(fast.feasible, expected.feasible)
    assert torch.equal(fast.stuck_table, expected.stuck_table)
    torch.testing.assert_close(fast.predicted_cost, expected.predicted_cost)
