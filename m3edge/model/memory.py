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

import numpy as np

from m3edge.config import MEMORY_TYPES, ModelConfig
from m3edge.memory import retrieval
from m3edge.memory.index import suffix_orders, window_hashes
from m3edge.memory.pending import Pending, flush, store_or_hold
from m3edge.memory.synaptic import IMPORTANCE_WEIGHTS, Clock, SynapticStorage, experience_importance  # noqa: F401
from m3edge.memory.synaptic import store_experiences, unit
from m3edge.model.associator import ContextualAssociator
from m3edge.model.crossbar import ResistiveArraySimulator
from m3edge.model.distiller import MemoryDistiller
from m3edge.model.sensory import SensoryBuffer


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
        self.orders = suffix_orders(cfg.context)
        self.pending = Pending()  # decode steps' experiences, written in batches as the runtime does

    def reset(self, capacity: int | None = None) -> None:
        """Forget everything (a fresh store, optionally of another capacity)."""
        st = self.storage
        self.storage = SynapticStorage(capacity or st.capacity, st.clock)
        self.crossbar = ResistiveArraySimulator(self.crossbar.device, self.crossbar.seed)
        self.distiller.graph = type(self.distiller.graph)(self.distiller.graph.merge_similarity,
                                                          self.distiller.graph.link_similarity)
        self.pending = Pending()

    def encode_experience(self, state: torch.Tensor, next_byte: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(next_byte, self.cfg.vocab).to(state.dtype)
        return self.memory_encoder(torch.cat([state, onehot], dim=-1))

    def retrieve_from(self, query, keys, values, ages, spatial=None):
        """The associator over given memories, every one of them scored (calibration's bank of experiences)."""
        return self.associator(query, keys, values, ages, spatial)

    def context_keys(self, key: torch.Tensor) -> torch.Tensor:
        """The context encoder's unit-length view of sensory keys (the associator's third score)."""
        return F.normalize(self.associator.context_encoder(key), dim=-1)

    def hashes(self, windows) -> np.ndarray:
        w = windows.numpy() if isinstance(windows, torch.Tensor) else np.asarray(windows)
        return window_hashes(w, self.orders)

    def _spatial(self, query_units: np.ndarray, rows: np.ndarray) -> np.ndarray:
        st = self.storage
        # The array holds the stored unit keys (the store's own rows, as the device runtime reads them) so a
        # read is a cosine; columns are written when their memory was created.
        self.crossbar.program(st.unit_keys(), st._cols.id_array(), st.extra_array("created"))
        return self.crossbar.read(query_units, st.clock(), rows)

    @torch.no_grad()
    def read(self, key: torch.Tensor, windows, mode: str = "hybrid", task: str = "general", scene: str = "",
             segment: retrieval.Segment | None = None) -> retrieval.Retrieved:
        """The top ``memory_read_k`` memories per query (``m3edge.memory.retrieval``, shared with the runtime)."""
        n = key.shape[0]
        cfg = self.cfg
        if segment is not None:
            self.flush()
        else:
            segment = self.pending.segment()
        if not len(self.storage) and segment is None:
            return retrieval.empty(n, cfg.memory_read_k, cfg.d_model)
        return retrieval.retrieve(self.storage, self._spatial, unit(key.numpy()), self.context_keys(key).numpy(),
                                  self.hashes(windows), cfg.memory_read_k, cfg.d_model, self.storage.clock(), mode,
                                  task, scene, segment, graph=self.distiller.graph)

    @torch.no_grad()
    def segment(self, state, key, windows, next_bytes: torch.Tensor) -> retrieval.Segment:
        """Consecutive rows of one text, each retrievable by the rows after it (a prompt, an eval chunk)."""
        return retrieval.Segment(unit(key.numpy()), self.context_keys(key).numpy(), next_bytes.numpy(),
                                 self.hashes(windows), self.encode_experience(state, next_bytes).numpy())

    @torch.no_grad()
    def store(self, state, key, windows, next_byte, complexity, surprise, preference, task: str = "general",
              scene: str = "", defer: bool = False) -> list[int]:
        """Store experiences: the value, what followed, the context hashes, the type (the alignment's
        preferred memory type), with the task's importance weights. ``defer`` (one decode step's row): hold it
        for the next batched write (``m3edge/memory/pending.py``); held rows are read like stored ones."""
        value = self.encode_experience(state, next_byte).numpy()
        ctx = self.context_keys(key).numpy()
        hashes = self.hashes(windows)
        types = preference.argmax(-1).numpy()
        nb = next_byte.numpy()
        keys = key.numpy()
        batch = {"keys": keys, "key_units": unit(keys), "context_keys": ctx, "values": value,
                 "complexity": complexity.numpy().reshape(-1), "surprise": surprise.numpy().reshape(-1),
                 "next_bytes": nb, "hashes": hashes, "type_ids": types, "scene": scene, "task": task}
        return store_or_hold(self.pending, self._write, batch, defer)

    def flush(self) -> list[int]:
        """Write the held decode experiences in one batch (a no-op when none are held)."""
        return flush(self.pending, self._write)

    def _write(self, b: dict) -> list[int]:
        nb, types = b["next_bytes"], np.asarray(b["type_ids"])
        extras = [{"context_key": b["context_keys"][i], "next_byte": np.int64(nb[i]), "hashes": b["hashes"][i],
                   "type_id": np.int64(types[i]), "scene": b["scene"]} for i in range(len(nb))]
        ids = store_experiences(self.storage, b["keys"], b["values"], b["complexity"], b["surprise"], extras,
                                weights=retrieval.TASK_IMPORTANCE[b["task"]],
                                memory_types=[MEMORY_TYPES[t] for t in types.tolist()])
        self.distiller.consolidate(self.storage.consolidation_candidates())
        return ids
