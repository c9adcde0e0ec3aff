"""MemoryExpertAlignment: how memory and input bias the router toward memory-typed experts.

The seed computes per-task preferences over memory types but never uses them, and indexes them as if
there were 6 experts. Here (docs/seed.md): a type preference p = softmax(MLP([x; memory])) over the six
memory types, re-weighted by the task's preferences over them (the seed's task_type), and the router bias is
b = p @ A, where A [6, E] starts as ``strength`` times the one-hot membership of expert e in type e % 6 and is
learned. Any expert count works.

The seed's expert co-occurrence matrix: ``co_occurrence`` [E, E] counts how often two experts are picked for
the same token (any layer), accumulated during training (``observe``) and saved with the checkpoint. The bias
spreads along it, ``b + beta * b @ C`` with C its row-normalised form and beta learned, so a preference for an
expert also lifts the experts that fire with it. C is a constant of the alignment graph: the runtime and the
export need nothing new.
"""

from __future__ import annotations

import torch
from torch import nn

from m3edge.config import MEMORY_TYPES, ModelConfig


class MemoryExpertAlignment(nn.Module):
    def __init__(self, cfg: ModelConfig, strength: float = 1.0):
        super().__init__()
        d, t = cfg.d_model, len(MEMORY_TYPES)
        self.preference = nn.Sequential(nn.Linear(2 * d, d // 2), nn.GELU(), nn.Linear(d // 2, t))
        membership = torch.zeros(t, cfg.n_experts)
        membership[torch.arange(cfg.n_experts) % t, torch.arange(cfg.n_experts)] = strength
        self.type_to_expert = nn.Parameter(membership)
        self.register_buffer("co_occurrence", torch.zeros(cfg.n_experts, cfg.n_experts))
        self.co_weight = nn.Parameter(torch.zeros(()))

    def co_matrix(self) -> torch.Tensor:
        """Row-normalised co-occurrence (rows of an expert never seen are 0)."""
        c = self.co_occurrence
        return c / c.sum(-1, keepdim=True).clamp_min(1.0)

    @torch.no_grad()
    def observe(self, index: torch.Tensor) -> None:
        """Count the expert pairs picked together for each token: ``index`` [N, k] from one layer's routing."""
        e = self.co_occurrence.shape[0]
        onehot = torch.zeros(index.shape[0], e, device=index.device)
        onehot.scatter_(1, index, 1.0)
        pairs = onehot.T @ onehot
        self.co_occurrence += pairs - torch.diag(torch.diagonal(pairs))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, task: torch.Tensor | None = None):
        """(router bias [N, E], type scores [N, 6]). ``task`` [N, 6] is the log of the task's preferences over
        memory types relative to uniform (``m3edge.memory.retrieval.task_vector``; zeros for general):
        softmax(scores) = p * pref / sum(p * pref). A memory's type is argmax(scores). Scores, not the softmax,
        are the graph's output: an INT8 TFLite softmax may only output at scale 1/256."""
        scores = self.preference(torch.cat([x, memory], dim=-1))
        if task is not None:
            scores = scores + task
        bias = torch.softmax(scores, dim=-1) @ self.type_to_expert
        return bias + self.co_weight * (bias @ self.co_matrix()), scores
