"""SensoryBuffer: the first memory level, compressing d -> 512 -> 256 -> 128 with a complexity gate."""

from __future__ import annotations

import torch
from torch import nn


class SensoryBuffer(nn.Module):
    def __init__(self, in_dim: int, dims: tuple[int, ...] = (512, 256, 128)):
        super().__init__()
        layers, prev = [], in_dim
        for width in dims:
            layers += [nn.Linear(prev, width), nn.LayerNorm(width), nn.GELU()]
            prev = width
        self.compress = nn.Sequential(*layers)
        # How much this input deserves attention and storage: feeds experience importance.
        self.complexity = nn.Sequential(nn.Linear(prev, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.compress(x)
        return z, self.complexity(z)
