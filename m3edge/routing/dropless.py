"""``dropless`` (the default): every (token, expert) pair is computed. The runtime runs each expert's tokens in
chunks of its static capacity buckets, padding with zero rows it discards, so no pair is ever dropped."""

from __future__ import annotations

import numpy as np

from m3edge.routing.base import Rule, register


@register
class Dropless(Rule):
    name = "dropless"
    drops = False

    def keep_numpy(self, index, weight, n_experts, capacity):
        return np.ones_like(index, dtype=bool)

    def keep_torch(self, index, weight, n_experts, capacity):
        import torch

        return torch.ones_like(index, dtype=torch.bool)
