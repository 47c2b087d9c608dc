from __future__ import annotations

import math

import pytest
import torch

from dreamshard.method.policy import NUM_COST_FEATURES, NonFiniteError, PolicyNet, choose

pytestmark = pytest.mark.usefixtures("single_thread")


def random_legal(rows: int, devices: int, generator: torch.Generator) -> torch.Tensor:
    """[rows, devices] random masks with at least one legal device per row."""
    legal = torch.rand(rows, devices, generator=generator) < 0.5
    legal[torch.arange(rows), torch.randint(devices, (rows,), generator=generator)] = True
    return legal


def test_sampling_never_picks_an_illegal_device() -> None:
    gen = torch.Generator().manual_seed(0)
    legal = random_legal(2000, 5, gen)
    # Illegal devices get the highest logits, so a leak through the mask would show.
    logits = torch.randn(2000, 5, generator=gen) + 10.0 * (~legal)
    choice = choose(logits, legal, greedy=False, generator=gen)
    assert bool(legal[torch.arange(2000), choice.actions].all())
    assert torch.isfinite(choice.log_prob).all()


def test_sampling_frequencies_follow_the_masked_softmax() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 9.0, -0.5]]).repeat(20000, 1)
    legal = torch.tensor([[True, True, False, True]]).repeat(20000, 1)
    actions = choose(logits, legal, greedy=False, generator=gen).actions
    freq = torch.bincount(actions, minlength=4).double() / 20000
    expected = torch.softmax(torch.tensor([0.0, 1.0, -0.5], dtype=torch.float64), dim=0)
    assert freq[2] == 0.0
    torch.testing.assert_close(freq[[0, 1, 3]], expected, atol=0.015, rtol=0.0)


def test_same_generator_seed_same_samples() -> None:
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    legal = torch.ones(50, 4, dtype=torch.bool)
    first = choose(logits, legal, False, torch.Generator().manual_seed(7)).actions
    second = choose(logits, legal, False, torch.Generator().manual_seed(7)).actions
    assert torch.equal(first, second)


def test_greedy_takes_the_best_legal_device_over_a_better_illegal_one() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 2.0, 2.5], [-1.0, -3.0, -2.0]])
    legal = torch.tensor([[True, False, True], [False, True, True], [False, True, True]])
    choice = choose(logits, legal, greedy=True)
    assert choice.actions.tolist() == [2, 2, 2]


def test_log_prob_is_the_log_of_the_masked_softmax_hand_computed() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0]], requires_grad=True)
    legal = torch.tensor([[True, False, True]])
    choice = choose(logits, legal, greedy=True)  # device 2: logit 2 beats 1
    assert choice.actions.tolist() == [2]
    p2 = math.exp(2.0) / (math.exp(1.0) + math.exp(2.0))
    assert choice.log_prob.item() == pytest.approx(math.log(p2), rel=1e-6)
    p0 = 1.0 - p2
    entropy = -(p0 * math.log(p0) + p2 * math.log(p2))
    assert choice.entropy.item() == pytest.approx(entropy, rel=1e-6)
    # The illegal device's logit gets no gradient: it is not part of the distribution.
    choice.log_prob.sum().backward()
    assert logits.grad is not None
    assert logits.grad[0, 1].item() == 0.0
    assert logits.grad[0, 0].item() == pytest.approx(-p0, rel=1e-6)


def test_sampled_log_prob_matches_the_action_drawn() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(200, 4, generator=gen)
    legal = random_legal(200, 4, gen)
    choice = choose(logits, legal, greedy=False, generator=gen)
    probs = torch.softmax(logits.masked_fill(~legal, float("-inf")), dim=-1)
    expected = probs[torch.arange(200), choice.actions].log()
    torch.testing.assert_close(choice.log_prob, expected)


@pytest.mark.parametrize("legal_count", [1, 2, 3, 5])
def test_entropy_of_masked_uniform_is_log_k(legal_count: int) -> None:
    legal = torch.zeros(1, 6, dtype=torch.bool)
    legal[0, :legal_count] = True
    logits = torch.zeros(1, 6).masked_fill(~legal, 100.0)  # illegal logits irrelevant
    choice = choose(logits, legal, greedy=False, generator=torch.Generator().manual_seed(0))
    assert choice.entropy.item() == pytest.approx(math.log(legal_count), abs=1e-6)


@pytest.mark.parametrize("num_devices", [1, 2, 5, 8])
def test_policy_logits_shape(num_devices: int) -> None:
    torch.manual_seed(0)
    policy = PolicyNet()
    batch = 3
    logits = policy.logits(
        torch.rand(batch, num_devices, 32),
        torch.rand(batch, num_devices, NUM_COST_FEATURES),
        torch.rand(32),
    )
    assert logits.shape == (batch, num_devices)


def test_policy_logits_are_per_device_and_equivariant() -> None:
    # Each device's logit depends on that device's inputs only, so swapping two devices'
    # inputs swaps their logits.
    torch.manual_seed(0)
    policy = PolicyNet()
    sums, cost, table = torch.rand(2, 4, 32), torch.rand(2, 4, NUM_COST_FEATURES), torch.rand(32)
    perm = [2, 0, 3, 1]
    with torch.no_grad():
        logits = policy.logits(sums, cost, table)
        permuted = policy.logits(sums[:, perm], cost[:, perm], table)
    torch.testing.assert_close(permuted, logits[:, perm])


@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_of_legal_devices_raise(greedy: bool, bad: float) -> None:
    logits = torch.tensor([[0.5, bad, 0.1]])
    with pytest.raises(NonFiniteError, match="scores of the devices are not finite"):
        choose(logits, torch.ones(1, 3, dtype=torch.bool), greedy, torch.Generator())


def test_non_finite_scores_of_illegal_devices_are_ignored() -> None:
    logits = torch.tensor([[0.5, float("nan"), 0.1]])
    choice = choose(logits, torch.tensor([[True, False, True]]), greedy=True)
    assert choice.actions.tolist() == [0]
