"""The policy network (METHOD.md section 3) and the one masked-sampling helper.

For the table being placed, every device gets a logit from three parts:

- the SUM of the policy's own encodings of the tables already on the device;
- a cost-feature encoding of what the cost network predicts for the device (forward,
  backward and communication cost now, the same if the table joined it, and the
  largest current cost of each kind over all devices, a MAX reduction);
- the encoding of the table being placed (the original code left it out, so the policy
  could not tell a huge table from a tiny one).

A softmax over the devices with room gives the action distribution; any number of
devices fits. Beyond the paper's 3-number cost feature, the "if the table joined" and
"largest now" costs let the policy see the consequence of each action directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dreamshard.errors import InputError
from dreamshard.method.costnet import DEVICE_HEADS, TableEncoder, mlp

#: Cost features per device: now (3), if the table joined (3), largest now over devices (3).
NUM_COST_FEATURES = 3 * len(DEVICE_HEADS)


class PolicyNet(nn.Module):
    """Table encoder (21 -> 128 -> 32), cost-feature encoder (9 -> 64 -> 32), logit head."""

    def __init__(self, hidden: int = 128, embed: int = 32, cost_hidden: int = 64) -> None:
        super().__init__()
        self.encoder = TableEncoder(hidden, embed)
        self.cost_encoder = mlp([NUM_COST_FEATURES, cost_hidden, embed], final_relu=True)
        self.head = mlp([3 * embed, cost_hidden, 1], final_relu=False)

    def logits(
        self, device_sums: torch.Tensor, cost_features: torch.Tensor, table: torch.Tensor
    ) -> torch.Tensor:
        """One logit per device.

        Args:
            device_sums: [B, D, E] sums of the policy encodings of each device's tables.
            cost_features: [B, D, 9] cost-network predictions (no gradient needed).
            table: [E] policy encoding of the table being placed.

        Returns:
            [B, D] logits (unmasked).
        """
        cost = self.cost_encoder(cost_features)
        placed = table.expand(device_sums.shape[0], device_sums.shape[1], -1)
        joint = torch.cat([device_sums, cost, placed], dim=-1)
        return self.head(joint).squeeze(-1)  # type: ignore[no-any-return]


@dataclass
class Choice:
    """Actions picked for a batch of episodes at one step.

    Attributes:
        actions: [B] chosen device per episode.
        log_prob: [B] log-probability of the action under the MASKED distribution.
        entropy: [B] entropy of the masked distribution.
    """

    actions: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor


class NonFiniteError(InputError):
    """The policy scored a device inf or NaN: its weights diverged in training, or a
    task is beyond what the networks can score."""


#: Relative tolerance under which greedy inference treats two logits as equal.
GREEDY_TIE_TOLERANCE = 1e-5


def choose(
    logits: torch.Tensor,
    legal: torch.Tensor,
    greedy: bool,
    generator: torch.Generator | None = None,
) -> Choice:
    """Pick devices from logits restricted to legal ones (rollout, update and inference).

    Illegal devices get the lowest finite logit, so their probability is exactly zero
    and the log-probabilities and entropies used by the update are those of the same
    masked distribution the action was drawn from (the original code computed them
    over all devices).

    Args:
        logits: [B, D].
        legal: [B, D] bool; at least one True per row.
        greedy: Take the most likely legal device instead of sampling.
        generator: Random source for sampling (seeded by the caller).

    Raises:
        NonFiniteError: A legal device's logit is inf or NaN (no distribution to draw
            from, and greedy would silently take device 0).
    """
    masked = logits.masked_fill(~legal, torch.finfo(logits.dtype).min)
    if not bool(torch.isfinite(masked).all()):
        raise NonFiniteError("the policy's scores of the devices are not finite")
    log_probs = torch.log_softmax(masked, dim=-1)
    probs = log_probs.exp()
    if greedy:
        # Lowest-index device among those tied with the best up to float noise: devices
        # in the same state (e.g. two empty ones) differ only in rounding, which varies
        # with the batch shape, and must not decide the placement.
        best = masked.max(dim=-1, keepdim=True).values
        tied = masked >= best - GREEDY_TIE_TOLERANCE * (1.0 + best.abs())
        actions = tied.int().argmax(dim=-1)
    else:
        actions = torch.multinomial(probs.detach(), 1, generator=generator).squeeze(-1)
    log_prob = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(probs * log_probs.masked_fill(~legal, 0.0)).sum(dim=-1)
    return Choice(actions=actions, log_prob=log_prob, entropy=entropy)
