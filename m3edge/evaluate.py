"""Evaluation on bytes: bits per byte, next-byte top-1 accuracy, expert usage.

One numpy loop serves the torch agent and a bundle: each side only provides
``forward(windows) -> (logits [N, 256], [selected experts per layer])``.
``evaluate`` is stateless (no long-term memory), so the number depends only on the weights and the text.
``evaluate_online`` runs with memory as ``generate`` does: each byte is predicted, then stored, in chunks whose
rows also retrieve the chunk's earlier rows, so every byte is predicted from everything before it.
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


def evaluate_with(forward, cfg, text: np.ndarray, batch: int = 4096, max_bytes: int | None = None,
                  progress=None) -> dict:
    """``progress(n)``, if given: n more bytes scored."""
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
        if progress:
            progress(len(pos))
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


def baselines(train, test: np.ndarray) -> dict:
    """Unigram and bigram bits/byte on ``test``, fitted on ``train`` (a text or its ``data.ByteCounts``)."""
    return {"unigram_bits_per_byte": unigram_bits_per_byte(train, test),
            "bigram_bits_per_byte": bigram_bits_per_byte(train, test)}


def nll_bits(logits: np.ndarray, target: np.ndarray) -> tuple[float, int]:
    """(summed code length in bits, correct top-1) of next-byte logits or log-probs."""
    z = logits.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    nll = -float((z[np.arange(len(target)), target] - np.log(np.exp(z).sum(-1))).sum()) / math.log(2)
    return nll, int((logits.argmax(-1) == target).sum())


def torch_online(agent, mode: str = "hybrid", task: str = "general"):
    """chunk(windows, next_bytes) -> log-probs, storing the chunk afterwards (the torch agent's memory)."""
    import torch

    def chunk(w, nb):
        w, nb = torch.from_numpy(w), torch.from_numpy(nb)
        out = agent.step(w, True, mode, task, next_bytes=nb)
        agent.remember(out, w, nb, task)
        return out.logits.numpy()

    return chunk, lambda: len(agent.memory.storage)


def evaluate_online_with(chunk_fn, count_fn, cfg, text: np.ndarray, chunk: int = 256,
                         max_bytes: int | None = None, progress=None) -> dict:
    n = len(text) if max_bytes is None else min(len(text), max_bytes)
    bits, correct = 0.0, 0
    for start in range(0, n, chunk):
        pos = np.arange(start, min(n, start + chunk))
        target = text[pos].astype(np.int64)
        b, c = nll_bits(chunk_fn(windows(text, pos, cfg.context), target), target)
        bits, correct = bits + b, correct + c
        if progress:
            progress(len(pos))
    return {"bytes": int(n), "bits_per_byte": bits / n, "top1_accuracy": correct / n, "memories": int(count_fn())}


def evaluate_online(agent, text: np.ndarray, chunk: int = 256, max_bytes: int | None = None, mode: str = "hybrid",
                    task: str = "general") -> dict:
    """Online bits/byte with memory (a fresh store at the seed's capacity) beside the same model without it."""
    agent.memory.reset(capacity=100_000)
    with_memory = evaluate_online_with(*torch_online(agent, mode, task), agent.cfg, text, chunk, max_bytes)
    without = evaluate(agent, text, max_bytes=max_bytes)
    agent.memory.reset()
    return dict(with_memory, bits_per_byte_without=without["bits_per_byte"],
                top1_accuracy_without=without["top1_accuracy"])
