"""``capacity``: per expert keep the ``capacity`` pairs with the highest weight (ties: lower token index);
dropped pairs contribute zero. The same rule in torch (the reference agent) and numpy (the runtime).

Pairs are flattened token-major, so three stable sorts (token, -weight, expert) give each pair its rank inside
its expert.
"""

from __future__ import annotations

import numpy as np

from m3edge.routing.base import Rule, register


def capacity_keep_numpy(index: np.ndarray, weight: np.ndarray, n_experts: int, capacity: int) -> np.ndarray:
    """Per expert keep the ``capacity`` heaviest pairs (ties: lower token index). Bool mask [N, k]."""
    flat_e, flat_w = index.reshape(-1), weight.reshape(-1)
    order = np.argsort(-flat_w, kind="stable")
    order = order[np.argsort(flat_e[order], kind="stable")]
    counts = np.bincount(flat_e, minlength=n_experts)
    starts = np.cumsum(counts) - counts
    rank = np.arange(flat_e.size) - starts[flat_e[order]]
    keep = np.zeros(flat_e.size, dtype=bool)
    keep[order] = rank < capacity
    return keep.reshape(index.shape)


def capacity_keep_torch(index, weight, n_experts: int, capacity: int):
    """Which (token, slot) pairs survive the capacity rule. Returns a bool mask [N, k]."""
    import torch

    n, k = index.shape
    flat_e = index.reshape(-1)
    flat_w = weight.reshape(-1)
    order = torch.sort(-flat_w, stable=True).indices
    order = order[torch.sort(flat_e[order], stable=True).indices]
    counts = torch.bincount(flat_e, minlength=n_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n * k) - starts[flat_e[order]]
    keep = torch.zeros(n * k, dtype=torch.bool)
    keep[order] = rank < capacity
    return keep.view(n, k)


@register
class Capacity(Rule):
    name = "capacity"
    drops = True

    def keep_numpy(self, index, weight, n_experts, capacity):
        return capacity_keep_numpy(index, weight, n_experts, capacity)

    def keep_torch(self, index, weight, n_experts, capacity):
        return capacity_keep_torch(index, weight, n_experts, capacity)
