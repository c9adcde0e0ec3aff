"""The MemoryDistiller's knowledge graph in numpy: one implementation for the torch agent and the device.

Consolidation (the seed's, docs/seed.md): each candidate memory (priority >= 0.7) not yet consolidated is
distilled (a d -> d map the caller passes in: the torch agent's learned ``Linear + LayerNorm + GELU``); a
distilled vector within cosine ``merge_similarity`` of an existing node is a duplicate and merges into it
(running mean, count + 1); otherwise it becomes a new node, linked to the earlier nodes within cosine
``link_similarity``. Nodes are also linked when their source memories were associated.

Bounded (docs/seed.md): a distilled vector is compared with the nodes of its memory's associations and the
``RECENT_NODES`` newest nodes, not with every node (which grew the cost of a step with the store).

The graph records what changed since ``drain_changes`` was last called, so a durable store writes only that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

RECENT_NODES = 256
MERGE_SIMILARITY = 0.95
LINK_SIMILARITY = 0.5
COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps


@dataclass
class KnowledgeNode:
    vector: np.ndarray
    count: int = 1
    sources: set[int] = field(default_factory=set)


def cosine_to_rows(rows: np.ndarray, v: np.ndarray, rows_sq: np.ndarray | None = None) -> np.ndarray:
    """cos(rows[i], v) as torch's cosine_similarity computes it: x.y / sqrt(max(|x|^2 |y|^2, eps^2)).
    ``rows_sq``: the rows' squared norms (``squared_norms(rows)``) when the caller keeps them."""
    dot = rows @ v
    n2 = (squared_norms(rows) if rows_sq is None else rows_sq) * float(v @ v)
    return dot / np.sqrt(np.maximum(n2, COSINE_EPS ** 2))


def squared_norms(rows: np.ndarray) -> np.ndarray:
    """Per-row x.x; a row's value does not depend on the other rows, so it can be kept per node."""
    return np.einsum("ij,ij->i", rows, rows)


class KnowledgeGraph:
    def __init__(self, merge_similarity: float = MERGE_SIMILARITY, link_similarity: float = LINK_SIMILARITY):
        self.merge_similarity = merge_similarity
        self.link_similarity = link_similarity
        self.nodes: list[KnowledgeNode] = []
        self.edges: set[tuple[int, int]] = set()
        self.node_of: dict[int, int] = {}  # memory id -> node
        self._mat = np.zeros((0, 0), dtype=np.float32)  # node vectors, row-aligned with ``nodes``
        self._sq = np.zeros(0, dtype=np.float32)  # their squared norms, updated with each row
        self._changed_nodes: set[int] = set()
        self._new_edges: set[tuple[int, int]] = set()
        self._new_sources: dict[int, int] = {}
        self._adj: dict[int, set[int]] | None = None  # node -> linked nodes, for reads

    def __len__(self) -> int:
        return len(self.nodes)

    def _set_row(self, i: int, v: np.ndarray) -> None:
        if self._mat.shape[1] != v.shape[0] or i >= len(self._mat):
            grown = np.zeros((max(16, 2 * len(self._mat), i + 1), v.shape[0]), dtype=np.float32)
            sq = np.zeros(len(grown), dtype=np.float32)
            if self._mat.shape[1] == v.shape[0]:
                grown[: len(self._mat)] = self._mat
                sq[: len(self._sq)] = self._sq
            self._mat, self._sq = grown, sq
        self._mat[i] = v
        self._sq[i] = squared_norms(self._mat[i:i + 1])[0]

    def _link(self, a: int, b: int) -> None:
        e = (min(a, b), max(a, b))
        if e not in self.edges:
            self.edges.add(e)
            self._new_edges.add(e)
            if self._adj is not None:
                self._adj.setdefault(a, set()).add(b)
                self._adj.setdefault(b, set()).add(a)

    def neighbours(self, memory_ids: Iterable[int], alive, limit: int) -> list[int]:
        """The graph read on retrieval: the memories consolidated into the nodes of ``memory_ids`` and into
        the nodes linked to those, the ``limit`` most recent still ``alive``, oldest first."""
        if self._adj is None:  # built at the first read, then kept with every link
            self._adj = {}
            for a, b in self.edges:
                self._adj.setdefault(a, set()).add(b)
                self._adj.setdefault(b, set()).add(a)
        nodes = {self.node_of[m] for m in memory_ids if m in self.node_of}
        for k in list(nodes):
            nodes |= self._adj.get(k, set())
        found = sorted({m for k in nodes for m in self.nodes[k].sources if m in alive})
        return found[-limit:]

    def consolidate(self, memories: Iterable, distill: Callable[[np.ndarray], np.ndarray] | None = None) -> int:
        """Fold memories (objects with .id, .value, .associations) into the graph; returns new nodes."""
        todo = [m for m in memories if m.id not in self.node_of]
        if not todo:
            return 0
        values = np.stack([np.asarray(m.value, dtype=np.float32) for m in todo])
        distilled = np.asarray(distill(values) if distill is not None else values, dtype=np.float32)
        added = 0
        for m, v in zip(todo, distilled):
            n = len(self.nodes)
            near = {self.node_of[j] for j in m.associations if j in self.node_of}
            cand = np.array(sorted(near | set(range(max(0, n - RECENT_NODES), n))), dtype=np.int64)
            sims = cosine_to_rows(self._mat[cand], v, self._sq[cand]) if n else np.zeros(0, dtype=np.float32)
            best = int(np.argmax(sims)) if n else -1  # ties: the older node, as over every node
            if n and float(sims[best]) >= self.merge_similarity:
                node = int(cand[best])
                k = self.nodes[node]
                k.vector = (k.vector * k.count + v) / (k.count + 1)
                k.count += 1
                k.sources.add(m.id)
                self._set_row(node, k.vector)
            else:
                node = n
                self.nodes.append(KnowledgeNode(v.copy(), 1, {m.id}))
                self._set_row(node, v)
                added += 1
                for other in cand[sims >= self.link_similarity].tolist():
                    self._link(other, node)
            self._changed_nodes.add(node)
            self.node_of[m.id] = node
            self._new_sources[m.id] = node
            for j in m.associations:
                if j in self.node_of and self.node_of[j] != node:
                    self._link(self.node_of[j], node)
        return added

    def restore(self, nodes: list[KnowledgeNode], edges: Iterable[tuple[int, int]], node_of: dict[int, int]) -> None:
        self.nodes, self.edges, self.node_of = list(nodes), set(edges), dict(node_of)
        self._adj = None
        self._mat, self._sq = np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.float32)
        for i, k in enumerate(self.nodes):
            self._set_row(i, k.vector)
        self.drain_changes()

    def drain_changes(self) -> tuple[set[int], set[tuple[int, int]], dict[int, int]]:
        """(nodes changed, edges added, memory -> node added) since the last call."""
        out = (self._changed_nodes, self._new_edges, self._new_sources)
        self._changed_nodes, self._new_edges, self._new_sources = set(), set(), {}
        return out
