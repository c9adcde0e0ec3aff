"""The routing contract of DESIGN.md, in torch. ``runtime`` implements the same steps in numpy.

Every step is a stable sort, so ties resolve toward the lower index the same way in torch,
numpy (``argsort(kind="stable")``) and ONNX TopK.
"""

from __future__ import annotations

import torch


def select_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k logits per row, ties toward the lower expert index. Returns (values, indices) [N, k]."""
    values, index = torch.sort(logits, dim=-1, descending=True, stable=True)
    return values[:, :k], index[:, :k]


def topk_weights(values: torch.Tensor) -> torch.Tensor:
    """Softmax over the k selected logits only (the seed's choice), so weights sum to 1 per token."""
    return torch.softmax(values, dim=-1)


def capacity_keep(index: torch.Tensor, weight: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """Which (token, slot) pairs survive the capacity rule. Returns a bool mask [N, k].

    Per expert keep the ``capacity`` pairs with the highest weight; equal weights keep the lower
    token index. Pairs are flattened token-major, so three stable sorts (token, -weight, expert)
    give each pair its rank inside its expert.
    """
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


def group_by_expert(index: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pair ids sorted by expert, token order inside each expert; and the count per expert."""
    flat_e = index.reshape(-1)
    order = torch.sort(flat_e, stable=True).indices
    return order, torch.bincount(flat_e, minlength=n_experts)


def balance_loss(logits: torch.Tensor, index: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch-Transformer load balance: E * sum_e (share of pairs to e) * (mean router prob of e)."""
    counts = torch.bincount(index.reshape(-1), minlength=n_experts).to(logits.dtype)
    share = counts / index.numel()
    prob = torch.softmax(logits, dim=-1).mean(0)
    return n_experts * torch.sum(share * prob)
