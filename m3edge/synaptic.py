"""SynapticStorage: the third memory level, the seed's long-term store, with an injected clock.

numpy and the standard library only, so the torch agent and the device runtime share one
implementation of the seed's semantics.

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

import numpy as np

HEBBIAN_INIT = 0.5
RECONSOLIDATE_GAIN, RECONSOLIDATE_STEP = 1.1, 0.05
PRIORITY_GAIN = 1.05
FORGET_WEIGHTS = (0.4, 0.3, 0.3)
FORGETTING_RATE = 0.01
CONSOLIDATION_THRESHOLD = 0.7
ASSOCIATE_SIMILARITY = 0.5  # a new memory is associated with stored ones at least this similar
DAY = 86_400.0
DECAY_INTERVAL = 3_600.0  # seconds between applications of the forgetting rate
IMPORTANCE_WEIGHTS = (0.4, 0.4, 0.2)  # complexity, surprise, novelty
# Retrieval (the ContextualAssociator): recency time constant, softmax temperature over the top scores.
RECENCY_TAU = DAY
RETRIEVAL_TEMPERATURE = 0.1

Clock = Callable[[], float]


def unit(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (torch's F.normalize: divide by max(norm, eps))."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def experience_importance(complexity, surprise, novelty):
    """The seed's 0.4 / 0.4 / 0.2 mix; each input in [0, 1] (numbers, arrays or tensors)."""
    a, b, c = IMPORTANCE_WEIGHTS
    return a * complexity + b * surprise + c * novelty


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
    key: np.ndarray  # [memory_dim] sensory code, what queries match
    value: np.ndarray  # [d] encoded experience, what retrieval returns
    priority: float
    created: float
    last_access: float
    access_count: int = 0
    memory_type: str = "episodic"
    associations: dict[int, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


class Columns:
    """Row-aligned growing arrays, one row per memory in id order: every step reads all keys, so they
    live in contiguous buffers instead of being re-stacked from the records."""

    def __init__(self):
        self.n = 0
        self.ids: list[int] = []
        self.cols: dict[str, np.ndarray] = {}

    def append(self, mid: int, rows: dict) -> None:
        for name, row in rows.items():
            row = np.asarray(row)
            buf = self.cols.get(name)
            if buf is None or self.n == len(buf):
                grown = np.zeros((max(16, 2 * self.n),) + row.shape, dtype=row.dtype)
                if buf is not None:
                    grown[: self.n] = buf[: self.n]
                self.cols[name] = buf = grown
            buf[self.n] = row
        self.ids.append(mid)
        self.n += 1

    def remove(self, mid: int) -> None:
        r = self.ids.index(mid)
        for buf in self.cols.values():
            buf[r:self.n - 1] = buf[r + 1:self.n]
        del self.ids[r]
        self.n -= 1

    def get(self, name: str) -> np.ndarray:
        return self.cols[name][: self.n]


class SynapticStorage:
    def __init__(self, capacity: int = 10_000, clock: Clock = time.time):
        self.capacity = capacity
        self.clock = clock
        self.memories: dict[int, Memory] = {}
        self._next_id = 0
        self._last_decay = clock()
        self._cols = Columns()
        self.forgotten = 0  # memories forgotten so far: callers know whether rows moved

    def __len__(self) -> int:
        return len(self.memories)

    def store(self, key, value, priority: float, memory_type: str = "episodic", extra: dict | None = None) -> int:
        """``extra`` holds per-memory arrays a caller keeps alongside (the runtime's context keys)."""
        key = np.array(key, dtype=np.float32)
        return self._insert(key, value, priority, memory_type, extra, self._similar(key))

    def store_many(self, keys, values, priorities, extras: list | None = None, memory_type: str = "episodic",
                   prior: tuple[list[int], np.ndarray] | None = None) -> list[int]:
        """Store rows in order, as repeated ``store`` calls do, with one matrix product for the batch.

        ``prior`` = (ids, cosines [B, len(ids)]) of each row's key against memories stored before the batch,
        when the caller already has them (``store_experiences`` computes them for novelty). A row associates
        with those still present and with earlier rows of the batch still present, as ``store`` would."""
        keys = np.asarray(keys, dtype=np.float32)
        n = len(keys)
        units = unit(keys)
        if prior is None:
            prior = (list(self._cols.ids), units @ self.unit_keys().T if len(self) else np.zeros((n, 0), np.float32))
        prior_ids = np.asarray(prior[0], dtype=np.int64)
        rows, cols = np.nonzero(prior[1] >= ASSOCIATE_SIMILARITY)
        bounds = np.searchsorted(rows, np.arange(n + 1))
        wr, wc = np.nonzero(np.tril(units @ units.T >= ASSOCIATE_SIMILARITY, k=-1))  # earlier rows of the batch
        wbounds = np.searchsorted(wr, np.arange(n + 1))
        extras = extras if extras is not None else [None] * n
        new: list[int] = []
        for b in range(n):
            others = [i for i in prior_ids[cols[bounds[b]:bounds[b + 1]]].tolist() if i in self.memories]
            others += [new[c] for c in wc[wbounds[b]:wbounds[b + 1]].tolist() if new[c] in self.memories]
            new.append(self._insert(keys[b], values[b], priorities[b], memory_type, extras[b], others))
        return new

    def _insert(self, key, value, priority, memory_type, extra, others: list[int]) -> int:
        now = self.clock()
        mid = self._next_id
        self._next_id += 1
        mem = Memory(mid, np.array(key, dtype=np.float32), np.array(value, dtype=np.float32),
                     float(min(1.0, max(0.0, priority))), now, now, memory_type=memory_type, extra=dict(extra or {}))
        for other in others:
            mem.associations[other] = HEBBIAN_INIT
            self.memories[other].associations[mid] = HEBBIAN_INIT
        self._add(mem)
        while len(self.memories) > self.capacity:
            self.forget_one()
        return mid

    def _add(self, mem: Memory) -> None:
        self.memories[mem.id] = mem
        self._cols.append(mem.id, {"key": mem.key, "unit_key": unit(mem.key), "value": mem.value,
                                   "created": np.float64(mem.created)} | mem.extra)

    def restore(self, memories: list[Memory], next_id: int, last_decay: float) -> None:
        """Replace the contents with saved records (a snapshot being loaded)."""
        self.memories, self._cols = {}, Columns()
        for m in sorted(memories, key=lambda m: m.id):
            self._add(m)
        self._next_id, self._last_decay = next_id, last_decay

    def _similar(self, key: np.ndarray) -> list[int]:
        if not self.memories:
            return []
        sim = self.unit_keys() @ unit(key)
        return [i for i, s in zip(self._cols.ids, sim.tolist()) if s >= ASSOCIATE_SIMILARITY]

    def arrays(self) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """(ids, keys [M, m], values [M, d], ages in seconds [M]) in id order."""
        c = self._cols
        return list(c.ids), c.get("key"), c.get("value"), (self.clock() - c.get("created")).astype(np.float32)

    def unit_keys(self) -> np.ndarray:
        return self._cols.get("unit_key")

    def extra_array(self, name: str) -> np.ndarray:
        """A per-memory array the caller stored in ``extra`` (rows in id order)."""
        return self._cols.get(name)

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
        self._cols.remove(victim)
        self.forgotten += 1
        return victim

    def decay(self) -> None:
        """Apply the forgetting rate to association strengths for the days since the last decay.

        (1 - r)^a (1 - r)^b = (1 - r)^(a + b), so decaying once an interval has passed is the same as
        decaying at every store, without touching every association on every step.
        """
        now = self.clock()
        days = max(0.0, (now - self._last_decay) / DAY)
        if days * DAY < DECAY_INTERVAL:
            return
        self._last_decay = now
        factor = (1.0 - FORGETTING_RATE) ** days
        for m in self.memories.values():
            m.associations = {j: s * factor for j, s in m.associations.items() if s * factor >= 1e-3}

    def consolidation_candidates(self) -> list[Memory]:
        return [m for m in self.memories.values() if m.priority >= CONSOLIDATION_THRESHOLD]


def store_experiences(storage: SynapticStorage, keys: np.ndarray, values: np.ndarray, complexity: np.ndarray,
                      surprise: np.ndarray, extras: list[dict] | None = None, chunk: int = 1 << 24) -> list[int]:
    """Store a batch of experiences the way the agent does: novelty against what was stored before the
    batch, importance from the seed's mix, one store per row in order, then the forgetting-rate decay.

    The cosines of a slice of rows against every stored key are one matrix product, shared by novelty and
    the Hebbian associations; slices keep that matrix under ``chunk`` elements."""
    keys = np.asarray(keys, dtype=np.float32)
    values = np.asarray(values, dtype=np.float32)
    complexity, surprise = np.reshape(complexity, -1), np.reshape(surprise, -1)
    n = len(keys)
    extras = extras or [None] * n
    m0, forgotten0 = len(storage), storage.forgotten
    # Forgetting during the batch moves rows; novelty still compares with the memories before the batch.
    before = storage.unit_keys().copy() if m0 and m0 + n > storage.capacity else None
    ids: list[int] = []
    step = max(1, chunk // max(m0 + n, 1))
    for s in range(0, n, step):
        e = min(n, s + step)
        units = unit(keys[s:e])
        if len(storage):
            sims = units @ storage.unit_keys().T
            prior = (list(storage._cols.ids), sims)
        else:
            sims, prior = np.zeros((e - s, 0), np.float32), ([], np.zeros((e - s, 0), np.float32))
        if not m0:
            novelty = np.ones(e - s, dtype=np.float32)
        else:
            base = sims[:, :m0] if storage.forgotten == forgotten0 else units @ before.T
            novelty = 1 - np.clip(base.max(-1), 0, 1)
        importance = experience_importance(complexity[s:e], surprise[s:e], novelty)
        ids += storage.store_many(keys[s:e], values[s:e], importance.tolist(), extras[s:e], prior=prior)
    storage.decay()
    return ids
