"""MemoryExpert by memory type. Every expert maps rows [n, d] -> [n, d] independently.

Row independence is what makes static capacity buckets safe: a padded zero row never changes a
real one. So the sequence experts (BiLSTM, TransformerEncoder) see each token as a sequence of
length one (see docs/seed.md).
"""

from __future__ import annotations

import torch
from torch import nn

from m3edge.config import ModelConfig


class EpisodicExpert(nn.Module):
    """BiLSTM; its two directions give 1.5 d features, projected back to d (a seed fix)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.lstm = nn.LSTM(cfg.d_model, cfg.lstm_hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * cfg.lstm_hidden, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.unsqueeze(1))
        return self.proj(out.squeeze(1))


class SemanticExpert(nn.Module):
    """One TransformerEncoder layer, feed-forward width 1.5 d."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.expert_hidden, dropout=0.0,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.unsqueeze(1)).squeeze(1)


class EmotionalExpert(nn.Module):
    """SiLU MLP followed by LayerNorm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.d_model, cfg.expert_hidden), nn.SiLU(),
                                 nn.Linear(cfg.expert_hidden, cfg.d_model), nn.LayerNorm(cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPExpert(nn.Module):
    """GELU MLP: procedural, spatial and temporal experts."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.d_model, cfg.expert_hidden), nn.GELU(),
                                 nn.Linear(cfg.expert_hidden, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


EXPERT_KINDS = {"episodic": EpisodicExpert, "semantic": SemanticExpert, "emotional": EmotionalExpert}


def MemoryExpert(cfg: ModelConfig, memory_type: str) -> nn.Module:
    """The seed's factory: the expert class for a memory type (MLP for the rest)."""
    return EXPERT_KINDS.get(memory_type, MLPExpert)(cfg)
