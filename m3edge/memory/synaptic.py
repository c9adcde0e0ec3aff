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

Bounded cost (docs/seed.md): a new memory links to at most LINK_CAP of its most similar candidates (the
recent FIFO and context-hash matches of ``index.ContextIndex``, never a scan of every memory), a memory holds
at most LINK_LIMIT links (its weakest goes first), novelty is measured against the same candidates, and a full
store forgets EVICT_FRACTION of its capacity at once (one compaction of the columns instead of one per insert).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Callable

import numpy as np

from m3edge.memory.index import RECENT, ContextIndex
from m3edge.memory.topk import top_above, topk_stable

HEBBIAN_INIT = 0.5
RECONSOLIDATE_GAIN, RECONSOLIDATE_STEP = 1.1, 0.05
PRIORITY_GAIN = 1.05
FORGET_WEIGHTS = (0.4, 0.3, 0.3)
FORGETTING_RATE = 0.01
CONSOLIDATION_THRESHOLD = 0.7
ASSOCIATE_SIMILARITY = 0.5  # a new memory is associated with stored ones at least this similar
LINK_CAP = 8  # ... the LINK_CAP most similar of them (the seed linked every pair above the threshold)
LINK_LIMIT = 2 * LINK_CAP  # links one memory may hold; a new link past it replaces the weakest
EVICT_FRACTION = 0.05  # a full store forgets this share of its capacity at once (one compaction per 5,000 stores at 100k)
DAY = 86_400.0
DECAY_INTERVAL = 3_600.0  # seconds between applications of the forgetting rate
IMPORTANCE_WEIGHTS = (0.4, 0.4, 0.2)  # complexity, surprise, novelty
SCAN_ROWS = 1024  # rows of a batch compared with the batch's earlier rows per matrix product
COMPACT_ROWS = 2048  # rows moved per step of an in-place compaction (Columns.remove): a cache-sized temporary
# Retrieval (the ContextualAssociator): recency time constant, softmax temperature over the top scores.
RECENCY_TAU = DAY
RETRIEVAL_TEMPERATURE = 0.1
_WEAKEST = itemgetter(1, 0)  # a link's (strength, id): the weakest, ties to the oldest memory

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


def reconsolidate_priority(p):
    """A retrieval's priority update (a number or an array of them)."""
    return np.minimum(1.0, p * PRIORITY_GAIN)


@dataclass(slots=True)  # no per-record __dict__: 100,000 of them are walked by every full collection
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
    scene: str = ""  # the scene / context string ``contextual_match`` selects on


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

    def remove(self, mids) -> None:
        """Drop the rows of held ids, in one compaction of every column."""
        keep = np.ones(self.n, dtype=bool)
        keep[np.searchsorted(self.id_array(), np.asarray(sorted(mids), dtype=np.int64))] = False
        rows = np.flatnonzero(keep)
        first = int(np.argmin(keep)) if len(rows) < self.n else self.n  # rows before the first victim stay
        for buf in self.cols.values():
            # In place, a block of destinations at a time: kept row rows[i] >= i, so a block's sources are
            # at or after its destinations and no later block's source is overwritten before it is read. The
            # block's gather is a cache-sized temporary, where a fresh buffer per column page-faulted its way
            # through ~100 MB at capacity.
            for a in range(first, len(rows), COMPACT_ROWS):
                b = min(len(rows), a + COMPACT_ROWS)
                buf[a:b] = buf[rows[a:b]]
        self.n = len(rows)
        self.ids = self.cols["id"][: self.n].tolist()

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
        self.index = ContextIndex(0)  # set up by the first memory that carries context hashes
        self._dirty: set[int] = set()  # ids whose priority changed since the last consolidation

    def __len__(self) -> int:
        return len(self.memories)

    def store(self, key, value, priority: float, memory_type: str = "episodic", extra: dict | None = None) -> int:
        """``extra`` holds per-memory arrays a caller keeps alongside (the runtime's context keys)."""
        return self.store_many(np.asarray(key, dtype=np.float32)[None], np.asarray(value)[None], [priority],
                               [extra], memory_type)[0]

    def store_many(self, keys, values, priorities, extras: list | None = None, memory_type="episodic",
                   prior: tuple[np.ndarray, np.ndarray] | None = None) -> list[int]:
        """Store rows in order, each linked to its LINK_CAP most similar candidates at or above the threshold:
        stored memories of ``stored_similarity`` (or ``prior`` = (ids, cosines [B, len(ids)], -inf where not
        a candidate), when the caller has them) and earlier rows of the batch within the FIFO. ``memory_type``
        is one type for every row or one per row. A full store then forgets EVICT_FRACTION of its capacity."""
        keys = np.asarray(keys, dtype=np.float32)
        n = len(keys)
        units = unit(keys)
        extras = extras if extras is not None else [None] * n
        types = [memory_type] * n if isinstance(memory_type, str) else list(memory_type)
        if prior is None:
            prior = stored_similarity(self, units, [None if e is None else e.get("hashes") for e in extras])
        prior_ids, prior_sims = np.asarray(prior[0], dtype=np.int64), prior[1]
        np_ = prior_ids.shape[1]
        new: list[int] = []
        for s in range(0, n, SCAN_ROWS):
            e = min(n, s + SCAN_ROWS)
            lo = max(0, s - RECENT)
            # [rows, prior | batch rows lo..e-1]: a row may link to the batch rows before it inside its FIFO.
            j = np.arange(lo, e)[None, :]
            b_ = np.arange(s, e)[:, None]
            batch = np.where((j < b_) & (j >= b_ - RECENT), units[s:e] @ units[lo:e].T, -np.inf)
            cand = (np.concatenate([prior_sims[s:e], batch], axis=1) if np_ else batch).astype(np.float32)
            for b, tc in enumerate(top_above(cand, ASSOCIATE_SIMILARITY, LINK_CAP), start=s):  # ties: the older
                others = [int(prior_ids[b, c]) if c < np_ else new[lo + c - np_] for c in tc]
                others = [i for i in others if i in self.memories]
                new.append(self._new_memory(keys[b], values[b], priorities[b], types[b], extras[b], others).id)
        self._add_columns([self.memories[i] for i in new], units)
        if len(self.memories) > self.capacity:
            self.forget(len(self.memories) - self.capacity + int(self.capacity * EVICT_FRACTION))
        return new

    def _new_memory(self, key, value, priority, memory_type, extra, others: list[int]) -> Memory:
        """A new record, linked both ways to ``others``; its columns are appended by the caller."""
        now = self.clock()
        mid = self._next_id
        self._next_id += 1
        extra = dict(extra or {})
        scene = str(extra.pop("scene", "") or "")
        mem = Memory(mid, np.array(key, dtype=np.float32), np.array(value, dtype=np.float32),
                     float(min(1.0, max(0.0, priority))), now, now, memory_type=memory_type, extra=extra, scene=scene)
        for other in others:
            links = self.memories[other].associations
            if len(links) >= LINK_LIMIT:  # the weakest link goes (ties: the oldest memory)
                self._unlink(other, min(links.items(), key=_WEAKEST)[0])
            mem.associations[other] = HEBBIAN_INIT
            links[mid] = HEBBIAN_INIT
        self.memories[mid] = mem
        self._dirty.add(mid)
        self.index.add(mid, extra.get("hashes"), scene)
        return mem

    def _unlink(self, a: int, b: int) -> None:
        self.memories[a].associations.pop(b, None)
        self.memories[b].associations.pop(a, None)

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
        self.index = ContextIndex(0)
        for m in mems:
            self.index.add(m.id, m.extra.get("hashes"), m.scene)
        self._dirty = set(self.memories)
        self._next_id, self._last_decay = next_id, last_decay

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
        self.reconsolidate_groups([ids])

    def reconsolidate_groups(self, groups: list[list[int]]) -> None:
        """``reconsolidate`` of each group (one retrieval's distinct ids) in order, at one time (one clock
        reading for all): a memory in c groups gets ``reconsolidate_priority`` c times (the same float
        operations in the same order) and c more accesses, and each group's co-retrieved links strengthen. The
        columns take one gather and scatter. An id not held raises KeyError before anything changes."""
        flat = [i for g in groups for i in g]
        if not flat:
            return
        now = self.clock()
        c = self._cols
        if len(set(flat)) == len(flat):  # each id once (a decode step's one retrieval): no sort, one pass
            ids, counts = np.asarray(flat, dtype=np.int64), np.ones(len(flat), dtype=np.int64)
        else:
            ids, counts = np.unique(np.asarray(flat, dtype=np.int64), return_counts=True)
        rows = np.searchsorted(c.id_array(), ids)
        held = rows < c.n
        held[held] = c.id_array()[rows[held]] == ids[held]
        if not held.all():  # before any write: an unknown id would land on its neighbour's row
            raise KeyError(int(ids[np.argmin(held)]))
        p = c.cols["priority"][rows]
        for k in range(int(counts.max())):
            p = np.where(counts > k, reconsolidate_priority(p), p)
        c.cols["priority"][rows] = p
        c.cols["access_count"][rows] += counts
        c.cols["last_access"][rows] = now
        for i, pi, ci in zip(ids.tolist(), p.tolist(), counts.tolist()):
            m = self.memories[i]
            m.priority, m.access_count, m.last_access = pi, m.access_count + ci, now
        self._dirty.update(ids.tolist())
        for g in groups:
            if len(g) > 1:
                for i in g:
                    links = self.memories[i].associations
                    for j in g:
                        if j != i and j in links:
                            links[j] = reconsolidate_strength(links[j])

    def forgetting_scores(self, now: float) -> np.ndarray:
        """``forgetting_score`` of every memory (rows in id order): the same float64 operations in the same
        order, so the same values as the per-memory formula."""
        a, b, c = FORGET_WEIGHTS
        cols = self._cols
        days = (now - cols.get("last_access")) / DAY
        return a * (1.0 - cols.get("priority")) + b / (1.0 + cols.get("access_count")) + c * days

    def forget(self, count: int = 1) -> list[int]:
        """Forget the ``count`` memories with the highest forgetting scores (ties: the older), at once."""
        victims = self.victims(count)
        self._drop(victims)
        return victims

    def forget_one(self) -> int:
        return self.forget(1)[0]

    def victims(self, count: int) -> list[int]:
        scores = self.forgetting_scores(self.clock())
        if count <= 0 or not len(scores):
            return []
        _, order = topk_stable(scores[None], min(count, len(scores)))  # a stable sort's first ``count``, in O(n)
        return sorted(self._cols.id_array()[order[0]].tolist())

    def victim(self) -> int:
        """The memory forgetting takes next: the highest forgetting score (ties: the older memory)."""
        return self.victims(1)[0]

    def _drop(self, victims: list[int]) -> None:
        gone = set(victims)
        mems = self.memories
        for v in victims:
            for j in mems.pop(v).associations:
                if j not in gone:
                    mems[j].associations.pop(v, None)
        self._dirty.difference_update(gone)
        self._cols.remove(victims)
        self.forgotten += len(victims)

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
        """Memories at or above the threshold among those stored or reconsolidated since the last call (a
        priority changes only then), in id order: bounded by the step, not the store."""
        hot = sorted(i for i in self._dirty if i in self.memories
                     and self.memories[i].priority >= CONSOLIDATION_THRESHOLD)
        self._dirty.clear()
        return [self.memories[i] for i in hot]


def stored_similarity(storage: SynapticStorage, units: np.ndarray, hashes: list) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, C], cosines [B, C]) of unit rows against their stored candidates: each row's exact and suffix
    context matches older than the FIFO (``hashes[b]``, or None), gathered per row, then the recent FIFO
    (shared); -inf (id -1) where a row has fewer candidates."""
    m = len(storage)
    n = len(units)
    if not m:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    ids = storage._cols.id_array()
    keys = storage.unit_keys()
    recent0 = max(0, m - RECENT)
    from m3edge.memory.retrieval import candidate_rows

    idx = storage.index
    extra = candidate_rows([[] if h is None else idx.exact(h, storage.memories) + idx.suffix(h, storage.memories)
                            for h in hashes], ids, recent0)
    width = extra.shape[1]
    safe = np.maximum(extra, 0)
    e_sims = np.where(extra >= 0, np.einsum("nm,nem->ne", units, keys[safe]), -np.inf) if width else np.zeros((n, 0))
    f_sims = units @ keys[recent0:m].T  # the FIFO: a view of the columns
    all_ids = np.concatenate([np.where(extra >= 0, ids[safe], -1), np.broadcast_to(ids[recent0:m], (n, m - recent0))], 1)
    return all_ids, np.concatenate([e_sims, f_sims], axis=1).astype(np.float32)


def store_experiences(storage: SynapticStorage, keys: np.ndarray, values: np.ndarray, complexity: np.ndarray,
                      surprise: np.ndarray, extras: list[dict] | None = None, rows: int = 128,
                      weights=IMPORTANCE_WEIGHTS, memory_types="episodic") -> list[int]:
    """Store a batch of experiences the way the agent does, ``rows`` at a time: novelty against the stored
    candidates (``stored_similarity``), importance from the seed's mix (``weights``: a task's own, see
    ``retrieval.TASK_IMPORTANCE``), one store per row in order, then the forgetting-rate decay. Cost per row
    is bounded by the candidates, not by the store's size."""
    keys = np.asarray(keys, dtype=np.float32)
    values = np.asarray(values, dtype=np.float32)
    complexity, surprise = np.reshape(complexity, -1), np.reshape(surprise, -1)
    n = len(keys)
    extras = extras or [None] * n
    types = [memory_types] * n if isinstance(memory_types, str) else list(memory_types)
    a, b, c = weights
    ids: list[int] = []
    for s in range(0, n, rows):
        e = min(n, s + rows)
        units = unit(keys[s:e])
        prior = stored_similarity(storage, units, [None if x is None else x.get("hashes") for x in extras[s:e]])
        if prior[1].shape[1]:
            novelty = 1 - np.clip(np.max(prior[1], axis=1), 0, 1)
        else:
            novelty = np.ones(e - s, dtype=np.float32)
        importance = a * complexity[s:e] + b * surprise[s:e] + c * novelty
        ids += storage.store_many(keys[s:e], values[s:e], importance.tolist(), extras[s:e], types[s:e], prior=prior)
    storage.decay()
    return ids
