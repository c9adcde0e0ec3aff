"""DESIGN.md's routing contract in numpy: the same stable sorts as ``m3edge.model.routing``."""

from __future__ import annotations

import numpy as np


def select_topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row, ties toward the lower expert index. Returns (values, indices) [N, k]."""
    index = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(logits, index, axis=-1), index


def topk_weights(values: np.ndarray) -> np.ndarray:
    """Softmax over the k selected logits."""
    e = np.exp(values - values.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(values.dtype)


def capacity_keep(index: np.ndarray, weight: np.ndarray, n_experts: int, capacity: int) -> np.ndarray:
    """Per expert keep the ``capacity`` heaviest pairs (ties: lower token index). Bool mask [N, k]."""
    flat_e, flat_w = index.reshape(-1), weight.reshape(-1)
    order = np.argsort(-flat_w, kind="stable")
    order = order[np.argsort(flat_e[order], kind="stable")]
    counts = np.bincount(flat_e, minlength=n_experts)
    starts = np.cumsum(counts) - counts
    rank = np.arange(flat_e.size) - starts[flat_e[order]]
    keep = np.zeros(flat_e.size, dtype=bool)
    keep[order] = rank < capacity
    return keep.reshape(index.shape)


def group_by_expert(index: np.ndarray, n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat pair ids sorted by expert (token order inside each), and the count per expert."""
    flat = index.reshape(-1)
    return np.argsort(flat, kind="stable"), np.bincount(flat, minlength=n_experts)


def plan_chunks(n: int, buckets: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """Split n rows into (rows, bucket) chunks, padding the last with zero rows.

    The smallest bucket that holds the rest is used when at least half of it is real rows; otherwise
    the largest bucket that the rows fill goes first. Padding never costs more than the real work.
    """
    buckets = sorted(buckets)
    chunks = []
    while n > 0:
        fit = next((b for b in buckets if b >= n), None)
        if fit is not None and (fit <= 2 * n or fit == buckets[0]):
            chunks.append((n, fit))
            break
        full = max(b for b in buckets if b <= n)
        chunks.append((full, full))
        n -= full
    return chunks
