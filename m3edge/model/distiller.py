"""MemoryDistiller: consolidates high-priority memories into a knowledge graph.

Each candidate is distilled (a learned d -> d map); a distilled vector within ``merge_similarity`` of
an existing node is a duplicate and merges into it (running mean, count + 1); otherwise it becomes a
new node. Nodes are linked when similar, or when their source memories were associated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KnowledgeNode:
    vector: torch.Tensor
    count: int = 1
    sources: set[int] = field(default_factory=set)


class MemoryDistiller(nn.Module):
    def __init__(self, d_model: int, merge_similarity: float = 0.95, link_similarity: float = 0.5):
        super().__init__()
        self.distill = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model), nn.GELU())
        self.merge_similarity = merge_similarity
        self.link_similarity = link_similarity
        self.nodes: list[KnowledgeNode] = []
        self.edges: set[tuple[int, int]] = set()
        self._node_of: dict[int, int] = {}  # memory id -> node

    @torch.no_grad()
    def consolidate(self, memories) -> int:
        """Fold memories (objects with .id, .value, .associations) into the graph; returns new nodes."""
        added = 0
        for m in memories:
            if m.id in self._node_of:
                continue
            v = self.distill(torch.as_tensor(m.value).unsqueeze(0)).squeeze(0)
            node = self._nearest(v, self.merge_similarity)
            if node is None:
                self.nodes.append(KnowledgeNode(v.clone(), 1, {m.id}))
                node = len(self.nodes) - 1
                added += 1
                for other in range(node):
                    if F.cosine_similarity(v, self.nodes[other].vector, dim=0) >= self.link_similarity:
                        self.edges.add((other, node))
            else:
                n = self.nodes[node]
                n.vector = (n.vector * n.count + v) / (n.count + 1)
                n.count += 1
                n.sources.add(m.id)
            self._node_of[m.id] = node
            for j in m.associations:
                if j in self._node_of and self._node_of[j] != node:
                    self.edges.add(tuple(sorted((self._node_of[j], node))))
        return added

    def _nearest(self, v: torch.Tensor, threshold: float):
        if not self.nodes:
            return None
        sims = F.cosine_similarity(torch.stack([n.vector for n in self.nodes]), v.unsqueeze(0), dim=1)
        best = int(torch.argmax(sims))
        return best if float(sims[best]) >= threshold else None
