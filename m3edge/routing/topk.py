"""The routing contract's shared steps (docs/design.md, "Routing contract"), numpy and torch side by side.

router logits -> top-k, ties toward the lower expert index -> softmax over the k selected logits. Every step is
a stable sort, so ties resolve the same way in numpy (``argsort(kind="stable")``), torch (``sort(stable=True)``)
and ONNX TopK (what ``select_topk_traceable`` exports to). Each public function takes either numpy arrays or
torch tensors; torch is imported only by the torch implementations, so the runtime stays torch-free.
"""

from __future__ import annotations

import numpy as np


def _is_numpy(a) -> bool:
    return isinstance(a, np.ndarray)


# -- numpy (the runtime) -------------------------------------------------------------------------------------------

def select_topk_numpy(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row, ties toward the lower expert index. Returns (values, indices) [N, k]."""
    index = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(logits, index, axis=-1), index


def topk_weights_numpy(values: np.ndarray) -> np.ndarray:
    """Softmax over the k selected logits."""
    e = np.exp(values - values.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(values.dtype)


def group_by_expert_numpy(index: np.ndarray, n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat pair ids sorted by expert (token order inside each), and the count per expert."""
    flat = index.reshape(-1)
    return np.argsort(flat, kind="stable"), np.bincount(flat, minlength=n_experts)


# -- torch (the reference agent, training) -------------------------------------------------------------------------

def select_topk_torch(logits, k: int):
    """Top-k logits per row, ties toward the lower expert index. Returns (values, indices) [N, k]."""
    import torch

    values, index = torch.sort(logits, dim=-1, descending=True, stable=True)
    return values[:, :k], index[:, :k]


def select_topk_traceable(logits, k: int):
    """The same selection as one ``torch.topk``, which ``torch.onnx.export`` writes as ONNX TopK (ties toward the
    lower index by ONNX's definition): what the monolithic export uses, where a stable sort would not export."""
    import torch

    return torch.topk(logits, k, dim=-1)


def topk_weights_torch(values):
    """Softmax over the k selected logits only (the seed's choice), so weights sum to 1 per token."""
    import torch

    return torch.softmax(values, dim=-1)


def group_by_expert_torch(index, n_experts: int):
    """Flat pair ids sorted by expert, token order inside each expert; and the count per expert."""
    import torch

    flat_e = index.reshape(-1)
    order = torch.sort(flat_e, stable=True).indices
    return order, torch.bincount(flat_e, minlength=n_experts)


def balance_loss(logits, index, n_experts: int):
    """Switch-Transformer load balance (torch, training): E * sum_e (share of pairs to e) * (mean router prob of e)."""
    import torch

    counts = torch.bincount(index.reshape(-1), minlength=n_experts).to(logits.dtype)
    share = counts / index.numel()
    prob = torch.softmax(logits, dim=-1).mean(0)
    return n_experts * torch.sum(share * prob)


# -- either --------------------------------------------------------------------------------------------------------

def select_topk(logits, k: int):
    return select_topk_numpy(logits, k) if _is_numpy(logits) else select_topk_torch(logits, k)


def topk_weights(values):
    return topk_weights_numpy(values) if _is_numpy(values) else topk_weights_torch(values)


def group_by_expert(index, n_experts: int):
    return group_by_expert_numpy(index, n_experts) if _is_numpy(index) else group_by_expert_torch(index, n_experts)
