"""Evaluation of a torch agent on bytes: bits per byte, next-byte top-1 accuracy, expert usage.

Stateless by default (no long-term memory), so the number depends only on weights and text.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from m3edge.data import bigram_bits_per_byte, unigram_bits_per_byte, windows


def usage_entropy(counts: np.ndarray) -> float:
    """Entropy in bits of the share of routed pairs per expert (log2 E when perfectly balanced)."""
    p = counts / max(1, counts.sum())
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


@torch.no_grad()
def evaluate(agent, text: np.ndarray, batch: int = 4096, max_bytes: int | None = None) -> dict:
    cfg = agent.cfg
    agent.eval()
    n = len(text) if max_bytes is None else min(len(text), max_bytes)
    nll, correct = 0.0, 0
    usage = np.zeros((cfg.n_layers, cfg.n_experts), dtype=np.int64)
    for start in range(0, n, batch):
        pos = np.arange(start, min(n, start + batch))
        out = agent(torch.from_numpy(windows(text, pos, cfg.context)))
        target = torch.from_numpy(text[pos].astype(np.int64))
        nll += float(torch.nn.functional.cross_entropy(out.logits, target, reduction="sum"))
        correct += int((out.logits.argmax(-1) == target).sum())
        for layer, r in enumerate(out.routed):
            usage[layer] += np.bincount(r.index[r.keep].numpy(), minlength=cfg.n_experts)
    return {
        "bytes": int(n),
        "bits_per_byte": nll / n / math.log(2),
        "top1_accuracy": correct / n,
        "experts_used": [int((u > 0).sum()) for u in usage],
        "expert_usage_entropy": [usage_entropy(u) for u in usage],
        "max_usage_entropy": math.log2(cfg.n_experts),
        "expert_usage": usage.tolist(),
    }


def baselines(train: np.ndarray, test: np.ndarray) -> dict:
    return {"unigram_bits_per_byte": unigram_bits_per_byte(train, test),
            "bigram_bits_per_byte": bigram_bits_per_byte(train, test)}
