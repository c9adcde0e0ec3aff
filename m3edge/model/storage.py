"""SynapticStorage: the third memory level, the seed's long-term store, with an injected clock.

The seed's numbers, each a named constant so tests can check the formulas:
  Hebbian strength of a new association: 0.5, both ways
  reconsolidation on retrieval: strength <- min(1, 1.1 s + 0.05); priority <- min(1, 1.05 p)
  forgetting score: 0.4 (1 - priority) + 0.3 / (1 + access count) + 0.3 * days since access;
    at capacity the highest score is forgotten
  forgetting rate 0.01: association strengths decay by (1 - 0.01) per day unused
  consolidation threshold 0.7: memories at or above it go to the MemoryDistiller
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

HEBBIAN_INIT = 0.5
RECONSOLIDATE_GAIN, RECONSOLIDATE_STEP = 1.1, 0.05
PRIORITY_GAIN = 1.05
FORGET_WEIGHTS = (0.4, 0.3, 0.3)
FORGETTING_RATE = 0.01
CONSOLIDATION_THRESHOLD = 0.7
ASSOCIATE_SIMILARITY = 0.5  # a new memory is associated with stored ones at least this similar
DAY = 86_400.0

Clock = Callable[[], float]


def forgetting_score(priority: float, access_count: int, days_since_access: float) -> float:
    a, b, c = FORGET_WEIGHTS
    return a * (1.0 - priority) + b / (1.0 + access_count) + c * days_since_access


def reconsolidate_strength(s: float) -> float:
    return min(1.0, s * RECONSOLIDATE_GAIN + RECONSOLIDATE_STEP)


def reconsolidate_priority(p: float) -> float:
    return min(1.0, p * PRIORITY_GAIN)


@dataclass
class Memory:
    id: int
    key: torch.Tensor  # [memory_dim] sensory code, what queries match
    value: torch.Tensor  # [d] encoded experience, what retrieval returns
    priority: float
    created: float
    last_access: float
    access_count: int = 0
    memory_type: str = "episodic"
    associations: dict[int, float] = field(default_factory=dict)


class SynapticStorage:
    def __init__(self, capacity: int = 10_000, clock: Clock = time.time):
        self.capacity = capacity
        self.clock = clock
        self.memories: dict[int, Memory] = {}
        self._next_id = 0
        self._last_decay = clock()

    def __len__(self) -> int:
        return len(self.memories)

    def store(self, key: torch.Tensor, value: torch.Tensor, priority: float, memory_type: str = "episodic") -> int:
        now = self.clock()
        mid = self._next_id
        self._next_id += 1
        mem = Memory(mid, key.detach().clone(), value.detach().clone(), float(min(1.0, max(0.0, priority))),
                     now, now, memory_type=memory_type)
        for other in self._similar(mem.key):
            mem.associations[other] = HEBBIAN_INIT
            self.memories[other].associations[mid] = HEBBIAN_INIT
        self.memories[mid] = mem
        while len(self.memories) > self.capacity:
            self.forget_one()
        return mid

    def _similar(self, key: torch.Tensor) -> list[int]:
        if not self.memories:
            return []
        ids, keys, _, _ = self.tensors()
        sim = F.normalize(keys, dim=-1) @ F.normalize(key, dim=0)
        return [i for i, s in zip(ids, sim.tolist()) if s >= ASSOCIATE_SIMILARITY]

    def tensors(self) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, keys [M, m], values [M, d], ages in seconds [M]) in id order."""
        ids = sorted(self.memories)
        now = self.clock()
        keys = torch.stack([self.memories[i].key for i in ids])
        values = torch.stack([self.memories[i].value for i in ids])
        ages = torch.tensor([now - self.memories[i].created for i in ids], dtype=torch.float32)
        return ids, keys, values, ages

    def reconsolidate(self, ids: list[int]) -> None:
        """A retrieval strengthens what it touched: priorities, access counts and co-retrieved links."""
        now = self.clock()
        for i in ids:
            m = self.memories[i]
            m.priority = reconsolidate_priority(m.priority)
            m.access_count += 1
            m.last_access = now
            for j in ids:
                if j != i and j in m.associations:
                    m.associations[j] = reconsolidate_strength(m.associations[j])

    def forget_one(self) -> int:
        now = self.clock()
        scores = {i: forgetting_score(m.priority, m.access_count, (now - m.last_access) / DAY)
                  for i, m in self.memories.items()}
        victim = max(scores, key=lambda i: (scores[i], -i))  # ties: forget the older memory
        for j in self.memories[victim].associations:
            self.memories[j].associations.pop(victim, None)
        del self.memories[victim]
        return victim

    def decay(self) -> None:
        """Apply the forgetting rate to association strengths for the days since the last decay."""
        now = self.clock()
        days = max(0.0, (now - self._last_decay) / DAY)
        self._last_decay = now
        factor = (1.0 - FORGETTING_RATE) ** days
        for m in self.memories.values():
            m.associations = {j: s * factor for j, s in m.associations.items() if s * factor >= 1e-3}

    def consolidation_candidates(self) -> list[Memory]:
        return [m for m in self.memories.values() if m.priority >= CONSOLIDATION_THRESHOLD]
