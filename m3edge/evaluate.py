"""Evaluation on bytes: bits per byte, next-byte top-1 accuracy, expert usage.

One numpy loop serves the torch agent and a bundle: each side only provides
``forward(windows) -> (logits [N, 256], [selected experts per layer])``.
Stateless (no long-term memory), so the number depends only on the weights and the text.
"""

from __future__ import annotations

import math

import numpy as np

from m3edge.data import bigram_bits_per_byte, unigram_bits_per_byte, windows


def usage_entropy(counts: np.ndarray) -> float:
    """Entropy in bits of the share of routed pairs per expert (log2 E when perfectly balanced)."""
    p = counts / max(1, counts.sum())
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def torch_forward(agent):
    import torch

    @torch.no_grad()
    def forward(w):
        out = agent(torch.from_numpy(w))
        return out.logits.numpy(), [r.index[r.keep].numpy() for r in out.routed]

    agent.eval()
    return forward


def bundle_forward(executor):
    def forward(w):
        f = executor.forward(w)
        return f.logits, [r.index[r.keep] for r in f.routing]

    return forward


def evaluate_with(forward, cfg, text: np.ndarray, batch: int = 4096, max_bytes: int | None = None) -> dict:
    n = len(text) if max_bytes is None else min(len(text), max_bytes)
    nll, correct = 0.0, 0
    usage = np.zeros((cfg.n_layers, cfg.n_experts), dtype=np.int64)
    for start in range(0, n, batch):
        pos = np.arange(start, min(n, start + batch))
        logits, selected = forward(windows(text, pos, cfg.context))
        target = text[pos].astype(np.int64)
        z = logits.astype(np.float64)
        z -= z.max(-1, keepdims=True)
        nll -= float((z[np.arange(len(pos)), target] - np.log(np.exp(z).sum(-1))).sum())
        correct += int((logits.argmax(-1) == target).sum())
        for layer, idx in enumerate(selected):
            usage[layer] += np.bincount(idx.reshape(-1), minlength=cfg.n_experts)
    return {
        "bytes": int(n),
        "bits_per_byte": nll / n / math.log(2),
        "top1_accuracy": correct / n,
        "experts_used": [int((u > 0).sum()) for u in usage],
        "expert_usage_entropy": [usage_entropy(u) for u in usage],
        "max_usage_entropy": math.log2(cfg.n_experts),
        "expert_usage": usage.tolist(),
    }


def evaluate(agent, text: np.ndarray, batch: int = 4096, max_bytes: int | None = None) -> dict:
    return evaluate_with(torch_forward(agent), agent.cfg, text, batch, max_bytes)


def baselines(train: np.ndarray, test: np.ndarray) -> dict:
    return {"unigram_bits_per_byte": unigram_bits_per_byte(train, test),
            "bigram_bits_per_byte": bigram_bits_per_byte(train, test)}
