"""Long-term memory on the device: the seed's SynapticStorage plus retrieval in numpy.

Retrieval is the reference ContextualAssociator's arithmetic; its learned context encoder ran in the
encoder graph, which hands over unit-length context keys. The store keeps each memory's context key
next to it, so nothing learned runs here. The spatial score is a read of the crossbar that holds the keys
(``m3edge/memory/crossbar.py``); the agent's default device is ``ideal``, exact float, as the torch agent's.

With a memory directory the records live in a durable SQLite store (``runtime/store.py``): every store and
every retrieval's reconsolidation is a committed transaction, so nothing needs saving at exit and a crash
loses nothing that returned. A directory written by m3edge before the store existed holds one snapshot,
``memory.npz``: it is migrated into the store on first open and renamed ``memory.npz.migrated`` (kept, not
deleted, and never read again).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from m3edge.errors import BadInput
from m3edge.memory import retrieval
from m3edge.memory.pending import Pending, flush, store_or_hold
from m3edge.memory.synaptic import Clock, Memory, unit
from m3edge.runtime.store import DB_NAME, MemoryStore, empty_file, memory_extras

SNAPSHOT = "memory.npz"
SNAPSHOT_VERSION = 1
AGENT_DEVICE = "ideal"  # the torch agent's default memory device; parity depends on it


# Resident bytes one memory costs beyond its vectors: its record and link dicts, its hash-bucket entries, the
# crossbar's and the graph's share. Measured on the small reference: RSS grew 17.6 kB a memory from 15k to 95k
# memories (bench/results-memory-read.json, decode rows), of which 3 kB are the vectors below.
OVERHEAD_BYTES = 14_600


def bytes_per_memory(cfg) -> int:
    """Key, unit key and context key (m floats each, twice: record and columns), value (d floats, twice)."""
    return 4 * (5 * cfg.memory_dim + 2 * cfg.d_model) + OVERHEAD_BYTES


def memory_capacity(target, cfg) -> int:
    """The profile's memory capacity, bounded by what its memory budget holds."""
    return max(1, min(target.memory_capacity, int(target.memory_budget_mb * 2 ** 20) // bytes_per_memory(cfg)))


class LongTermMemory:
    def __init__(self, d_model: int, top_k: int = 5, capacity: int = 100_000, clock: Clock | None = None,
                 device: str = AGENT_DEVICE, seed: int = 0, distill=None):
        """``distill``: the MemoryDistiller's learned map for consolidation (numpy in and out); bundles do not
        carry it, so by default a consolidated node holds the stored value itself."""
        import time

        self.d_model = d_model
        self.top_k = top_k
        self.capacity = capacity
        self.clock = clock or time.time
        self.device = device
        self.seed = seed
        self.distill = distill
        self.store_: MemoryStore | None = None  # made at the first store (its key sizes come with the data)
        self.directory: Path | None = None
        self.pending = Pending()  # decode steps' experiences, written in batches (m3edge/memory/pending.py)

    @property
    def storage(self):
        """The SynapticStorage working set (empty until something is stored)."""
        if self.store_ is None:
            from m3edge.runtime.store import JournaledStorage

            return JournaledStorage(self.capacity, self.clock)
        return self.store_.storage

    def __len__(self) -> int:
        """Memories held: stored, and decode experiences not yet written."""
        return (0 if self.store_ is None else len(self.store_.storage)) + len(self.pending)

    def _make_store(self, key_dim: int, context_dim: int) -> MemoryStore:
        if self.directory is not None:
            return MemoryStore.open(self.directory, key_dim, self.d_model, context_dim, self.capacity, self.device,
                                    self.seed, self.clock, self.distill)
        return MemoryStore(key_dim, self.d_model, context_dim, self.capacity, self.device, self.seed, self.clock,
                           self.distill)

    def read(self, key: np.ndarray, context_key: np.ndarray, hashes: np.ndarray, r: int, mode: str = "hybrid",
             task: str = "general", scene: str = "", segment: retrieval.Segment | None = None,
             reconsolidate: bool = True) -> retrieval.Retrieved:
        """The top ``r`` memories per sensory key [N, m] (``m3edge.memory.retrieval``, as the torch agent reads
        them); a retrieval strengthens the top ``top_k`` it touched."""
        n = key.shape[0]
        if segment is not None:
            self.flush()  # a prompt's rows come after every held one
        else:
            segment = self.pending.segment()
        if not len(self) and segment is None:
            return retrieval.empty(n, r, self.d_model)
        if self.store_ is None:  # a segment on an empty memory: nothing stored to score, only its own rows
            self.store_ = self._make_store(key.shape[-1], context_key.shape[-1])
        got = self.store_.retrieve(unit(key), context_key, hashes, r, mode, task, scene, segment)
        if reconsolidate and len(self.store_.storage):
            groups = [g for g in got.reconsolidation_groups(self.top_k) if g]
            if groups:
                self.store_.reconsolidate(groups)
        return got

    def search(self, query: np.ndarray, query_ctx: np.ndarray, k: int) -> list[dict]:
        """Top-k memories by the fused retrieval score, without touching them."""
        self.flush()
        if not len(self):
            return []
        ms = self.store_
        out = []
        for hit in ms.search(query, query_ctx, k):
            m = ms.storage.memories[hit["id"]]
            nb = int(m.extra.get("next_byte", -1))
            out.append({"id": m.id, "score": hit["score"], "priority": m.priority, "access_count": m.access_count,
                        "created": m.created, "associations": len(m.associations), "memory_type": m.memory_type,
                        "next_byte": nb, "scene": m.scene})
        return out

    def store(self, key, context_key, value, complexity, surprise, next_bytes=None, hashes=None, type_ids=None,
              scene: str = "", task: str = "general", defer: bool = False) -> list[int]:
        """Store experiences now, or (``defer``, one decode step's row) hold them for the next batched write;
        held rows are read like stored ones. Returns the stored ids (none for a held row)."""
        key, context_key = np.asarray(key, dtype=np.float32), np.asarray(context_key, dtype=np.float32)
        held_rows = defer and len(key) == 1 and next_bytes is not None and hashes is not None and type_ids is not None
        # As given: the store validates them (a held row is checked when its batch is written).
        batch = {"keys": key, "key_units": unit(key) if held_rows else None, "context_keys": context_key,
                 "values": value, "complexity": complexity, "surprise": surprise, "next_bytes": next_bytes,
                 "hashes": hashes, "type_ids": type_ids, "scene": scene, "task": task}
        return store_or_hold(self.pending, self._write, batch, held_rows)

    def flush(self) -> list[int]:
        """Write the held decode experiences in one batch (a no-op when none are held)."""
        return flush(self.pending, self._write)

    def _write(self, b: dict) -> list[int]:
        return self._store(b["keys"], b["context_keys"], b["values"], b["complexity"], b["surprise"], b["next_bytes"],
                           b["hashes"], b["type_ids"], b["scene"], b["task"])

    def _store(self, key, context_key, value, complexity, surprise, next_bytes, hashes, type_ids, scene,
               task) -> list[int]:
        if self.store_ is None:
            self.store_ = self._make_store(key.shape[-1], context_key.shape[-1])
        return self.store_.store_experiences(key, value, complexity, surprise, context_key, next_bytes, hashes,
                                             type_ids, scene, retrieval.TASK_IMPORTANCE[retrieval.check_task(task)])

    # ---- persistence ---------------------------------------------------------------------------------------

    def save(self, memory_dir: str | Path) -> None:
        """Everything is already committed when the store lives in ``memory_dir``: this only records the read
        energy spent since the last write. Any other directory gets a durable copy of the memory."""
        d = Path(memory_dir)
        self.flush()
        if self.store_ is not None and self.store_.path is not None and self.directory == d:
            self.store_.save_ledger()
            return
        if self.store_ is None:
            return
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"{d}: cannot keep memory here ({e.strerror})") from None
        copy_store(self.store_, d).close()

    def load(self, memory_dir: str | Path) -> None:
        """Use the durable store in ``memory_dir`` (created at the first store; an old snapshot is migrated)."""
        d = Path(memory_dir)
        if d.exists() and not d.is_dir():
            raise BadInput(f"{d}: --memory-dir must be a directory")
        self.directory = d
        if (d / DB_NAME).is_file() and empty_file(d / DB_NAME):
            ms = None  # a store whose creation never wrote (killed, disk full, touched): made at the first write
        elif (d / DB_NAME).is_file():
            ms = MemoryStore.open(d, clock=self.clock, distill=self.distill)
        elif (d / SNAPSHOT).is_file():
            ms = migrate_snapshot(d, self.d_model, self.capacity, self.device, self.seed, self.clock)
        else:
            ms = None
        if ms is None:
            self.store_ = None
            return
        if ms.value_dim != self.d_model:
            ms.close()
            raise BadInput(f"{d}: memories of a d_model {ms.value_dim} agent; this bundle has {self.d_model}")
        self.store_ = ms

    def close(self) -> None:
        self.flush()
        if self.store_ is not None:
            self.store_.close()


def copy_store(src: MemoryStore, directory: Path) -> MemoryStore:
    """A durable store in ``directory`` holding exactly ``src``'s records, graph and ledger."""
    st = src.storage
    mems = [st.memories[i] for i in sorted(st.memories)]
    return import_records(directory, mems, st._next_id, st._last_decay, st.forgotten, src.key_dim, src.value_dim,
                          src.context_dim, src.capacity, src.device_name, src.seed, src.clock, src.graph)


def import_records(directory, mems: list[Memory], next_id, last_decay, forgotten, key_dim, value_dim, context_dim,
                   capacity, device, seed, clock, graph=None) -> MemoryStore:
    ms = MemoryStore.open(directory, key_dim, value_dim, context_dim, capacity, device, seed, clock)
    if len(ms.storage):
        ms.close()
        raise BadInput(f"{directory}: already holds a memory store; not overwriting it")
    with ms.transaction():
        ms.storage.restore(mems, next_id, last_decay)
        ms.storage.forgotten = forgotten
        ms.storage.new = [m.id for m in mems]
        ms.storage.pairs = {(m.id, j) for m in mems for j in m.associations if m.id > j}  # (newer, older)
        if graph is not None:
            ms.graph.restore(graph.nodes, graph.edges, graph.node_of)
            ms.graph._changed_nodes = set(range(len(graph.nodes)))
            ms.graph._new_edges = set(graph.edges)
            ms.graph._new_sources = dict(graph.node_of)
        c = ms.storage._cols
        if mems:
            ms.crossbar.write(c.ids, ms.storage.unit_keys(), c.get("created"))
    return ms


def read_snapshot(path: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["index"].tobytes())
            keys, values, ctx = z["keys"], z["values"], z["context_keys"]
        if meta.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {meta.get('version')!r}, this m3edge reads {SNAPSHOT_VERSION}")
        if meta["count"] != len(meta["memories"]) or (meta["count"] and len(keys) != meta["count"]):
            raise ValueError("index and arrays disagree")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{path}: unreadable memory snapshot ({e})") from None
    return meta, keys, values, ctx


def migrate_snapshot(d: Path, d_model: int, capacity: int, device: str, seed: int, clock) -> MemoryStore | None:
    """Move an old one-file snapshot into a new durable store; the snapshot is renamed, not deleted."""
    meta, keys, values, ctx = read_snapshot(d / SNAPSHOT)
    if meta["d_model"] != d_model or (meta["count"] and values.shape[1] != d_model):
        raise BadInput(f"{d / SNAPSHOT}: memories of a d_model {meta['d_model']} agent; this bundle has {d_model}")
    mems = [Memory(m["id"], keys[row], values[row], m["priority"], m["created"], m["last_access"], m["access_count"],
                   m["memory_type"], {int(k): v for k, v in m["associations"].items()},
                   {"context_key": ctx[row]} | memory_extras(None, None, m["memory_type"]))
            for row, m in enumerate(meta["memories"])]
    if not mems:  # nothing to move: the store is made at the first write
        os.replace(d / SNAPSHOT, d / (SNAPSHOT + ".migrated"))
        return None
    ms = import_records(d, mems, meta["next_id"], meta["last_decay"], 0, keys.shape[1], d_model, ctx.shape[1],
                        capacity, device, seed, clock)
    os.replace(d / SNAPSHOT, d / (SNAPSHOT + ".migrated"))
    return ms

