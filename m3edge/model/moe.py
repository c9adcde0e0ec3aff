"""MemoryMoELayer: the seed's gate and 64 typed experts, routed by the contract in m3edge/routing/."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from m3edge.config import ModelConfig
from m3edge import routing
from m3edge.model.experts import MemoryExpert


@dataclass
class Routed:
    logits: torch.Tensor  # [N, E] gate + alignment bias
    index: torch.Tensor  # [N, k] selected experts
    weight: torch.Tensor  # [N, k] softmax over the selected logits (0 where capacity dropped)
    keep: torch.Tensor  # [N, k] bool: pairs that are computed (all of them when dropless)
    balance_loss: torch.Tensor


class MemoryMoELayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, e = cfg.d_model, cfg.n_experts
        # The seed's gate: d -> d/2 -> E with LayerNorm + GELU.
        self.gate = nn.Sequential(nn.Linear(d, d // 2), nn.LayerNorm(d // 2), nn.GELU(), nn.Linear(d // 2, e))
        self.experts = nn.ModuleList(MemoryExpert(cfg, cfg.expert_type(i)) for i in range(e))

    def route(self, h: torch.Tensor, bias: torch.Tensor) -> Routed:
        cfg = self.cfg
        logits = self.gate(h) + bias
        values, index = routing.select_topk(logits, cfg.top_k)
        weight = routing.topk_weights(values)
        rule = routing.get(cfg.routing)
        keep = rule.keep_torch(index, weight.detach(), cfg.n_experts, cfg.expert_capacity)
        if rule.drops:
            weight = weight * keep
        loss = routing.balance_loss(logits, index, cfg.n_experts)
        return Routed(logits, index, weight, keep, loss)

    def dispatch(self, h: torch.Tensor, r: Routed) -> torch.Tensor:
        """Every kept (token, expert) pair computed, weighted and summed back per token."""
        k = self.cfg.top_k
        order, counts = routing.group_by_expert(r.index, self.cfg.n_experts)
        flat_w = r.weight.reshape(-1)
        flat_keep = r.keep.reshape(-1)
        out = torch.zeros_like(h)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            pairs = order[start:start + n]
            start += n
            pairs = pairs[flat_keep[pairs]]  # dropped pairs contribute zero: skip their compute
            if pairs.numel() == 0:
                continue
            tokens = pairs // k
            y = self.experts[e](h[tokens]) * flat_w[pairs].unsqueeze(1)
            out = out.index_add(0, tokens, y)
        return out

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, Routed]:
        r = self.route(h, bias)
        return self.dispatch(h, r), r
