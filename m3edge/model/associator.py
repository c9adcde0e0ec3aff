"""ContextualAssociator: the second memory level, scoring stored memories against a query.

Three scores fused 0.4 / 0.4 / 0.2 as in the seed, then the top 5:
  temporal  exp(-age / tau)                 recent memories first
  spatial   cos(query, key)                 nearness in the sensory space (a crossbar read)
  context   cos(enc(query), enc(key))       the learned 2-layer context encoder's view
The retrieved context is the softmax(fused / temperature)-weighted sum of the top memories' values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m3edge.routing import select_topk_torch as select_topk
from m3edge.memory.retrieval import FUSION
from m3edge.memory.synaptic import RECENCY_TAU, RETRIEVAL_TEMPERATURE



def fuse_scores(temporal: torch.Tensor, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    a, b, c = FUSION
    return a * temporal + b * spatial + c * context


class ContextualAssociator(nn.Module):
    def __init__(self, mem_dim: int, top_k: int = 5, tau: float = RECENCY_TAU, temperature: float = RETRIEVAL_TEMPERATURE):
        super().__init__()
        self.top_k = top_k
        self.tau = tau  # seconds
        self.temperature = temperature
        self.context_encoder = nn.Sequential(nn.Linear(mem_dim, mem_dim), nn.GELU(), nn.Linear(mem_dim, mem_dim))

    def scores(self, query, keys, ages, spatial=None):
        """Fused scores [N, M]. ``spatial`` may come from a crossbar read instead of exact cosines."""
        if spatial is None:
            spatial = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T
        temporal = torch.exp(-ages.clamp(min=0) / self.tau).unsqueeze(0)
        cq = F.normalize(self.context_encoder(query), dim=-1)
        ck = F.normalize(self.context_encoder(keys), dim=-1)
        return fuse_scores(temporal, spatial, cq @ ck.T)

    def forward(self, query, keys, values, ages, spatial=None):
        """Returns (context [N, d], top indices [N, k'], top scores [N, k']); zeros when nothing is stored."""
        n = query.shape[0]
        if keys.shape[0] == 0:
            empty = torch.zeros(n, 0, dtype=torch.long)
            return query.new_zeros(n, values.shape[-1]), empty, query.new_zeros(n, 0)
        fused = self.scores(query, keys, ages, spatial)
        k = min(self.top_k, keys.shape[0])
        top, idx = select_topk(fused, k)  # ties: the older (lower) slot
        w = torch.softmax(top / self.temperature, dim=-1)
        context = torch.einsum("nk,nkd->nd", w, values[idx])
        return context, idx, top
