"""Bounded retrieval candidates: what a query is scored against, at any store size.

The seed's associator scores every stored memory, which costs O(M) per step (and made the old store's links
quadratic). A query here is scored only against
  - the recent FIFO: the last ``RECENT`` memories (the seed's sensory FIFO buffer, as retrieval sees it),
  - exact-context matches: memories whose last ``context`` bytes equal the query's (``factual`` retrieval),
  - suffix matches: memories sharing the query's last ``context // 2`` or ``context // 4`` bytes, so a similar
    context seen long ago (beyond the FIFO) is still found,
  - scene matches: the most recent memories stored under the query's scene string (``contextual_match``).
Each hash bucket keeps its ``BUCKET`` most recent ids, so a query has at most RECENT + 4 * BUCKET candidates
whatever the store holds (100,000 memories or 10). Hash lists are pruned lazily: a forgotten id is dropped when
its bucket is next read.
"""

from __future__ import annotations

import functools

import numpy as np

RECENT = 1024  # the FIFO every query scans (training's in-stream bank has the same size)
BUCKET = 32  # ids kept per exact / suffix / scene bucket (the most recent)
_P = 0x100000001B3  # odd multiplier of the polynomial hash (FNV's prime)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64's finaliser


def suffix_orders(context: int) -> tuple[int, ...]:
    """Context lengths hashed: the full window (exact match) and two shorter suffixes, longest first (always
    three, so every memory has three hash columns; a short context repeats a length)."""
    return tuple(max(1, context // f) for f in (1, 2, 4))


@functools.lru_cache(maxsize=None)
def _power_matrix(k: int, orders: tuple[int, ...]) -> np.ndarray:
    """[k, len(orders)] uint64: column j weighs the last ``orders[j]`` bytes of a k-byte window by P^(n-1-i)
    (zero before them), so one product hashes every order at once."""
    m = np.zeros((k, len(orders)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j, order in enumerate(orders):
            p = np.uint64(1)
            for i in range(k - 1, k - order - 1, -1):
                m[i, j] = p
                p = p * np.uint64(_P)
    m.flags.writeable = False
    return m


def window_hashes(windows: np.ndarray, orders: tuple[int, ...]) -> np.ndarray:
    """[N, len(orders)] int64: a 64-bit hash of each window's last n bytes, for every n in ``orders``
    (polynomial in the bytes, wrapping mod 2^64, then splitmix64's finaliser). Equal contexts hash equal; two
    different ones collide with probability about 2^-64."""
    w = np.ascontiguousarray(windows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = w @ _power_matrix(w.shape[1], tuple(orders)) + np.asarray(orders, dtype=np.uint64)
        h ^= h >> np.uint64(30)
        h *= _MIX1
        h ^= h >> np.uint64(27)
        h *= _MIX2
        h ^= h >> np.uint64(31)
    out = h.view(np.int64)
    out[out == 0] = 1  # 0 means "no context" (a memory stored without hashes)
    return out


class ContextIndex:
    """Hash buckets (per order, per scene) of the most recent ids; the FIFO is the store's last rows."""

    def __init__(self, n_orders: int):
        self.buckets: list[dict[int, tuple]] = [{} for _ in range(n_orders)]
        self.scenes: dict[str, tuple] = {}

    def add(self, mid: int, hashes, scene: str = "") -> None:
        # Buckets are tuples, not deques: a tuple of ints leaves the garbage collector's tracking after one
        # pass, and at 100,000 memories ~140,000 deques made every full collection cost ~0.1 s more.
        if hashes is not None and len(hashes) and not self.buckets:
            self.buckets = [{} for _ in hashes]
        for table, h in zip(self.buckets, () if hashes is None else hashes):
            if h:
                _append(table, int(h), mid)
        if scene:
            _append(self.scenes, scene, mid)

    def exact(self, hashes, alive) -> list[int]:
        """Ids stored after exactly this context (the full-window hash), oldest first."""
        return self._read(self.buckets[0], int(hashes[0]), alive) if self.buckets else []

    def suffix(self, hashes, alive) -> list[int]:
        return [i for table, h in zip(self.buckets[1:], hashes[1:]) for i in self._read(table, int(h), alive)]

    def scene(self, scene: str, alive) -> list[int]:
        return self._read(self.scenes, scene, alive) if scene else []

    @staticmethod
    def _read(table: dict, h, alive) -> list[int]:
        q = table.get(h)
        if not q:
            return []
        ids = [i for i in q if i in alive]
        if len(ids) < len(q):  # prune forgotten ids
            table[h] = tuple(ids)
        return ids


def _append(table: dict, key, mid: int) -> None:
    """Append to a bucket, keeping its BUCKET most recent ids."""
    table[key] = (table.get(key, ()) + (mid,))[-BUCKET:]
