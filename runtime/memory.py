"""Long-term memory on the device: the seed's SynapticStorage plus retrieval in numpy.

Retrieval is the reference ContextualAssociator's arithmetic; its learned context encoder ran in the
encoder graph, which hands over unit-length context keys. The store keeps each memory's context key
next to it, so nothing learned runs here.

``save``/``load`` snapshot the store to ``memory_dir/memory.npz``: arrays plus a JSON index in one file,
written to a temporary file, fsynced and renamed, so a crash leaves the old snapshot or the new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from m3edge.errors import BadInput
from m3edge.runtime.routing import select_topk
from m3edge.synaptic import (RECENCY_TAU, RETRIEVAL_TEMPERATURE, Clock, Memory, SynapticStorage,
                             store_experiences, unit)

FUSION = (0.4, 0.4, 0.2)  # temporal, spatial, context: the seed's ContextualAssociator
SNAPSHOT = "memory.npz"
SNAPSHOT_VERSION = 1


def retrieval_scores(query, query_ctx, unit_keys, key_ctx, ages) -> np.ndarray:
    """Fused scores [N, M]; ``unit_keys`` are the stored keys already at unit length (the store keeps them)."""
    a, b, c = FUSION
    temporal = np.exp(-np.maximum(ages, 0) / RECENCY_TAU)[None, :]
    spatial = unit(query) @ unit_keys.T
    return a * temporal + b * spatial + c * (query_ctx @ key_ctx.T)


class LongTermMemory:
    def __init__(self, d_model: int, top_k: int = 5, capacity: int = 10_000, clock: Clock | None = None):
        import time

        self.d_model = d_model
        self.top_k = top_k
        self.storage = SynapticStorage(capacity, clock or time.time)

    def __len__(self) -> int:
        return len(self.storage)

    def retrieve(self, query: np.ndarray, query_ctx: np.ndarray, reconsolidate: bool = True) -> np.ndarray:
        """Context [N, d] for sensory keys [N, m]; zeros when nothing is stored."""
        n = query.shape[0]
        if not len(self.storage):
            return np.zeros((n, self.d_model), dtype=np.float32)
        ids, _, values, ages = self.storage.arrays()
        key_ctx = self.storage.extra_array("context_key")
        fused = retrieval_scores(query, query_ctx, self.storage.unit_keys(), key_ctx, ages).astype(np.float32)
        top, idx = select_topk(fused, min(self.top_k, len(ids)))
        z = top / RETRIEVAL_TEMPERATURE
        w = np.exp(z - z.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        context = np.einsum("nk,nkd->nd", w, values[idx]).astype(np.float32)
        if reconsolidate:
            for row in idx.tolist():
                self.storage.reconsolidate([ids[i] for i in row])
        return context

    def search(self, query: np.ndarray, query_ctx: np.ndarray, k: int) -> list[dict]:
        """Top-k memories by the fused retrieval score, without touching them."""
        if not len(self.storage):
            return []
        ids, _, _, ages = self.storage.arrays()
        key_ctx = self.storage.extra_array("context_key")
        fused = retrieval_scores(query[None], query_ctx[None], self.storage.unit_keys(), key_ctx, ages).astype(np.float32)
        top, idx = select_topk(fused, min(k, len(ids)))
        out = []
        for score, i in zip(top[0].tolist(), idx[0].tolist()):
            m = self.storage.memories[ids[i]]
            out.append({"id": m.id, "score": score, "priority": m.priority, "access_count": m.access_count,
                        "created": m.created, "associations": len(m.associations)})
        return out

    def store(self, key, context_key, value, complexity, surprise) -> list[int]:
        extras = [{"context_key": np.asarray(c, dtype=np.float32)} for c in context_key]
        return store_experiences(self.storage, key, value, complexity, surprise, extras)

    def save(self, memory_dir: str | Path) -> None:
        d = Path(memory_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"{d}: cannot keep memory here ({e.strerror})") from None
        mems = [self.storage.memories[i] for i in sorted(self.storage.memories)]
        meta = {"version": SNAPSHOT_VERSION, "d_model": self.d_model, "count": len(mems),
                "next_id": self.storage._next_id, "last_decay": self.storage._last_decay,
                "memories": [{"id": m.id, "priority": m.priority, "created": m.created, "last_access": m.last_access,
                              "access_count": m.access_count, "memory_type": m.memory_type,
                              "associations": {str(k): v for k, v in m.associations.items()}} for m in mems]}
        arrays = {"keys": np.stack([m.key for m in mems]) if mems else np.zeros((0, 0), np.float32),
                  "values": np.stack([m.value for m in mems]) if mems else np.zeros((0, 0), np.float32),
                  "context_keys": np.stack([m.extra["context_key"] for m in mems]) if mems else np.zeros((0, 0), np.float32)}
        arrays["index"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = d / f".{SNAPSHOT}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / SNAPSHOT)

    def load(self, memory_dir: str | Path) -> None:
        d = Path(memory_dir)
        if d.exists() and not d.is_dir():
            raise BadInput(f"{d}: --memory-dir must be a directory")
        if not (d / SNAPSHOT).is_file():
            return
        try:
            with np.load(d / SNAPSHOT, allow_pickle=False) as z:
                meta = json.loads(z["index"].tobytes())
                keys, values, ctx = z["keys"], z["values"], z["context_keys"]
            if meta.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"snapshot version {meta.get('version')!r}, this m3edge reads {SNAPSHOT_VERSION}")
            if meta["count"] != len(meta["memories"]) or (meta["count"] and len(keys) != meta["count"]):
                raise ValueError("index and arrays disagree")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BadInput(f"{d / SNAPSHOT}: unreadable memory snapshot ({e})") from None
        if meta["d_model"] != self.d_model or (meta["count"] and values.shape[1] != self.d_model):
            raise BadInput(f"{d / SNAPSHOT}: memories of a d_model {meta['d_model']} agent; this bundle has "
                           f"{self.d_model}")
        self.storage.restore(
            [Memory(m["id"], keys[row], values[row], m["priority"], m["created"], m["last_access"], m["access_count"],
                    m["memory_type"], {int(k): v for k, v in m["associations"].items()}, {"context_key": ctx[row]})
             for row, m in enumerate(meta["memories"])], meta["next_id"], meta["last_decay"])
