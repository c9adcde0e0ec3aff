"""The long-term memory's durable store: SQLite (WAL) is the source of truth, a crossbar holds the keys.

    store = MemoryStore.open("mem/", key_dim=128, value_dim=256, context_dim=128, device="reram")
    ids = store.store_experiences(keys, values, complexity, surprise, context_keys)   # one transaction
    hits = store.search(query, query_ctx, k=10)

Semantics are the seed's SynapticStorage (``m3edge.memory.synaptic``, the code the torch agent runs) and the
MemoryDistiller's graph (``m3edge.memory.knowledge``); this module only makes them durable:

- every public write is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction; the in-memory working set is
  changed first, then exactly the rows it touched are written (a journal of new, changed and removed ids,
  association pairs, decay factors and graph changes). If anything fails the transaction rolls back and the
  working set is reloaded from the database, so memory and disk never disagree.
- input is checked before anything changes: wrong shapes, NaN or inf, unknown ids raise ``MemoryInputError``
  (a ``ValueError``, and a ``BadInput`` so the CLI exits 2) and nothing is written.
- the database records its schema version; a store of another version is refused before any write.
- ``journal_mode=WAL`` lets readers run beside a writer; ``busy_timeout`` makes a second writer (or a reader
  meeting a checkpoint) wait instead of failing with "database is locked". ``synchronous=FULL`` by default:
  a returned write survives a power cut, not just a killed process.
- another process may write the same store: each transaction first compares ``PRAGMA data_version`` with the
  one it last saw and reloads the working set if someone else committed.

The crossbar's programmed state is a pure function of (seed, id, key, write time) (``m3edge/memory/crossbar.py``),
so it is rebuilt on open without being stored; its energy ledger is stored in the ``meta`` table.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
from itertools import repeat
from pathlib import Path

import numpy as np

from m3edge.errors import BadInput, StorageError
from m3edge.memory.knowledge import KnowledgeGraph, KnowledgeNode
from m3edge.memory.crossbar import DEFAULT_DEVICE, CrossbarArray, device as get_device
from m3edge.memory import retrieval
from m3edge.memory.retrieval import FUSION, MEMORY_TYPES
from m3edge.memory.topk import topk_stable  # noqa: F401 (also the store's API)
from m3edge.memory.synaptic import (DAY, FORGETTING_RATE, IMPORTANCE_WEIGHTS, RECENCY_TAU, Clock, Memory,
                                    SynapticStorage, store_experiences, unit)

SCHEMA_VERSION = 3  # 3: what followed each memory, its context hashes and scene; 2: one row per link
N_HASHES = 3  # m3edge.memory.index.suffix_orders: the exact context and two suffixes
DB_NAME = "memory.sqlite"
BUSY_TIMEOUT_MS = 30_000
# SQLite's page cache (KiB; its default is 2 MiB): a batch's reconsolidated links land all over the table's
# B-tree, so at 100,000 memories a small cache re-reads the same pages many times per transaction.
CACHE_KIB = 65_536

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE memories (
    id INTEGER PRIMARY KEY, priority REAL NOT NULL, created REAL NOT NULL, last_access REAL NOT NULL,
    access_count INTEGER NOT NULL, memory_type TEXT NOT NULL,
    key BLOB NOT NULL, value BLOB NOT NULL, context BLOB,
    next_byte INTEGER NOT NULL DEFAULT -1, hashes BLOB, scene TEXT NOT NULL DEFAULT '');
CREATE TABLE associations (src INTEGER NOT NULL, dst INTEGER NOT NULL, strength REAL NOT NULL,
    PRIMARY KEY (src, dst)) WITHOUT ROWID;  -- src > dst: a link is symmetric, one row holds both directions
CREATE TABLE nodes (id INTEGER PRIMARY KEY, vector BLOB NOT NULL, count INTEGER NOT NULL);
CREATE TABLE node_sources (memory_id INTEGER PRIMARY KEY, node INTEGER NOT NULL);
CREATE TABLE edges (a INTEGER NOT NULL, b INTEGER NOT NULL, PRIMARY KEY (a, b)) WITHOUT ROWID;
"""


class MemoryInputError(BadInput, ValueError):
    """Bad input to the memory store: a ValueError for library callers, exit 2 for the CLI."""


class CorruptStore(MemoryInputError):
    """The database holds something this m3edge did not write: a bad page, a meta value, a short blob."""


# SQLite's result codes for a write the storage refused (as opposed to a database that is wrong).
_DISK = {"SQLITE_FULL": "the disk is full", "SQLITE_READONLY": "the storage is read-only",
         "SQLITE_CANTOPEN": "the database file cannot be opened", "SQLITE_BUSY": "another process holds the "
         "store's write lock (busy timeout passed)", "SQLITE_LOCKED": "the store is locked"}
_CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def db_error(e: sqlite3.Error, path, opening: bool = False) -> BadInput:
    """A typed, one-line error for an SQLite failure on ``path``: a ``StorageError`` (the server's 507) when the
    storage refused the write, a ``CorruptStore`` when the file is damaged. ``opening``: nothing was written."""
    name = getattr(e, "sqlite_errorname", "") or ""
    e = _printable(str(e))
    if opening and name not in _CORRUPT:
        ro = _readonly_fs(Path(path).parent)
        return StorageError(path, f"cannot open the memory store for writing ({e})"
                                  + ("; the storage is read-only: choose a writable --memory-dir" if ro else
                                     "; is the disk full, or the directory not writable?"))
    if name in _CORRUPT:
        return CorruptStore(f"{path}: not a readable memory store, it is damaged ({e}); move it aside (or restore "
                            f"a backup) and the next run starts an empty one")
    base = name.split("_", 2)
    base = "_".join(base[:2]) if len(base) > 2 else name
    if base == "SQLITE_IOERR":
        return StorageError(path, f"I/O error writing the memory store ({e}); the failed write was rolled back, "
                                  f"everything written before it is kept")
    if base in _DISK:
        return StorageError(path, f"{_DISK[base]} ({e}); the failed write was rolled back, everything written "
                                  f"before it is kept")
    return CorruptStore(f"{path}: not a readable memory store ({e})")


def _printable(text: str, limit: int = 200) -> str:
    """SQLite's message as one printable line: a damaged page can put its raw bytes (newlines included) into
    it ("Could not decode to UTF-8 column 'value' with text '...'"), which would break the one-line error."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(v, lo: int = 0, hi: int = 1 << 62) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_num(v, lo: float = -math.inf) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= lo


MAX_DIM = 1 << 16
MAX_CAPACITY = 100_000_000
# meta key -> (check, what it must be). Checked on every open and inspect: a value edited by hand (or by a
# bad disk) is named, instead of failing later in arithmetic.
META_CHECKS = {
    "key_dim": (lambda v: _is_int(v, 1, MAX_DIM), f"an integer in [1, {MAX_DIM}]"),
    "value_dim": (lambda v: _is_int(v, 1, MAX_DIM), f"an integer in [1, {MAX_DIM}]"),
    "context_dim": (lambda v: v is None or _is_int(v, 1, MAX_DIM), f"null or an integer in [1, {MAX_DIM}]"),
    "capacity": (lambda v: _is_int(v, 1, MAX_CAPACITY), f"an integer in [1, {MAX_CAPACITY}]"),
    "device": (lambda v: isinstance(v, str), "a memory device name"),
    "seed": (lambda v: _is_int(v, -(1 << 63), (1 << 63) - 1), "a 64-bit integer"),
    "next_id": (lambda v: _is_int(v, 0, 1 << 62), "a non-negative integer"),
    "last_decay": (_is_num, "a finite number"),
    "forgotten": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "ledger": (lambda v: isinstance(v, dict) and all(_is_int(v.get(k)) for k in ("writes", "reads"))
               and all(_is_num(v.get(k), 0.0) for k in ("write_pj", "read_pj", "write_ns", "read_ns")),
               "an object of non-negative counts (writes, reads, write_pj, read_pj, write_ns, read_ns)"),
}


def check_meta(meta: dict, path) -> dict:
    for key, (ok, want) in META_CHECKS.items():
        if key not in meta:
            raise CorruptStore(f"{path}: meta {key!r} is missing (a damaged or hand-edited store)")
        if not ok(meta[key]):
            raise CorruptStore(f"{path}: meta {key!r} must be {want}, got {json.dumps(meta[key])[:60]}")
    try:
        get_device(meta["device"])
    except ValueError as e:
        raise CorruptStore(f"{path}: meta 'device': {e}") from None
    return meta


def empty_file(path: Path) -> bool:
    """A zero-length database with no write-ahead log: a store whose creation never got to write (a crash,
    a full disk, ``touch``). SQLite reads it as an empty database; m3edge makes it a store at the first write."""
    try:
        wal = Path(f"{path}-wal")
        return path.stat().st_size == 0 and (not wal.exists() or wal.stat().st_size == 0)
    except OSError:
        return False


@contextlib.contextmanager
def _sql_transaction(db: sqlite3.Connection, begin: str = "BEGIN"):
    """``begin`` ... COMMIT, or ROLLBACK when anything raises (a read snapshot with plain BEGIN, a write with
    BEGIN IMMEDIATE)."""
    db.execute(begin)
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        try:
            if db.in_transaction:  # a failed COMMIT may have rolled back already
                db.execute("ROLLBACK")
        except sqlite3.ProgrammingError:
            # Closed already: a SIGTERM's SystemExit that lands between BEGIN and the `with` body leaves this
            # generator suspended until the store is closed; closing discarded the open transaction.
            pass
        raise


def _blob(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def _vec(b: bytes | None) -> np.ndarray | None:
    return None if b is None else np.frombuffer(b, dtype="<f4").copy()


def _finite_matrix(x, name: str, rows: int | None, dim: int) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise MemoryInputError(f"{name} must be numbers, got {type(x).__name__}") from None
    if a.ndim == 1 and rows in (None, 1):
        a = a[None]
    if a.ndim != 2 or a.shape[1] != dim or (rows is not None and a.shape[0] != rows):
        want = f"[{rows if rows is not None else 'N'}, {dim}]"
        raise MemoryInputError(f"{name} must have shape {want}, got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise MemoryInputError(f"{name} holds NaN or inf")
    return a


def _finite_vector(x, name: str, rows: int) -> np.ndarray:
    a = np.asarray(x).reshape(-1)  # dtype kept: importance is computed in the caller's precision, as in torch
    if a.dtype.kind not in "fiu":
        raise MemoryInputError(f"{name} must be numbers, got {a.dtype}")
    if a.shape[0] != rows:
        raise MemoryInputError(f"{name} must have {rows} values, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise MemoryInputError(f"{name} holds NaN or inf")
    return a


def memory_extras(next_byte, hashes, memory_type: str) -> dict:
    """The columns the reader and the index read, for one memory (a stored row or one being loaded)."""
    return {"next_byte": np.int64(-1 if next_byte is None else next_byte),
            "hashes": np.zeros(N_HASHES, np.int64) if hashes is None or len(hashes) != N_HASHES else hashes,
            "type_id": np.int64(MEMORY_TYPES.index(memory_type) if memory_type in MEMORY_TYPES else 0)}


def _int_vector(x, name: str, n: int, lo: int, hi: int, default: int) -> np.ndarray:
    if x is None:
        return np.full(n, default, dtype=np.int64)
    a = np.asarray(x)
    if a.shape != (n,) or a.dtype.kind not in "iu" or (n and (a.min() < lo or a.max() > hi)):
        raise MemoryInputError(f"{name} must be {n} integers in [{lo}, {hi}]")
    return a.astype(np.int64)


def fuse(spatial: np.ndarray, query_ctx, key_ctx, ages: np.ndarray) -> np.ndarray:
    """The associator's 0.4 temporal + 0.4 spatial + 0.2 context; ``spatial`` is the crossbar's read."""
    a, b, c = FUSION
    temporal = np.exp(-np.maximum(ages, 0) / RECENCY_TAU)[None, :]
    out = a * temporal + b * spatial
    if query_ctx is not None and key_ctx is not None:
        out = out + c * (query_ctx @ key_ctx.T)
    return out


class JournaledStorage(SynapticStorage):
    """SynapticStorage that remembers what each operation touched, for the durable store to write. Without a
    database (``journaling`` False) it keeps nothing: at capacity the journal of one batched forgetting alone
    is ~80,000 link pairs built only to be dropped."""

    def __init__(self, capacity: int, clock: Clock, journaling: bool = True):
        super().__init__(capacity, clock)
        self.journaling = journaling
        self.new: list[int] = []
        self.touched: set[int] = set()
        self.gone: set[int] = set()
        self.pairs: set[tuple[int, int]] = set()
        self.decays: list[float] = []

    def clear_journal(self) -> None:
        self.new, self.touched, self.gone, self.pairs, self.decays = [], set(), set(), set(), []

    def _new_memory(self, key, value, priority, memory_type, extra, others):
        mem = super()._new_memory(key, value, priority, memory_type, extra, others)
        if self.journaling:
            self.new.append(mem.id)
            self.pairs.update((mem.id, j) for j in others)  # (newer, older): the new id is the largest
        return mem

    def reconsolidate_groups(self, groups: list[list[int]]) -> None:
        super().reconsolidate_groups(groups)
        if self.journaling:
            for ids in groups:
                self.touched.update(ids)
                self.pairs.update((i, j) for i in ids for j in ids if i > j)

    def _drop(self, victims: list[int]) -> None:
        if self.journaling:
            for v in victims:  # (newer, older) pairs, built by C-level zips: 5,000 victims at a time at capacity
                links = self.memories[v].associations
                self.pairs.update(zip([j for j in links if j > v], repeat(v)))
                self.pairs.update(zip(repeat(v), [j for j in links if j < v]))
            self.gone.update(victims)
        super()._drop(victims)

    def _unlink(self, a: int, b: int) -> None:
        super()._unlink(a, b)
        if self.journaling:
            self.pairs.add((max(a, b), min(a, b)))

    def decay(self) -> None:
        before = self._last_decay
        super().decay()
        if self.journaling and self._last_decay != before:
            days = max(0.0, (self._last_decay - before) / DAY)
            self.decays.append((1.0 - FORGETTING_RATE) ** days)


class MemoryStore:
    """The seed's long-term memory: records, a crossbar for the keys, the consolidation graph.

    ``MemoryStore(...)`` keeps everything in memory; ``MemoryStore.open(dir, ...)`` makes it durable."""

    def __init__(self, key_dim: int, value_dim: int, context_dim: int | None = None, capacity: int = 10_000,
                 device: str | None = None, seed: int = 0, clock: Clock | None = None, distill=None):
        self.key_dim, self.value_dim, self.context_dim = int(key_dim), int(value_dim), context_dim
        self.capacity = int(capacity)
        self.device_name = device or DEFAULT_DEVICE
        self.seed = int(seed)
        self.clock = clock or time.time
        self.distill = distill  # the distiller's learned map; None: the stored value itself (the bundle has none)
        self.storage = JournaledStorage(self.capacity, self.clock, journaling=False)  # open() gives it a database
        self.graph = KnowledgeGraph()
        self.crossbar = CrossbarArray(self.key_dim, get_device(self.device_name), self.seed)
        self.db: sqlite3.Connection | None = None
        self.path: Path | None = None
        self.readonly = False
        self._data_version = None
        self._depth = 0

    # ---- opening -------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, directory, key_dim: int | None = None, value_dim: int | None = None,
             context_dim: int | None = None, capacity: int | None = None, device: str | None = None,
             seed: int = 0, clock: Clock | None = None, distill=None, readonly: bool = False,
             synchronous: str = "FULL") -> "MemoryStore":
        """Open (or, unless ``readonly``, create) the store in ``directory``. An existing store keeps its own
        dimensions, capacity and device; given values must agree with them."""
        d = Path(directory)
        if d.exists() and not d.is_dir():
            raise MemoryInputError(f"{d}: a memory store must be a directory")
        path = d / DB_NAME
        if readonly and not path.is_file():
            raise MemoryInputError(f"{d}: no memory store here ({DB_NAME} missing)")
        if not readonly:
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise MemoryInputError(f"{d}: cannot keep memory here ({e.strerror})") from None
        db = None
        try:
            db = connect(path, readonly, check_same_thread=False, isolation_level=None)
            meta = cls._read_meta(db, path)
            if meta is not None and meta["schema_version"] < SCHEMA_VERSION and not readonly:
                cls._migrate(db, meta["schema_version"])
                meta = cls._read_meta(db, path)
        except (sqlite3.Error, MemoryInputError) as e:
            if db is not None:
                db.close()
            if isinstance(e, MemoryInputError):
                raise
            raise db_error(e, path, opening=True) from None
        if meta is None:
            if readonly:
                db.close()
                raise MemoryInputError(f"{path}: empty memory store")
            if key_dim is None or value_dim is None:
                db.close()
                raise MemoryInputError(f"{path}: an empty database, no memory store yet (it is made at the first "
                                       f"write, which needs key_dim and value_dim)")
            try:
                meta = cls._create(db, key_dim, value_dim, context_dim, capacity or 10_000,
                                   device or DEFAULT_DEVICE, seed, clock or time.time)
            except sqlite3.Error as e:
                db.close()
                raise db_error(e, path, opening=True) from None
            except BaseException:
                db.close()
                raise
        given = {"key_dim": key_dim, "value_dim": value_dim, "context_dim": context_dim, "capacity": capacity,
                 "device": device}
        for name, v in given.items():
            if v is not None and meta[name] != v:
                db.close()
                raise MemoryInputError(f"{path}: this store has {name} {meta[name]!r}, asked for {v!r}")
        self = cls(meta["key_dim"], meta["value_dim"], meta["context_dim"], meta["capacity"], meta["device"],
                   meta["seed"], clock, distill)
        self.db, self.path, self.readonly = db, path, readonly
        if not readonly:
            if synchronous not in ("FULL", "NORMAL", "EXTRA"):
                raise MemoryInputError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
            db.execute(f"PRAGMA synchronous = {synchronous}")
        try:
            db.execute(f"PRAGMA cache_size = {-CACHE_KIB}")
            self._load()
        except sqlite3.Error as e:
            db.close()
            raise db_error(e, path) from None
        except BaseException:
            db.close()
            raise
        return self

    @staticmethod
    def _read_meta(db: sqlite3.Connection, path: Path) -> dict | None:
        has = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()[0]
        if not has:
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise MemoryInputError(f"{path}: an SQLite database that is not an m3edge memory store")
            return None
        meta = read_meta_rows(db, path)
        version = meta.get("schema_version")
        if version not in (1, 2, SCHEMA_VERSION):
            raise MemoryInputError(f"{path}: memory store schema version {version!r}; this m3edge reads "
                                   f"version {SCHEMA_VERSION} (and migrates 1 and 2; nothing was changed)")
        return check_meta(meta, path)

    @staticmethod
    def _migrate(db: sqlite3.Connection, version: int) -> None:
        """Up to the current version in one transaction. 1 -> 2: one row per link (links are symmetric, so the
        other direction holds the same strength), no index on dst. 2 -> 3: columns for what followed each
        memory (-1: unknown, so the reader never reads it), its context hashes and its scene."""
        with _sql_transaction(db, "BEGIN IMMEDIATE"):
            now = json.loads(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
            if now == 1:
                db.execute("DELETE FROM associations WHERE src < dst")
                db.execute("DROP INDEX IF EXISTS associations_dst")
            if now in (1, 2):
                have = {row[1] for row in db.execute("PRAGMA table_info(memories)")}
                for name, decl in (("next_byte", "INTEGER NOT NULL DEFAULT -1"), ("hashes", "BLOB"),
                                   ("scene", "TEXT NOT NULL DEFAULT ''")):
                    if name not in have:
                        db.execute(f"ALTER TABLE memories ADD COLUMN {name} {decl}")
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(SCHEMA_VERSION),))

    @staticmethod
    def _create(db, key_dim, value_dim, context_dim, capacity, device, seed, clock) -> dict:
        get_device(device)  # an unknown preset fails before anything is written
        for name, v in (("key_dim", key_dim), ("value_dim", value_dim), ("capacity", capacity)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MemoryInputError(f"{name} must be a positive integer, got {v!r}")
        now = clock()
        meta = {"schema_version": SCHEMA_VERSION, "key_dim": key_dim, "value_dim": value_dim,
                "context_dim": context_dim, "capacity": capacity, "device": device, "seed": seed,
                "next_id": 0, "last_decay": now, "forgotten": 0, "created_at": now,
                "ledger": {"writes": 0, "reads": 0, "write_pj": 0.0, "read_pj": 0.0, "write_ns": 0.0, "read_ns": 0.0}}
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode = WAL")
        with _sql_transaction(db, "BEGIN IMMEDIATE"):
            if db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] == 0:
                for stmt in SCHEMA.strip().split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}

    def _load(self) -> None:
        """Rebuild the working set (records, graph, crossbar) from the database."""
        db = self.db
        if db.in_transaction:  # inside our own write transaction: already one consistent view
            self._read_all()
            return
        # data_version before the snapshot: a commit racing this load makes the next check reload, never miss.
        version = db.execute("PRAGMA data_version").fetchone()[0]
        # One read snapshot for every table: a writer committing mid-load is not half-seen.
        with _sql_transaction(db):
            self._read_all()
        self._data_version = version

    def _read_all(self) -> None:
        db = self.db
        meta = check_meta(read_meta_rows(db, self.path), self.path)
        assoc: dict[int, dict[int, float]] = {}
        for src, dst, s in db.execute("SELECT src, dst, strength FROM associations ORDER BY src, dst"):
            assoc.setdefault(src, {})[dst] = s  # one row, both directions (a version 1 store, read-only,
            assoc.setdefault(dst, {})[src] = s  # still has both rows: the same values twice)
        mems = []
        check = RowCheck(self)
        check.rows(db)
        for row in db.execute("SELECT id, priority, created, last_access, access_count, memory_type, key, value, "
                              "context, next_byte, hashes, scene FROM memories ORDER BY id"):
            mid, pr, cr, la, ac, mt, k, v, c, nb, h, scene = row
            extra = {} if c is None else {"context_key": _vec(c)}
            extra |= memory_extras(nb, None if h is None else np.frombuffer(h, dtype=np.int64), mt)
            mems.append(Memory(mid, _vec(k), _vec(v), pr, cr, la, ac, mt, assoc.get(mid, {}), extra, scene))
        self.storage = JournaledStorage(self.capacity, self.clock)
        self.storage.restore(mems, meta["next_id"], meta["last_decay"])
        check.finish(self.storage, assoc, meta)
        self.storage.forgotten = meta["forgotten"]
        rows = db.execute("SELECT id, vector, count FROM nodes ORDER BY id").fetchall()
        check.nodes(rows)
        nodes = [KnowledgeNode(_vec(v), c, set()) for _, v, c in rows]
        node_of = {}
        for mid, node in db.execute("SELECT memory_id, node FROM node_sources"):
            if not (_is_int(node, 0, len(nodes) - 1) and _is_int(mid)):
                raise CorruptStore(f"{self.path}: node_sources row ({mid!r}, {node!r}) names no stored node")
            node_of[mid] = node
            nodes[node].sources.add(mid)
        edges = db.execute("SELECT a, b FROM edges").fetchall()
        for a, b in edges:
            if not (_is_int(a, 0, len(nodes) - 1) and _is_int(b, 0, len(nodes) - 1)):
                raise CorruptStore(f"{self.path}: edges row ({a!r}, {b!r}) names no stored node")
        self.graph = KnowledgeGraph()
        self.graph.restore(nodes, edges, node_of)
        self.crossbar = CrossbarArray(self.key_dim, get_device(self.device_name), self.seed)
        if mems:
            c = self.storage._cols
            self.crossbar.write(c.id_array(), self.storage.unit_keys(), c.get("created"), account=False)
        lg = meta["ledger"]
        self.crossbar.ledger.writes, self.crossbar.ledger.reads = lg["writes"], lg["reads"]
        self.crossbar.ledger.write_pj, self.crossbar.ledger.read_pj = lg["write_pj"], lg["read_pj"]
        self.crossbar.ledger.write_ns, self.crossbar.ledger.read_ns = lg["write_ns"], lg["read_ns"]
        self._saved_ledger = dict(lg)

    # ---- transactions --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction around a group of operations (nested calls join the outer one)."""
        if self.db is None or self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self.db is None and not self._depth:  # nothing to write the changes to: forget them
                    self.storage.clear_journal()
                    self.graph.drain_changes()
            return
        if self.readonly:
            raise MemoryInputError(f"{self.path}: opened read-only")
        self._depth = 1
        try:
            with _sql_transaction(self.db, "BEGIN IMMEDIATE"):
                if self.db.execute("PRAGMA data_version").fetchone()[0] != self._data_version:
                    self._load()  # another process committed since our last look
                self.storage.clear_journal()
                self.graph.drain_changes()
                yield
                self._flush()
        except sqlite3.Error as e:
            # A full disk, an I/O error, a lock held past the timeout: rolled back, so what the working set
            # changed is dropped (reloaded below) and everything committed before stays; one typed error.
            err = db_error(e, self.path)
            try:
                self._load()
            except (sqlite3.Error, BadInput):
                pass  # the storage cannot even be read now: the error above says why; the disk is still the truth
            raise err from None
        except BaseException:
            self._load()  # rolled back; the database is the truth: drop what the operation changed in memory
            raise
        finally:
            self._depth = 0
        self._data_version = self.db.execute("PRAGMA data_version").fetchone()[0]

    def _flush(self) -> None:
        st, db = self.storage, self.db
        new = [i for i in st.new if i in st.memories]
        rows = []
        for i in new:
            m = st.memories[i]
            ctx = m.extra.get("context_key")
            rows.append((i, m.priority, m.created, m.last_access, m.access_count, m.memory_type, _blob(m.key),
                         _blob(m.value), None if ctx is None else _blob(ctx), int(m.extra["next_byte"]),
                         np.asarray(m.extra["hashes"], dtype=np.int64).tobytes(), m.scene))
        db.executemany("INSERT INTO memories VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        newset = set(new)
        upd = [(st.memories[i].priority, st.memories[i].last_access, st.memories[i].access_count, i)
               for i in st.touched if i in st.memories and i not in newset]
        db.executemany("UPDATE memories SET priority = ?, last_access = ?, access_count = ? WHERE id = ?", upd)
        gone = [(i,) for i in st.gone]
        db.executemany("DELETE FROM memories WHERE id = ?", gone)
        # Decay multiplies every stored strength as Python did (IEEE doubles both), before the pairs this
        # transaction wrote are overwritten with their final values.
        for f in st.decays:
            db.execute("UPDATE associations SET strength = strength * ?", (f,))
            db.execute("DELETE FROM associations WHERE strength < 1e-3")
        # Links are symmetric (made both ways, strengthened and decayed alike, dropped together): one row
        # (newer, older) holds both directions, so a new memory's links append at the end of the B-tree
        # instead of landing on a random page per older memory (a third of the insert time at 100,000).
        # The journal's pairs are (newer, older); a forgotten memory's links are all in it.
        put, drop = [], []
        for i, j in sorted(st.pairs):  # in key order: each B-tree page is visited once, not once per row
            mi = st.memories.get(i)
            s = None if mi is None else mi.associations.get(j)
            if s is None or j not in st.memories:
                drop.append((i, j))
            else:
                put.append((i, j, s))
        db.executemany("INSERT OR REPLACE INTO associations VALUES (?, ?, ?)", put)
        db.executemany("DELETE FROM associations WHERE src = ? AND dst = ?", drop)
        nodes, edges, sources = self.graph.drain_changes()
        db.executemany("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?)",
                       [(n, _blob(self.graph.nodes[n].vector), self.graph.nodes[n].count) for n in sorted(nodes)])
        db.executemany("INSERT OR IGNORE INTO edges VALUES (?, ?)", sorted(edges))
        db.executemany("INSERT OR REPLACE INTO node_sources VALUES (?, ?)", sorted(sources.items()))
        lg = self.crossbar.ledger
        ledger = {"writes": lg.writes, "reads": lg.reads, "write_pj": lg.write_pj, "read_pj": lg.read_pj,
                  "write_ns": lg.write_ns, "read_ns": lg.read_ns}
        meta = {"next_id": st._next_id, "last_decay": st._last_decay, "forgotten": st.forgotten, "ledger": ledger}
        db.executemany("UPDATE meta SET value = ? WHERE key = ?", [(json.dumps(v), k) for k, v in meta.items()])
        self._saved_ledger = ledger
        st.clear_journal()

    # ---- writes --------------------------------------------------------------------------------------------

    def _check_rows(self, keys, values, context_keys):
        keys = _finite_matrix(keys, "keys", None, self.key_dim)
        values = _finite_matrix(values, "values", len(keys), self.value_dim)
        if self.context_dim:
            if context_keys is None:
                raise MemoryInputError(f"context_keys [{len(keys)}, {self.context_dim}] are required by this store")
            context_keys = _finite_matrix(context_keys, "context_keys", len(keys), self.context_dim)
        elif context_keys is not None:
            raise MemoryInputError("this store keeps no context keys (context_dim is not set)")
        return keys, values, context_keys

    def _extras(self, context_keys, n, next_bytes=None, hashes=None, type_ids=None, scene: str = ""):
        """Per-row extras: every memory carries what followed it (-1: unknown), three context hashes (0: none),
        its memory type's index and scene, so the columns stay aligned whatever the caller knew."""
        nb = _int_vector(next_bytes, "next_bytes", n, -1, 255, -1)
        ty = _int_vector(type_ids, "type_ids", n, 0, len(MEMORY_TYPES) - 1, 0)
        if hashes is None:
            hashes = np.zeros((n, N_HASHES), dtype=np.int64)
        hashes = np.asarray(hashes)
        if hashes.shape != (n, N_HASHES) or hashes.dtype.kind not in "iu":
            raise MemoryInputError(f"hashes must be integers of shape [{n}, {N_HASHES}], got {hashes.shape}")
        if not isinstance(scene, str) or len(scene) > 256:
            raise MemoryInputError("scene must be a string of at most 256 characters")
        out = []
        for i in range(n):
            e = memory_extras(nb[i], hashes[i].astype(np.int64), MEMORY_TYPES[ty[i]])
            e["scene"] = scene
            if context_keys is not None:
                e["context_key"] = context_keys[i]
            out.append(e)
        return out

    def store_experiences(self, keys, values, complexity, surprise, context_keys=None, next_bytes=None, hashes=None,
                          type_ids=None, scene: str = "", weights=IMPORTANCE_WEIGHTS) -> list[int]:
        """The agent's store: importance from complexity, surprise and novelty (``weights``: the task's),
        then consolidation. ``next_bytes``, ``hashes`` and ``type_ids`` are what the reader and the index use."""
        keys, values, context_keys = self._check_rows(keys, values, context_keys)
        complexity = _finite_vector(complexity, "complexity", len(keys))
        surprise = _finite_vector(surprise, "surprise", len(keys))
        extras = self._extras(context_keys, len(keys), next_bytes, hashes, type_ids, scene)
        types = [MEMORY_TYPES[int(e["type_id"])] for e in extras]
        with self.transaction():
            ids = store_experiences(self.storage, keys, values, complexity, surprise, extras, weights=weights,
                                    memory_types=types)
            self.crossbar.account_writes(len(ids))
            self.consolidate()
        return ids

    def store(self, keys, values, priorities, context_keys=None, next_bytes=None, hashes=None, scene: str = "") -> list[int]:
        """Store rows with given priorities (clipped to [0, 1] as the seed does), then consolidate."""
        keys, values, context_keys = self._check_rows(keys, values, context_keys)
        priorities = _finite_vector(priorities, "priorities", len(keys))
        extras = self._extras(context_keys, len(keys), next_bytes, hashes, None, scene)
        with self.transaction():
            ids = self.storage.store_many(keys, values, priorities.tolist(), extras)
            self.crossbar.account_writes(len(ids))
            self.storage.decay()
            self.consolidate()
        return ids

    def consolidate(self) -> int:
        with self.transaction():
            return self.graph.consolidate(self.storage.consolidation_candidates(), self.distill)

    def _check_ids(self, ids) -> list[int]:
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise MemoryInputError(f"memory ids must be integers, got {i!r}")
            if int(i) not in self.storage.memories:
                raise MemoryInputError(f"unknown memory id {int(i)}")
            out.append(int(i))
        return out

    def reconsolidate(self, groups) -> None:
        """Each group is one retrieval's ids: priorities, access counts and co-retrieved links strengthen."""
        with self.transaction():
            # Checked inside: the transaction first reloads what other writers committed, and one of them
            # may have forgotten an id this handle still held.
            self.storage.reconsolidate_groups([self._check_ids(g) for g in groups])

    def get(self, mid) -> Memory:
        return self.storage.memories[self._check_ids([mid])[0]]

    # ---- reads ---------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """A reader sees other processes' commits: reload when the database changed."""
        if self.db is not None and not self._depth:
            if self.db.execute("PRAGMA data_version").fetchone()[0] != self._data_version:
                self._load()

    def scores(self, query, query_ctx=None) -> tuple[list[int], np.ndarray]:
        """Fused retrieval scores [N, M] of every stored memory, the spatial part read through the crossbar."""
        st = self.storage
        ids, _, _, ages = st.arrays()
        c = st._cols
        # Programmed lazily, at the first read; the writes were charged when the memories were stored, so a
        # memory forgotten or closed before any read still counts.
        self.crossbar.sync(c.id_array(), st.unit_keys(), c.get("created"), account=False)
        spatial = self.crossbar.read(unit(query), st.unit_keys(), self.clock())
        key_ctx = st.extra_array("context_key") if query_ctx is not None else None
        return ids, fuse(spatial, query_ctx, key_ctx, ages).astype(np.float32)

    def _spatial(self, query_units: np.ndarray, rows: np.ndarray) -> np.ndarray:
        st = self.storage
        c = st._cols
        self.crossbar.sync(c.id_array(), st.unit_keys(), c.get("created"), account=False)
        return self.crossbar.read(query_units, st.unit_keys(), self.clock(), rows)

    def retrieve(self, key_units, context_keys, hashes, r: int, mode: str = "hybrid", task: str = "general",
                 scene: str = "", segment: retrieval.Segment | None = None) -> retrieval.Retrieved:
        """The top ``r`` memories per query over bounded candidates (``m3edge.memory.retrieval``)."""
        return retrieval.retrieve(self.storage, self._spatial, key_units, context_keys, hashes, r, self.value_dim,
                                  self.clock(), mode, task, scene, segment, graph=self.graph)

    def search(self, query, query_ctx=None, k: int = 10) -> list[dict]:
        """Top-k memories by the fused score, without reconsolidating them."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise MemoryInputError(f"k must be a positive integer, got {k!r}")
        q = _finite_matrix(query, "query", None, self.key_dim)
        qc = None if query_ctx is None or not self.context_dim else _finite_matrix(query_ctx, "query_ctx", len(q), self.context_dim)
        self.refresh()
        if not len(self.storage):
            return []
        ids, fused = self.scores(q, qc)
        top, idx = topk_stable(fused, int(k))
        return [{"id": ids[i], "score": s} for s, i in zip(top[0].tolist(), idx[0].tolist())]

    # ---- inspection ----------------------------------------------------------------------------------------

    def stats(self) -> dict:
        st = self.storage
        mems = st.memories
        created = [m.created for m in mems.values()]
        size = 0
        if self.path is not None:
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(self.path) + suffix)
                size += p.stat().st_size if p.exists() else 0
        lg = self.crossbar.ledger
        return {"count": len(mems), "bytes": size, "device": self.device_name, "seed": self.seed,
                "capacity": self.capacity, "key_dim": self.key_dim, "value_dim": self.value_dim,
                "context_dim": self.context_dim, "schema_version": SCHEMA_VERSION,
                "energy_pj": {"write": lg.write_pj, "read": lg.read_pj},
                "latency_ns": {"write": lg.write_ns, "read": lg.read_ns}, "writes": lg.writes, "reads": lg.reads,
                "oldest": min(created) if created else None, "newest": max(created) if created else None,
                "associations": sum(len(m.associations) for m in mems.values()) // 2,
                "consolidated": {"nodes": len(self.graph.nodes), "edges": len(self.graph.edges)},
                "forgotten": st.forgotten, "path": None if self.path is None else str(self.path)}

    def integrity(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0] if self.db is not None else "ok"

    def save_ledger(self) -> None:
        """Persist read energy spent since the last write (reads alone write nothing)."""
        if self.db is None or self.readonly:
            return
        lg = self.crossbar.ledger
        if (lg.reads, lg.read_pj) != (self._saved_ledger["reads"], self._saved_ledger["read_pj"]):
            with self.transaction():
                pass

    def close(self) -> None:
        if self.db is not None:
            try:
                self.save_ledger()
            finally:
                self.db.close()
                self.db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def inspect(directory) -> dict:
    """What ``m3edge memory inspect`` shows, read straight from the database (no working set is built, so it is
    quick at any size and safe beside a running writer)."""
    d = Path(directory)
    path = d / DB_NAME
    if not d.is_dir():
        raise MemoryInputError(f"{d}: not a directory")
    if not path.is_file():
        hint = " (an old memory.npz snapshot: it is migrated by the next run with --memory-dir)" \
            if (d / "memory.npz").is_file() else ""
        raise MemoryInputError(f"{d}: no memory store here ({DB_NAME} missing){hint}")
    if empty_file(path):
        raise MemoryInputError(f"{path}: empty memory store (a 0-byte file, no memories yet): the next "
                               f"`m3edge run --memory-dir {d}` makes it a store (or delete it)")
    try:
        db = connect(path, readonly=True)
        try:
            with _sql_transaction(db):  # one snapshot for every number below
                meta = MemoryStore._read_meta(db, path)
                if meta is None:
                    raise MemoryInputError(f"{path}: empty memory store")
                count, oldest, newest = db.execute(
                    "SELECT count(*), min(created), max(created) FROM memories").fetchone()
                assoc = db.execute("SELECT count(*) FROM associations").fetchone()[0]
                assoc //= 2 if meta["schema_version"] == 1 else 1  # version 1 kept a row per direction
                nodes = db.execute("SELECT count(*) FROM nodes").fetchone()[0]
                edges = db.execute("SELECT count(*) FROM edges").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as e:
        raise db_error(e, path) from None
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())
    lg = meta["ledger"]
    return {"count": count, "bytes": size, "device": meta["device"], "seed": meta["seed"],
            "capacity": meta["capacity"], "key_dim": meta["key_dim"], "value_dim": meta["value_dim"],
            "context_dim": meta["context_dim"], "schema_version": meta["schema_version"],
            "energy_pj": {"write": lg["write_pj"], "read": lg["read_pj"]},
            "latency_ns": {"write": lg["write_ns"], "read": lg["read_ns"]}, "writes": lg["writes"],
            "reads": lg["reads"], "oldest": oldest, "newest": newest, "associations": assoc,
            "consolidated": {"nodes": nodes, "edges": edges}, "forgotten": meta["forgotten"], "path": str(path)}


def connect(path: Path, readonly: bool, **kw) -> sqlite3.Connection:
    """A connection to the store's database. Read-only on read-only media: SQLite's ``mode=ro`` still needs
    to create the WAL index (``-shm``) beside the file, which such media refuse; a store that was closed
    cleanly has no write-ahead log left, so it is opened ``immutable`` (no locks, no index). A store with
    a pending log there cannot be read without losing its last writes, and says so."""
    resolved = path.resolve()
    uri = f"file:{resolved}?mode={'ro' if readonly else 'rwc'}"
    db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, **kw)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not readonly:
        return db
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError as e:
        # Read-only media, or a full disk: mode=ro could not make the WAL index. Without a pending log the
        # database file alone is the whole store, and immutable reads it without making anything.
        db.close()
        if not (getattr(e, "sqlite_errorname", "") or "").startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR",
                                                                       "SQLITE_READONLY", "SQLITE_FULL")):
            raise
        wal = Path(f"{resolved}-wal")
        if wal.exists() and wal.stat().st_size:
            raise StorageError(path, f"cannot be read here ({e}) and has an unmerged write-ahead log "
                                     f"({wal.stat().st_size} bytes): copy the directory to writable storage with "
                                     f"free space to read it") from None
    db = sqlite3.connect(f"file:{resolved}?mode=ro&immutable=1", uri=True, timeout=BUSY_TIMEOUT_MS / 1000, **kw)
    return db


def _readonly_fs(d: Path) -> bool:
    try:
        return bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def read_meta_rows(db: sqlite3.Connection, path) -> dict:
    meta = {}
    for k, v in db.execute("SELECT key, value FROM meta"):
        try:
            meta[k] = json.loads(v)
        except (TypeError, ValueError, RecursionError):
            raise CorruptStore(f"{path}: meta {k!r} is not a JSON value ({str(v)[:40]!r})") from None
    return meta


class RowCheck:
    """Every stored memory row, before it is trusted: blob sizes against the store's dimensions (a short blob
    would fail far away, in a matrix product), column types, finite numbers, links and ids consistent.

    One SQL query finds the first malformed row, in SQLite's C rather than a Python check per row (measured at
    100,000 memories on the shared 2-core host: 0.5 s, against 1.3 s to read the rows and ~46 s for the whole
    open, so about 1%); finiteness is one numpy pass over the columns once they are built."""

    def __init__(self, store: "MemoryStore"):
        self.path, self.store = store.path, store
        self.sizes = {"key": store.key_dim * 4, "value": store.value_dim * 4,
                      "context": None if not store.context_dim else store.context_dim * 4, "hashes": N_HASHES * 8}

    def bad(self, mid, what: str):
        raise CorruptStore(f"{self.path}: memory {mid!r}: {what} (a damaged or hand-edited store)")

    def rows(self, db: sqlite3.Connection) -> None:
        z = self.sizes
        row = db.execute(
            "SELECT id, priority, created, last_access, access_count, memory_type, key, value, context, next_byte, "
            "hashes, scene FROM memories WHERE "
            "typeof(key) != 'blob' OR length(key) != :k OR typeof(value) != 'blob' OR length(value) != :v "
            "OR (:c > 0 AND (typeof(context) != 'blob' OR length(context) != :c)) "
            "OR (:c = 0 AND context IS NOT NULL) "
            "OR (hashes IS NOT NULL AND (typeof(hashes) != 'blob' OR length(hashes) != :h)) "
            "OR typeof(priority) NOT IN ('real', 'integer') OR abs(priority) > 1e308 "
            "OR typeof(created) NOT IN ('real', 'integer') OR abs(created) > 1e308 "
            "OR typeof(last_access) NOT IN ('real', 'integer') OR abs(last_access) > 1e308 "
            "OR typeof(access_count) != 'integer' OR access_count < 0 "
            "OR typeof(memory_type) != 'text' OR typeof(scene) != 'text' "
            "OR typeof(next_byte) != 'integer' OR next_byte < -1 OR next_byte > 255 LIMIT 1",
            {"k": z["key"], "v": z["value"], "c": z["context"] or 0, "h": z["hashes"]}).fetchone()
        if row is not None:
            self.explain(row)
            self.bad(row[0], "a column has the wrong type or size")

    def explain(self, row) -> None:
        mid, pr, cr, la, ac, mt, k, v, c, nb, h, scene = row
        for name, blob in (("key", k), ("value", v), ("context", c), ("hashes", h)):
            want = self.sizes[name]
            if blob is None and (name == "hashes" or want is None):
                continue
            if want is None:
                self.bad(mid, "has a context, which this store (no context_dim) keeps none of")
            if not isinstance(blob, bytes) or (want is not None and len(blob) != want) or len(blob) % 4:
                got = f"{len(blob)} bytes" if isinstance(blob, bytes) else f"a {type(blob).__name__}"
                self.bad(mid, f"{name} is {got}, expected {want} bytes")
        for name, x in (("priority", pr), ("created", cr), ("last_access", la)):
            if not _is_num(x):
                self.bad(mid, f"{name} is {x!r}, not a finite number")
        if not _is_int(ac):
            self.bad(mid, f"access_count is {ac!r}, not a count")
        if not _is_int(nb, -1, 255):
            self.bad(mid, f"next_byte is {nb!r}, not a byte or -1")

    def finish(self, storage, assoc: dict, meta: dict) -> None:
        c = storage._cols
        for name in ("key", "value", "context_key"):
            if name in c.cols and not np.isfinite(c.get(name)).all():
                raise CorruptStore(f"{self.path}: a stored {name.replace('_', ' ')} holds NaN or inf (a damaged "
                                   f"store)")
        ids = storage.memories
        if ids and max(ids) >= meta["next_id"]:
            raise CorruptStore(f"{self.path}: meta 'next_id' {meta['next_id']} is not above the largest memory id "
                               f"{max(ids)}")
        for src, links in assoc.items():
            if src not in ids or not all(_is_num(x) for x in links.values()):
                raise CorruptStore(f"{self.path}: associations name memory {src!r}, which is not stored")

    def nodes(self, rows) -> None:
        for i, (nid, vec, count) in enumerate(rows):
            if nid != i or not isinstance(vec, bytes) or len(vec) % 4 or not len(vec) or not _is_int(count, 1):
                raise CorruptStore(f"{self.path}: consolidated node {nid!r} is malformed (a damaged store)")
