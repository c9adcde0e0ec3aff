"""MemoryExpertAlignment: how memory and input bias the router toward memory-typed experts.

The seed computes per-task preferences over memory types but never uses them, and indexes them as if
there were 6 experts. Here (docs/seed.md): a type preference p = softmax(MLP([x; memory])) over the six
memory types, re-weighted by the task's preferences over them (the seed's task_type), and the router bias is p @ A, where A [6, E] starts as ``strength`` times the one-hot
membership of expert e in type e % 6 and is learned. Any expert count works.
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

    def forward(self, x: torch.Tensor, memory: torch.Tensor, task: torch.Tensor | None = None):
        """(router bias [N, E], type scores [N, 6]). ``task`` [N, 6] is the log of the task's preferences over
        memory types relative to uniform (``m3edge.memory.retrieval.task_vector``; zeros for general):
        softmax(scores) = p * pref / sum(p * pref). A memory's type is argmax(scores). Scores, not the softmax,
        are the graph's output: an INT8 TFLite softmax may only output at scale 1/256."""
        scores = self.preference(torch.cat([x, memory], dim=-1))
        if task is not None:
            scores = scores + task
        return torch.softmax(scores, dim=-1) @ self.type_to_expert, scores
