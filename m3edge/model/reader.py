"""MemoryReader: what is retrieved reaches the next-byte distribution (a kNN-LM mix at the head).

  w      = softmax over the valid retrieved memories of (s * score + b * exact)      learned s, b
  p_mem  = sum_r w_r onehot(next_byte_r)                                             what followed them
  lam    = sigmoid(MLP(features)) if anything was retrieved else 0                    learned gate
  out    = log((1 - lam) softmax(logits) + lam p_mem + 1e-9)                          log-probabilities

The features say how far to trust memory for this token: the best score, whether an exact context match was
found, how many memories were valid, how peaked p_mem and the model are, and how much they agree. Anchors:
kNN-LM (Khandelwal et al. 2020: interpolate a datastore's next-token distribution with the LM's), the
continuous cache (Grave et al. 2017: the same over the recent history), and their learned-gate variants
(docs/seed.md). Every op is elementwise, a reduction or a comparison, so it exports to ONNX and TFLite as is.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FEATURES = 8
FLOOR = 1e-9  # keeps log() finite where both distributions are 0 (costs < 1e-6 bits)


class MemoryReader(nn.Module):
    def __init__(self, vocab: int = 256, hidden: int = 32):
        super().__init__()
        self.vocab = vocab
        self.sharpness = nn.Parameter(torch.tensor(math.log(20.0)))  # fused scores live in ~[0, 1]
        self.exact_bonus = nn.Parameter(torch.tensor(2.0))
        self.gate = nn.Sequential(nn.Linear(FEATURES, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.constant_(self.gate[-1].bias, -2.0)  # start by trusting the model

    def forward(self, logits, scores, next_bytes, exact, valid):
        """logits [N, V]; scores, exact, valid [N, R] float; next_bytes [N, R] int64 -> log-probs [N, V]."""
        z = scores * torch.exp(self.sharpness) + exact * self.exact_bonus
        z = torch.where(valid > 0, z, torch.full_like(z, -1e4))
        w = torch.softmax(z, dim=-1) * valid
        onehot = (next_bytes.unsqueeze(-1) == torch.arange(self.vocab, device=logits.device)).to(logits.dtype)
        p_mem = (w.unsqueeze(-1) * onehot).sum(1)
        p_lm = torch.softmax(logits, dim=-1)
        any_valid = valid.max(dim=-1, keepdim=True).values
        logp_lm = torch.log_softmax(logits, dim=-1)
        feats = torch.cat([
            (scores * valid - (1 - valid)).max(dim=-1, keepdim=True).values,  # best score (-1 if none)
            (exact * valid).max(dim=-1, keepdim=True).values,
            valid.mean(dim=-1, keepdim=True),
            p_mem.max(dim=-1, keepdim=True).values,
            p_lm.max(dim=-1, keepdim=True).values,
            -(p_lm * logp_lm).sum(-1, keepdim=True) / math.log(self.vocab),  # model entropy, 0..1
            (p_mem * p_lm).sum(-1, keepdim=True),  # agreement
            w.max(dim=-1, keepdim=True).values,
        ], dim=-1)
        lam = torch.sigmoid(self.gate(feats)) * any_valid
        return torch.log((1 - lam) * p_lm + lam * p_mem + FLOOR)
