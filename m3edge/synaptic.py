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
# A batch is compared with the stored keys SCAN_ROWS rows at a time, SCAN_BLOCK keys per matrix product
# ([1024, 4096] float32 = 16 MB: cache-resident, and large enough for an efficient product).
SCAN_ROWS, SCAN_BLOCK = 1024, 4096
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
    live in contiguous buffers instead of being re-stacked from the records. The ids are kept both as a list
    (``ids``) and as an int64 column (``id_array()``). SynapticStorage also keeps priority, access count and
    last access here, so forgetting and consolidation are numpy expressions over all memories."""

    def __init__(self):
        self.n = 0
        self.ids: list[int] = []
        self.cols: dict[str, np.ndarray] = {}

    def extend(self, mids: list[int], rows: dict) -> None:
        """Append len(mids) rows at once; ``rows`` maps each column to an array of that many rows."""
        k = len(mids)
        rows = dict(rows, id=np.asarray(mids, dtype=np.int64))
        for name, block in rows.items():
            block = np.asarray(block)
            buf = self.cols.get(name)
            if buf is None or self.n + k > len(buf):
                grown = np.zeros((max(16, 2 * self.n, self.n + k),) + block.shape[1:], dtype=block.dtype)
                if buf is not None:
                    grown[: self.n] = buf[: self.n]
                self.cols[name] = buf = grown
            buf[self.n:self.n + k] = block
        self.ids.extend(mids)
        self.n += k

    def remove(self, mid: int) -> None:
        r = self.row(mid)
        for buf in self.cols.values():
            buf[r:self.n - 1] = buf[r + 1:self.n]
        del self.ids[r]
        self.n -= 1

    def row(self, mid: int) -> int:
        """The row of a held id (rows are in id order)."""
        return int(np.searchsorted(self.id_array(), mid))

    def id_array(self) -> np.ndarray:
        return self.cols["id"][: self.n] if self.n else np.zeros(0, dtype=np.int64)

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
        or (ids, rows, cols) of the pairs at or above the threshold, when the caller already has them
        (``store_experiences`` scans them for novelty). A row associates
        with those still present and with earlier rows of the batch still present, as ``store`` would."""
        keys = np.asarray(keys, dtype=np.float32)
        n = len(keys)
        units = unit(keys)
        if prior is None:
            prior = (self._cols.id_array(),) + scan_stored(units, self.unit_keys() if len(self) else units[:0], 0)[1:]
        prior_ids = np.asarray(prior[0], dtype=np.int64)
        rows, cols = similar_pairs(prior[1]) if len(prior) == 2 else prior[1:]
        bounds = np.searchsorted(rows, np.arange(n + 1))
        wr, wc = similar_pairs(units @ units.T, lower=True)  # earlier rows of the batch
        wbounds = np.searchsorted(wr, np.arange(n + 1))
        hit_ids = prior_ids[cols].tolist()
        wc = wc.tolist()
        extras = extras if extras is not None else [None] * n
        batched = len(self.memories) + n <= self.capacity  # nothing is forgotten during the batch
        new: list[int] = []
        for b in range(n):
            others = [i for i in hit_ids[bounds[b]:bounds[b + 1]] if i in self.memories]
            others += [new[c] for c in wc[wbounds[b]:wbounds[b + 1]] if new[c] in self.memories]
            if batched:
                new.append(self._new_memory(keys[b], values[b], priorities[b], memory_type, extras[b], others).id)
            else:
                new.append(self._insert(keys[b], values[b], priorities[b], memory_type, extras[b], others))
        if batched:
            self._add_columns([self.memories[i] for i in new], units)
        return new

    def _new_memory(self, key, value, priority, memory_type, extra, others: list[int]) -> Memory:
        """A new record, linked both ways to ``others``; its columns are appended by the caller."""
        now = self.clock()
        mid = self._next_id
        self._next_id += 1
        mem = Memory(mid, np.array(key, dtype=np.float32), np.array(value, dtype=np.float32),
                     float(min(1.0, max(0.0, priority))), now, now, memory_type=memory_type, extra=dict(extra or {}))
        for other in others:
            mem.associations[other] = HEBBIAN_INIT
            self.memories[other].associations[mid] = HEBBIAN_INIT
        self.memories[mid] = mem
        return mem

    def _insert(self, key, value, priority, memory_type, extra, others: list[int]) -> int:
        mem = self._new_memory(key, value, priority, memory_type, extra, others)
        self._add_columns([mem])
        while len(self.memories) > self.capacity:
            self.forget_one()
        return mem.id

    def _add_columns(self, mems: list[Memory], units: np.ndarray | None = None) -> None:
        """Append the records' rows (in id order) to the columns; ``units`` = their unit keys if known."""
        if not mems:
            return
        keys = np.stack([m.key for m in mems])
        rows = {"key": keys, "unit_key": unit(keys) if units is None else units,
                "value": np.stack([m.value for m in mems]),
                "created": np.array([m.created for m in mems], dtype=np.float64),
                "priority": np.array([m.priority for m in mems], dtype=np.float64),
                "access_count": np.array([m.access_count for m in mems], dtype=np.int64),
                "last_access": np.array([m.last_access for m in mems], dtype=np.float64)}
        for name in mems[0].extra:
            rows[name] = np.stack([np.asarray(m.extra[name]) for m in mems])
        self._cols.extend([m.id for m in mems], rows)

    def restore(self, memories: list[Memory], next_id: int, last_decay: float) -> None:
        """Replace the contents with saved records (a snapshot being loaded)."""
        mems = sorted(memories, key=lambda m: m.id)
        self.memories, self._cols = {m.id: m for m in mems}, Columns()
        self._add_columns(mems)
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
        c = self._cols
        for i in ids:
            m = self.memories[i]
            m.priority = reconsolidate_priority(m.priority)
            m.access_count += 1
            m.last_access = now
            r = c.row(i)
            c.cols["priority"][r], c.cols["access_count"][r], c.cols["last_access"][r] = m.priority, m.access_count, now
            for j in ids:
                if j != i and j in m.associations:
                    m.associations[j] = reconsolidate_strength(m.associations[j])

    def forgetting_scores(self, now: float) -> np.ndarray:
        """``forgetting_score`` of every memory (rows in id order): the same float64 operations in the same
        order, so the same values as the per-memory formula."""
        a, b, c = FORGET_WEIGHTS
        cols = self._cols
        days = (now - cols.get("last_access")) / DAY
        return a * (1.0 - cols.get("priority")) + b / (1.0 + cols.get("access_count")) + c * days

    def forget_one(self) -> int:
        return self._drop(self.victim())

    def victim(self) -> int:
        """The memory forgetting takes next: the highest forgetting score (ties: the older memory)."""
        return int(self._cols.ids[int(np.argmax(self.forgetting_scores(self.clock())))])

    def _drop(self, victim: int) -> int:
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
        """Memories at or above the threshold, in id order (the records' order)."""
        if not self.memories:
            return []
        hot = self._cols.id_array()[self._cols.get("priority") >= CONSOLIDATION_THRESHOLD]
        return [self.memories[i] for i in hot.tolist()]


def similar_pairs(cosines: np.ndarray, lower: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) where cosines >= ASSOCIATE_SIMILARITY, row-major order as ``np.nonzero`` gives; with
    ``lower`` only below the diagonal (a batch against its own earlier rows). One flat scan: a 2-d nonzero
    over a [B, 100,000] mask costs tens of milliseconds, a flat one about one."""
    mask = cosines >= ASSOCIATE_SIMILARITY
    if lower:
        mask = np.tril(mask, k=-1)
    return np.divmod(np.flatnonzero(mask), max(mask.shape[1], 1))


def scan_stored(units: np.ndarray, stored: np.ndarray, novelty_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compare unit rows with every stored unit key in column blocks that stay in cache (one matrix product
    per block; a [rows, 100,000] matrix would be written to memory and read back twice).

    Returns (each row's highest cosine over the first ``novelty_cols`` stored keys, -inf if none; the
    (row, column) pairs at or above ASSOCIATE_SIMILARITY in row-major order, as ``similar_pairs`` of the
    full product gives)."""
    best = np.full(len(units), -np.inf, dtype=np.float32)
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c in range(0, len(stored), SCAN_BLOCK):
        sims = units @ stored[c:c + SCAN_BLOCK].T
        if c < novelty_cols:
            np.maximum(best, sims[:, :novelty_cols - c].max(axis=1), out=best)
        r, k = similar_pairs(sims)
        rows.append(r)
        cols.append(k + c)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    order = np.argsort(rows, kind="stable")  # blocks ascend, so columns stay ascending within a row
    return best, rows[order], cols[order]


def store_experiences(storage: SynapticStorage, keys: np.ndarray, values: np.ndarray, complexity: np.ndarray,
                      surprise: np.ndarray, extras: list[dict] | None = None, rows: int = SCAN_ROWS) -> list[int]:
    """Store a batch of experiences the way the agent does: novelty against what was stored before the
    batch, importance from the seed's mix, one store per row in order, then the forgetting-rate decay.

    The cosines of up to ``rows`` rows against every stored key are one blocked scan (``scan_stored``),
    shared by novelty and the Hebbian associations."""
    keys = np.asarray(keys, dtype=np.float32)
    values = np.asarray(values, dtype=np.float32)
    complexity, surprise = np.reshape(complexity, -1), np.reshape(surprise, -1)
    n = len(keys)
    extras = extras or [None] * n
    m0, forgotten0 = len(storage), storage.forgotten
    # Forgetting during the batch moves rows; novelty still compares with the memories before the batch. Only a
    # chunk after the first can see rows moved, so a batch of one chunk needs no copy (a full store's every step).
    before = storage.unit_keys().copy() if m0 and m0 + n > storage.capacity and n > rows else None
    ids: list[int] = []
    for s in range(0, n, rows):
        e = min(n, s + rows)
        units = unit(keys[s:e])
        intact = storage.forgotten == forgotten0
        stored = storage.unit_keys() if len(storage) else units[:0]
        best, hit_rows, hit_cols = scan_stored(units, stored, m0 if intact else 0)
        if not m0:
            novelty = np.ones(e - s, dtype=np.float32)
        else:
            if not intact:
                best = scan_stored(units, before, len(before))[0]
            novelty = 1 - np.clip(best, 0, 1)
        importance = experience_importance(complexity[s:e], surprise[s:e], novelty)
        prior = (storage._cols.id_array(), hit_rows, hit_cols)
        ids += storage.store_many(keys[s:e], values[s:e], importance.tolist(), extras[s:e], prior=prior)
    storage.decay()
    return ids
