"""M3MemorySystem: the three memory levels wired together.

  level 1  SensoryBuffer         compresses a state into a key (and a complexity in [0, 1])
  level 2  ContextualAssociator  scores stored memories against the key; top 5 -> a context vector
  level 3  SynapticStorage       the long-term store (keys held by a ResistiveArraySimulator for the
                                 spatial score), consolidated by the MemoryDistiller

Experiences are (state, next byte) pairs. The seed fed the sensory buffer d-sized states on retrieval
and (d + vocab)-sized experiences on storage; here ``memory_encoder`` (unused in the seed) maps the
experience to d for the stored value, and keys always come from the d-sized state (docs/seed.md).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from m3edge.config import ModelConfig
from m3edge.model.associator import ContextualAssociator
from m3edge.model.crossbar import ResistiveArraySimulator
from m3edge.model.distiller import MemoryDistiller
from m3edge.model.sensory import SensoryBuffer
from m3edge.synaptic import IMPORTANCE_WEIGHTS, Clock, SynapticStorage, experience_importance  # noqa: F401
from m3edge.synaptic import store_experiences, unit


class M3MemorySystem(nn.Module):
    def __init__(self, cfg: ModelConfig, capacity: int = 10_000, clock: Clock = time.time, device: str = "ideal"):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.sensory = SensoryBuffer(d, cfg.sensory_dims)
        self.associator = ContextualAssociator(cfg.memory_dim, cfg.memory_top_k)
        self.memory_encoder = nn.Sequential(nn.Linear(d + cfg.vocab, d), nn.LayerNorm(d), nn.GELU())
        self.distiller = MemoryDistiller(d)
        self.storage = SynapticStorage(capacity, clock)
        self.crossbar = ResistiveArraySimulator(device)

    def encode_experience(self, state: torch.Tensor, next_byte: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(next_byte, self.cfg.vocab).to(state.dtype)
        return self.memory_encoder(torch.cat([state, onehot], dim=-1))

    def retrieve_from(self, query, keys, values, ages, spatial=None):
        """Differentiable retrieval against given memories (training uses an in-batch bank)."""
        return self.associator(query, keys, values, ages, spatial)

    @torch.no_grad()
    def retrieve(self, query: torch.Tensor, reconsolidate: bool = True) -> torch.Tensor:
        """Context [N, d] from long-term memory for sensory keys [N, m]; zeros when empty."""
        if len(self.storage) == 0:
            return query.new_zeros(query.shape[0], self.cfg.d_model)
        ids, keys, values, ages = (x if i == 0 else torch.from_numpy(x) for i, x in enumerate(self.storage.arrays()))
        # The array holds the stored unit keys (the store's own rows, as the device runtime reads them) so a read
        # is a cosine; columns are written when their memory was created.
        self.crossbar.program(self.storage.unit_keys(), ids, self.storage.extra_array("created"))
        spatial = self.crossbar.read(unit(query.numpy()), self.storage.clock())
        context, idx, _ = self.retrieve_from(query, keys, values, ages, spatial)
        if reconsolidate:
            for row in idx.tolist():
                self.storage.reconsolidate([ids[i] for i in row])
        return context

    @torch.no_grad()
    def store(self, state, key, next_byte, complexity, surprise) -> list[int]:
        """Store experiences whose importance reaches the consolidation path; returns new ids."""
        value = self.encode_experience(state, next_byte)
        ids = store_experiences(self.storage, key.numpy(), value.numpy(), complexity.numpy(), surprise.numpy())
        self.distiller.consolidate(self.storage.consolidation_candidates())
        return ids
