"""MemoryDistiller: consolidates high-priority memories into a knowledge graph.

The learned part is here (a d -> d ``Linear + LayerNorm + GELU``); the graph (merge duplicates within cosine
``merge_similarity`` by running mean, link nodes within ``link_similarity`` or whose source memories were
associated) is ``m3edge.memory.knowledge.KnowledgeGraph``, numpy code the device runtime shares.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from m3edge.memory.knowledge import LINK_SIMILARITY, MERGE_SIMILARITY, KnowledgeGraph, KnowledgeNode  # noqa: F401


class MemoryDistiller(nn.Module):
    def __init__(self, d_model: int, merge_similarity: float = MERGE_SIMILARITY,
                 link_similarity: float = LINK_SIMILARITY):
        super().__init__()
        self.distill = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model), nn.GELU())
        self.graph = KnowledgeGraph(merge_similarity, link_similarity)

    @property
    def nodes(self) -> list[KnowledgeNode]:
        return self.graph.nodes

    @property
    def edges(self) -> set[tuple[int, int]]:
        return self.graph.edges

    @torch.no_grad()
    def distill_array(self, values: np.ndarray) -> np.ndarray:
        """The learned map on a batch of stored values, numpy in and out (what the graph calls)."""
        return self.distill(torch.from_numpy(np.asarray(values, dtype=np.float32))).numpy()

    def consolidate(self, memories) -> int:
        """Fold memories (objects with .id, .value, .associations) into the graph; returns new nodes."""
        return self.graph.consolidate(memories, self.distill_array)
