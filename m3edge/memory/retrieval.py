"""Retrieval: the ContextualAssociator's fused score over bounded candidates, in numpy.

One function serves the torch agent and the device runtime, so both retrieve the same memories:

  score = 0.4 exp(-age / 1 day) + 0.4 spatial + 0.2 context + 0.5 (task_pref[type] - 1/6)

``spatial`` is the cosine of the sensory keys read through the crossbar (``spatial_read``), ``context`` the
cosine of the learned context encoder's views. Candidates come from ``index.ContextIndex`` (the recent FIFO,
exact / suffix context hashes, the scene); the retrieval mode picks among them:

  factual       exact matches of the query's context only; nothing rather than a near miss
  experiential  semantic neighbours (the FIFO and suffix matches) merged with the scene's memories
  hybrid        both (default)

A ``Segment`` is text being ingested in one batch (a prompt, an eval chunk): row i also sees the segment's
rows j < i, which are compared digitally (they are not programmed into the crossbar yet), so a 4 KB prompt is
one batched pass that still predicts each byte from everything before it. A segment ``after`` all its
queries is the decode steps' experiences not yet written (``m3edge.memory.pending``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from m3edge.config import MEMORY_TYPES
from m3edge.memory.index import BUCKET, RECENT
from m3edge.memory.topk import topk_stable
from m3edge.memory.synaptic import RECENCY_TAU, RETRIEVAL_TEMPERATURE

FUSION = (0.4, 0.4, 0.2)  # temporal, spatial, context: the seed's ContextualAssociator
MODES = ("hybrid", "factual", "experiential")
# The seed's task types and their preferences over the six memory types (each row sums to 1; docs/seed.md),
# and each task's experience-importance weights (complexity, surprise, novelty).
TASK_PREFERENCES = {
    "general": (1 / 6,) * 6,
    "medical_diagnosis": (0.30, 0.35, 0.15, 0.05, 0.05, 0.10),
    "financial_decision": (0.20, 0.30, 0.20, 0.10, 0.05, 0.15),
    "code_generation": (0.15, 0.30, 0.38, 0.02, 0.05, 0.10),
    "creative_writing": (0.25, 0.20, 0.05, 0.30, 0.10, 0.10),
    "general_chat": (0.30, 0.20, 0.10, 0.25, 0.05, 0.10),
}
TASK_IMPORTANCE = {
    "general": (0.4, 0.4, 0.2),
    "medical_diagnosis": (0.3, 0.5, 0.2),
    "financial_decision": (0.3, 0.4, 0.3),
    "code_generation": (0.5, 0.3, 0.2),
    "creative_writing": (0.2, 0.3, 0.5),
    "general_chat": (0.3, 0.3, 0.4),
}
TASK_WEIGHT = 0.5  # how far a task's preference moves a memory's score (at most +-0.2 on a 0..1 scale)
TASK_TYPES = tuple(TASK_PREFERENCES)
# The knowledge graph read on retrieval (the memories consolidated into the nodes of a query's context matches
# and their linked nodes as extra candidates): measured in docs/memory.md, off because it did not help.
GRAPH_READ = False


def check_task(task: str) -> str:
    if task not in TASK_PREFERENCES:
        raise ValueError(f"unknown task type {task!r}; valid: {', '.join(TASK_TYPES)}")
    return task


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown retrieval mode {mode!r}; valid: {', '.join(MODES)}")
    return mode


@functools.lru_cache(maxsize=None)
def _task_vector(task: str) -> np.ndarray:
    v = np.log(np.asarray(TASK_PREFERENCES[task], dtype=np.float64) * len(MEMORY_TYPES)).astype(np.float32)
    v.flags.writeable = False
    return v


def task_vector(task: str) -> np.ndarray:
    """[6] the alignment's task input: log of the task's preference over memory types relative to uniform (zeros
    for ``general``); added to the type scores, it multiplies the type preference by the task's."""
    return _task_vector(check_task(task))


@dataclass
class Segment:
    """Rows being ingested together; row i may retrieve rows j < i. ``values`` are the stored values."""

    key_units: np.ndarray  # [N, m]
    context_keys: np.ndarray  # [N, m]
    next_bytes: np.ndarray  # [N] int64
    hashes: np.ndarray  # [N, orders] int64
    values: np.ndarray  # [N, d]
    after: bool = False  # every query comes after all the rows (held decode writes), not at its own row
    _sorted: list | None = None

    def positions(self, offset: int, n: int) -> np.ndarray:
        """Each query's place in the segment: it may read the rows before it."""
        return np.full(n, len(self.next_bytes)) if self.after else offset + np.arange(n)

    def sorted_hashes(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per hash order, built once per segment: (rows sorted by hash, stably; the sorted hashes; and
        rank(hash) * N + row, ascending, so one searchsorted finds where a hash's rows pass a given row)."""
        if self._sorted is None:
            self._sorted = []
            n = len(self.hashes)
            for o in range(self.hashes.shape[1]):
                idx = np.argsort(self.hashes[:, o], kind="stable")
                keys = self.hashes[idx, o]
                rank = np.concatenate([[0], np.cumsum(keys[1:] != keys[:-1])]) if n else np.zeros(0, np.int64)
                self._sorted.append((idx, keys, rank * n + idx))
        return self._sorted


@dataclass
class Retrieved:
    """The top ``R`` memories per query, best first; padding slots have valid = 0."""

    ids: np.ndarray  # [N, R] int64: stored ids, -1 for segment rows and padding
    scores: np.ndarray  # [N, R] float32 fused scores (0 where invalid)
    next_bytes: np.ndarray  # [N, R] int64: what followed each memory's context
    exact: np.ndarray  # [N, R] float32: 1 where the memory's context equals the query's
    valid: np.ndarray  # [N, R] float32
    values: np.ndarray  # [N, R, d] float32

    def context(self, top_k: int) -> np.ndarray:
        """The associator's context [N, d]: softmax(score / 0.1) over the top ``top_k`` valid memories."""
        k = min(top_k, self.scores.shape[1])
        z = np.where(self.valid[:, :k] > 0, self.scores[:, :k] / RETRIEVAL_TEMPERATURE, -np.inf)
        zmax = z.max(-1, keepdims=True)
        w = np.where(np.isfinite(zmax), np.exp(z - np.where(np.isfinite(zmax), zmax, 0)), 0.0)
        w = w / np.maximum(w.sum(-1, keepdims=True), 1e-30)
        return np.einsum("nk,nkd->nd", w, self.values[:, :k]).astype(np.float32)

    def reconsolidation_groups(self, top_k: int) -> list[list[int]]:
        """Per query, the stored ids among its top ``top_k`` (what a retrieval strengthens)."""
        k = min(top_k, self.ids.shape[1])
        return [[i for i, v in zip(row, ok) if i >= 0 and v > 0] for row, ok in zip(self.ids[:, :k].tolist(),
                                                                                   self.valid[:, :k].tolist())]


def empty(n: int, r: int, d: int) -> Retrieved:
    return Retrieved(np.full((n, r), -1, np.int64), np.zeros((n, r), np.float32), np.zeros((n, r), np.int64),
                     np.zeros((n, r), np.float32), np.zeros((n, r), np.float32), np.zeros((n, r, d), np.float32))


def _type_bonus(task: str, type_ids: np.ndarray) -> np.ndarray:
    pref = np.asarray(TASK_PREFERENCES[task], dtype=np.float32)
    return TASK_WEIGHT * (pref[type_ids] - 1.0 / len(pref))


def retrieve(storage, spatial_read, key_units: np.ndarray, context_keys: np.ndarray, hashes: np.ndarray, r: int,
             d: int, now: float, mode: str = "hybrid", task: str = "general", scene: str = "",
             segment: Segment | None = None, rows_per_chunk: int = 256, graph=None) -> Retrieved:
    """The top ``r`` memories for each query [N, m] (unit keys, unit context keys, context hashes).

    ``storage`` is a SynapticStorage whose memories carry ``context_key``, ``next_byte``, ``hashes`` and
    ``type_id`` columns; ``spatial_read(query_units, rows)`` returns the crossbar's [N, len(rows)] read of those
    stored rows. ``graph``: the knowledge graph, read for extra candidates when ``GRAPH_READ``."""
    check_mode(mode)
    graph = graph if GRAPH_READ else None
    check_task(task)
    n = len(key_units)
    if n <= rows_per_chunk:
        return _retrieve_rows(storage, spatial_read, key_units, context_keys, hashes, r, d, now, mode, task, scene,
                              segment, 0, graph)
    out = empty(n, r, d)
    for s in range(0, n, rows_per_chunk):
        e = min(n, s + rows_per_chunk)
        part = _retrieve_rows(storage, spatial_read, key_units[s:e], None if context_keys is None else context_keys[s:e],
                              hashes[s:e], r, d, now,
                              mode, task, scene, segment, s, graph)
        for name in ("ids", "scores", "next_bytes", "exact", "valid", "values"):
            getattr(out, name)[s:e] = getattr(part, name)
    return out


def _segment_candidates(segment: Segment, qh: np.ndarray, offset: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Segment rows the queries offset.. may read, and a [n, rows] mask: each query's FIFO window of the rows
    before it, plus (beyond the window) the BUCKET most recent earlier rows sharing its exact or suffix hash, as
    the index would hold them had those rows been stored one at a time."""
    n = len(qh)
    q = segment.positions(offset, n)
    if segment.after and mode != "factual" and len(segment.next_bytes) <= RECENT:
        # Held decode rows (at most a batch of them): every query's window holds all of them, and no hash match
        # can lie beyond it. What the general path below gives, without its per-row dictionaries.
        return np.arange(len(segment.next_bytes)), np.ones((n, len(segment.next_bytes)), bool)
    # factual reads no window: only exact matches (added below)
    window_rows = np.arange(0) if mode == "factual" else np.arange(max(0, int(q[0]) - RECENT),
                                                                   min(len(segment.next_bytes), int(q[-1]) + 1))
    orders = [0] if mode == "factual" else ([1, 2] if mode == "experiential" else [0, 1, 2])
    beyond = q - (RECENT if mode != "factual" else 0)  # a query's hash matches lie before this row
    owners, found = [], []
    for o in orders:  # each query's matching rows before ``beyond``, the BUCKET latest: a slice of idx each
        idx, keys, ranked = segment.sorted_hashes()[o]
        left = np.searchsorted(keys, qh[:, o], side="left")
        hit = np.flatnonzero(left < len(keys))
        hit = hit[keys[left[hit]] == qh[hit, o]]
        if not len(hit):
            continue
        base = ranked[left[hit]] - idx[left[hit]]  # rank(hash) * N of each query's hash
        end = np.searchsorted(ranked, base + beyond[hit], side="left")
        start = np.maximum(left[hit], end - BUCKET)
        lens = np.maximum(end - start, 0)
        owners.append(np.repeat(hit, lens))
        found.append(idx[np.repeat(start - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())])
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    rows = np.concatenate(found) if found else np.zeros(0, np.int64)
    seg_rows = np.union1d(window_rows, rows)
    j = seg_rows[None, :]
    window = (j < q[:, None]) & (j >= q[:, None] - RECENT) if mode != "factual" else np.zeros((n, len(seg_rows)), bool)
    window[owner, np.searchsorted(seg_rows, rows)] = True
    return seg_rows, window


def candidate_rows(per_query: list[list[int]], id_array: np.ndarray, below: int) -> np.ndarray:
    """[n, E] the rows of each query's candidate ids that lie below row ``below`` (older than the FIFO),
    unique and ascending, padded with -1: one searchsorted for the whole batch."""
    n = len(per_query)
    lens = [len(q) for q in per_query]
    if not sum(lens):
        return np.zeros((n, 0), np.int64)
    if n == 1:  # a decode step: the general path's sorts and scatter for one row cost ~5x this
        rows = np.searchsorted(id_array, np.asarray(per_query[0], np.int64))
        # a few dozen ids: Python's set and sort beat np.unique's wrapper
        return np.fromiter(sorted(set(rows[rows < below].tolist())), np.int64)[None, :]
    flat = np.searchsorted(id_array, np.fromiter((i for q in per_query for i in q), np.int64, sum(lens)))
    owner = np.repeat(np.arange(n), lens)
    keep = flat < below
    flat, owner = flat[keep], owner[keep]
    order = np.lexsort((flat, owner))
    flat, owner = flat[order], owner[order]
    first = np.ones(len(flat), dtype=bool)
    first[1:] = (flat[1:] != flat[:-1]) | (owner[1:] != owner[:-1])
    flat, owner = flat[first], owner[first]
    counts = np.bincount(owner, minlength=n)
    out = np.full((n, int(counts.max()) if len(counts) else 0), -1, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out[owner, np.arange(len(flat)) - starts[owner]] = flat
    return out


def _stored_scores(cols, sel, spatial_read, qu, qc, now, task):
    """Fused scores of stored rows: ``sel`` a slice (every query, [n, C]) or an [n, E] index array (each query
    its own rows, gathered); with their exact hashes and next bytes, shaped alike."""
    gathered = isinstance(sel, np.ndarray)
    ages = np.maximum(now - cols.get("created")[sel], 0)
    temporal = np.exp(-ages / RECENCY_TAU)
    score = FUSION[0] * (temporal if gathered else temporal[None, :]) + FUSION[1] * spatial_read(qu, sel)
    if qc is not None and "context_key" in cols.cols:
        ck = cols.get("context_key")[sel]
        score = score + FUSION[2] * (np.einsum("nm,nem->ne", qc, ck) if gathered else qc @ ck.T)
    bonus = _type_bonus(task, cols.get("type_id")[sel])
    score = (score + (bonus if gathered else bonus[None, :])).astype(np.float32)
    return score, cols.get("hashes")[sel, 0], cols.get("next_byte")[sel]


def _retrieve_rows(storage, spatial_read, qu, qc, qh, r, d, now, mode, task, scene, segment, offset,
                   graph=None) -> Retrieved:
    """One chunk of queries. Candidates are columns of one score matrix, [each query's own (hash and scene
    matches) | the stored FIFO | segment rows]; only scores are built for all of them, and ids, next bytes,
    exactness and values are gathered for the top ``r`` alone (a 4 KB prompt scores ~2,000 candidates a row)."""
    n = len(qu)
    m = len(storage)
    index = storage.index
    alive = storage.memories
    cols = storage._cols
    id_array = cols.id_array()
    factual = mode == "factual"
    recent0 = m if factual else max(0, m - RECENT)  # factual reads no FIFO, only exact matches
    # Each query's own candidates beyond the FIFO (hash and scene matches), gathered per query: [n, E] rows,
    # ascending (older first, for ties), padded with -1.
    per_query = []
    for i in range(n):
        ids: list[int] = []
        if mode != "experiential":
            ids += index.exact(qh[i], alive)
        if not factual:
            ids += index.suffix(qh[i], alive) + index.scene(scene, alive)
            if graph is not None:
                ids += graph.neighbours(ids, alive, BUCKET)
        per_query.append(ids)
    extra = candidate_rows(per_query, id_array, recent0)
    seg_rows, causal = (_segment_candidates(segment, qh, offset, mode) if segment is not None
                        else (np.zeros(0, np.int64), None))
    # A prompt's stored FIFO: its oldest rows fall out of the window of a query ``RECENT`` rows in, so columns no
    # query of the chunk can read are not scored at all (12 of a 4 KB prompt's 16 chunks read none). Held decode
    # rows (``after``) would skip a few dozen columns at most: they keep the whole FIFO.
    q = segment.positions(offset, n) if segment is not None else None
    fifo0 = recent0 if q is None or segment.after else max(recent0, m - max(0, RECENT - int(q.min())))
    e_w, f_w, s_w = extra.shape[1], m - fifo0, len(seg_rows)
    score = np.empty((n, e_w + f_w + s_w), np.float32)
    if e_w:
        safe = np.maximum(extra, 0)
        s, h, b = _stored_scores(cols, safe, spatial_read, qu, qc, now, task)
        ok = (extra >= 0) & (b >= 0)  # b < 0: a memory from before schema 3 cannot be read
        if factual:
            ok &= h == qh[:, :1]
        score[:, :e_w] = np.where(ok, s, -np.inf)
    if f_w:  # the FIFO: a slice of the columns (a view, not a copy), every query's candidates
        s, _, b = _stored_scores(cols, slice(fifo0, m), spatial_read, qu, qc, now, task)
        fifo = score[:, e_w:e_w + f_w]
        fifo[:] = s
        fifo[:, b < 0] = -np.inf
        if q is not None:  # a segment row's FIFO holds the segment rows before it: fewer stored ones
            for i, qi in enumerate(q.tolist()):
                fifo[i, :max(0, f_w - max(0, RECENT - qi))] = -np.inf
    if s_w:
        if factual:
            causal &= segment.hashes[seg_rows, 0][None, :] == qh[:, :1]
        # Rows of the batch are not typed yet (their type comes from this very step), so no task bonus.
        sscore = (FUSION[0] + FUSION[1] * (qu @ segment.key_units[seg_rows].T)
                  + (0.0 if qc is None else FUSION[2] * (qc @ segment.context_keys[seg_rows].T)))
        score[:, e_w + f_w:] = np.where(causal, sscore, -np.inf)
    res = empty(n, r, d)
    k = min(r, score.shape[1])
    if k == 0:
        return res
    top, idx = topk_stable(score, k)
    valid = np.isfinite(top)
    res.scores[:, :k] = np.where(valid, top, 0)
    res.valid[:, :k] = valid
    # Where each chosen column comes from: a stored row (own candidates or FIFO) or a segment row.
    is_seg = idx >= e_w + f_w
    row = np.where(idx < e_w, extra[np.arange(n)[:, None], np.minimum(idx, max(e_w - 1, 0))] if e_w else 0,
                   fifo0 + idx - e_w)
    row = np.where(is_seg | ~valid, 0, row)
    srow = seg_rows[np.minimum(np.maximum(idx - e_w - f_w, 0), max(s_w - 1, 0))] if s_w else np.zeros_like(idx)
    stored_ok = valid & ~is_seg
    seg_ok = valid & is_seg
    res.ids[:, :k] = np.where(stored_ok, id_array[row] if m else -1, -1)
    nb = np.zeros(idx.shape, np.int64)
    hx = np.zeros(idx.shape, np.int64)
    if m:
        nb = np.where(stored_ok, cols.get("next_byte")[row], nb)
        hx = np.where(stored_ok, cols.get("hashes")[row, 0], hx)
    if s_w:
        nb = np.where(seg_ok, segment.next_bytes[srow], nb)
        hx = np.where(seg_ok, segment.hashes[srow, 0], hx)
    res.next_bytes[:, :k] = nb
    res.exact[:, :k] = (hx == qh[:, :1]) & valid
    if stored_ok.any():
        res.values[:, :k][stored_ok] = cols.get("value")[row[stored_ok]]
    if seg_ok.any():
        res.values[:, :k][seg_ok] = segment.values[srow[seg_ok]]
    return res
