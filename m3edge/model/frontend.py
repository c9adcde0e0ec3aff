"""The byte front end (an addition to the seed, which leaves its input open).

Each token sees the last ``context`` bytes, left-padded with byte 0 at the start of a text: an
embedding plus a learned position per slot, flattened and projected to d. This is a causal
convolution evaluated at one position, so every token is a row of its own: no state between steps,
and static token buckets on the device.
"""

from __future__ import annotations

import torch
from torch import nn

from m3edge.config import ModelConfig


class ByteFrontEnd(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab, d)
        self.position = nn.Parameter(torch.randn(cfg.context, d) * 0.02)
        self.proj = nn.Linear(cfg.context * d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        e = self.embed(windows) + self.position
        return self.norm(self.proj(e.flatten(1)))
