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
one batched pass that still predicts each byte from everything before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m3edge.config import MEMORY_TYPES
from m3edge.memory.index import BUCKET, RECENT
from m3edge.memory.synaptic import RECENCY_TAU, RETRIEVAL_TEMPERATURE

FUSION = (0.4, 0.4, 0.2)  # temporal, spatial, context: the seed's ContextualAssociator
MODES = ("hybrid", "factual", "experiential")
# The seed's task types and their preferences over the six memory types (each row sums to 1; docs/seed.md),
# and each task's experience-importance weights (complexity, surprise, novelty).
TASK_PREFERENCES = {
    "general": (1 / 6,) * 6,
    "medical_diagnosis": (0.30, 0.35, 0.15, 0.05, 0.05, 0.10),
    "financial_decision": (0.20, 0.30, 0.20, 0.10, 0.05, 0.15),
    "code_generation": (0.15, 0.30, 0.40, 0.00, 0.05, 0.10),
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


def check_task(task: str) -> str:
    if task not in TASK_PREFERENCES:
        raise ValueError(f"unknown task type {task!r}; valid: {', '.join(TASK_TYPES)}")
    return task


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown retrieval mode {mode!r}; valid: {', '.join(MODES)}")
    return mode


def task_vector(task: str) -> np.ndarray:
    """[6] multiplicative preference over memory types for the alignment (1 each for ``general``)."""
    return np.asarray(TASK_PREFERENCES[check_task(task)], dtype=np.float32) * len(MEMORY_TYPES)


def topk_stable(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k along the last axis, highest first, ties to the lower index: what a stable descending sort gives,
    in O(n) per row (a partition finds the k-th value; only the few rows at or above it are sorted)."""
    n = scores.shape[-1]
    if k >= n or n <= 64:
        idx = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
        return np.take_along_axis(scores, idx, axis=-1), idx
    flat = scores.reshape(-1, n)
    kth = -np.partition(-flat, k - 1, axis=-1)[:, k - 1:k]  # the k-th highest value per row
    out = np.empty((len(flat), k), dtype=np.int64)
    for i, (row, t) in enumerate(zip(flat, kth[:, 0])):
        above = np.flatnonzero(row > t) if t == t else np.flatnonzero(~np.isnan(row))
        ties = np.flatnonzero(row == t)[: k - len(above)]
        cand = np.concatenate([above, ties])
        out[i] = cand[np.argsort(-row[cand], kind="stable")][:k]
    idx = out.reshape(scores.shape[:-1] + (k,))
    return np.take_along_axis(scores, idx, axis=-1), idx


@dataclass
class Segment:
    """Rows being ingested together; row i may retrieve rows j < i. ``values`` are the stored values."""

    key_units: np.ndarray  # [N, m]
    context_keys: np.ndarray  # [N, m]
    next_bytes: np.ndarray  # [N] int64
    hashes: np.ndarray  # [N, orders] int64
    values: np.ndarray  # [N, d]
    _sorted: list | None = None

    def sorted_hashes(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per hash order: (rows sorted by hash, stably, and the sorted hashes), built once per segment."""
        if self._sorted is None:
            self._sorted = []
            for o in range(self.hashes.shape[1]):
                idx = np.argsort(self.hashes[:, o], kind="stable")
                self._sorted.append((idx, self.hashes[idx, o]))
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
             segment: Segment | None = None, rows_per_chunk: int = 256) -> Retrieved:
    """The top ``r`` memories for each query [N, m] (unit keys, unit context keys, context hashes).

    ``storage`` is a SynapticStorage whose memories carry ``context_key``, ``next_byte``, ``hashes`` and
    ``type_id`` columns; ``spatial_read(query_units, rows)`` returns the crossbar's [N, len(rows)] read of those
    stored rows."""
    check_mode(mode)
    check_task(task)
    n = len(key_units)
    out = empty(n, r, d)
    for s in range(0, n, rows_per_chunk):
        e = min(n, s + rows_per_chunk)
        part = _retrieve_rows(storage, spatial_read, key_units[s:e], None if context_keys is None else context_keys[s:e],
                              hashes[s:e], r, d, now,
                              mode, task, scene, segment, s)
        for name in ("ids", "scores", "next_bytes", "exact", "valid", "values"):
            getattr(out, name)[s:e] = getattr(part, name)
    return out


def _segment_candidates(segment: Segment, qh: np.ndarray, offset: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Segment rows the queries offset.. may read, and a [n, rows] mask: each query's FIFO window of the rows
    before it, plus (beyond the window) the BUCKET most recent earlier rows sharing its exact or suffix hash, as
    the index would hold them had those rows been stored one at a time."""
    n = len(qh)
    q = offset + np.arange(n)
    lo = max(0, offset - RECENT) if mode != "factual" else offset
    cand: dict[int, None] = dict.fromkeys(range(lo if mode != "factual" else offset, offset + n))
    orders = [0] if mode == "factual" else ([1, 2] if mode == "experiential" else [0, 1, 2])
    extra: list[list[int]] = [[] for _ in range(n)]
    sorted_ = segment.sorted_hashes()
    for o in orders:
        idx, keys = sorted_[o]
        left = np.searchsorted(keys, qh[:, o], side="left")
        right = np.searchsorted(keys, qh[:, o], side="right")
        for i in range(n):
            if right[i] == left[i]:
                continue
            rows = idx[left[i]:right[i]]  # ascending row order
            rows = rows[:np.searchsorted(rows, q[i] - (RECENT if mode != "factual" else 0))][-BUCKET:]
            extra[i] += rows.tolist()
    for e in extra:
        cand.update(dict.fromkeys(e))
    seg_rows = np.fromiter(sorted(cand), dtype=np.int64, count=len(cand))
    j = seg_rows[None, :]
    window = (j < q[:, None]) & (j >= q[:, None] - RECENT) if mode != "factual" else np.zeros((n, len(seg_rows)), bool)
    pos = {r: c for c, r in enumerate(seg_rows.tolist())}
    for i, e in enumerate(extra):
        window[i, [pos[r] for r in e]] = True
    return seg_rows, window


def _retrieve_rows(storage, spatial_read, qu, qc, qh, r, d, now, mode, task, scene, segment, offset) -> Retrieved:
    n = len(qu)
    m = len(storage)
    index = storage.index
    alive = storage.memories
    # Stored candidates: one sorted set of rows for the chunk, and a mask of which query may use which.
    recent0 = max(0, m - RECENT)
    per_query: list[list[int]] = []
    for i in range(n):
        ids: list[int] = []
        if mode != "experiential":
            ids += index.exact(qh[i], alive)
        if mode != "factual":
            ids += index.suffix(qh[i], alive) + index.scene(scene, alive)
        per_query.append(ids)
    extra_ids = np.unique(np.asarray([i for ids in per_query for i in ids], dtype=np.int64))
    id_array = storage._cols.id_array()
    extra_rows = np.searchsorted(id_array, extra_ids) if len(extra_ids) else np.zeros(0, np.int64)
    use_fifo = mode != "factual"
    fifo_rows = np.arange(recent0, m) if use_fifo else np.zeros(0, np.int64)
    extra_rows = extra_rows[extra_rows < recent0] if use_fifo else extra_rows
    rows = np.concatenate([extra_rows, fifo_rows]).astype(np.int64)  # ascending: older first (ties)
    mask = np.zeros((n, len(rows)), dtype=bool)
    if len(rows):
        # Columns of the extra rows (the FIFO's rows are every query's candidates, so no lookup is needed).
        col_of = {i: j for j, i in enumerate(id_array[extra_rows].tolist())}
        for i, ids in enumerate(per_query):
            mask[i, [col_of[x] for x in ids if x in col_of]] = True
        if use_fifo:
            fifo0 = len(extra_rows)
            span = len(fifo_rows)
            for i in range(n):  # a segment row's FIFO holds the segment rows before it: fewer stored ones
                drop = 0 if segment is None else max(0, span - max(0, RECENT - (offset + i)))
                mask[i, fifo0 + drop:] = True
    cols = storage._cols
    if len(rows):
        stored_hash = cols.get("hashes")[rows, 0]
        ages = np.maximum(now - cols.get("created")[rows], 0)
        score = (FUSION[0] * np.exp(-ages / RECENCY_TAU)[None, :] + FUSION[1] * spatial_read(qu, rows)
                 + (FUSION[2] * (qc @ cols.get("context_key")[rows].T) if qc is not None and "context_key" in cols.cols
                    else 0.0)
                 + _type_bonus(task, cols.get("type_id")[rows])[None, :]).astype(np.float32)
        # A memory stored without what followed it (a store from before schema 3) cannot be read.
        score = np.where(mask & (cols.get("next_byte")[rows] >= 0)[None, :], score, -np.inf)
        exact = (stored_hash[None, :] == qh[:, :1])
        if mode == "factual":
            score = np.where(exact, score, -np.inf)
        bytes_ = np.broadcast_to(cols.get("next_byte")[rows], score.shape)
        ids = np.broadcast_to(cols.id_array()[rows], score.shape)
    else:
        score = np.zeros((n, 0), np.float32)
        exact = np.zeros((n, 0), bool)
        bytes_ = ids = np.zeros((n, 0), np.int64)
    seg_rows = np.zeros(0, np.int64)
    if segment is not None:
        seg_rows, causal = _segment_candidates(segment, qh, offset, mode)
        seg_exact = segment.hashes[seg_rows, 0][None, :] == qh[:, :1]
        if mode == "factual":
            causal &= seg_exact
        # Rows of the batch are not typed yet (their type comes from this very step), so no task bonus.
        sscore = (FUSION[0] + FUSION[1] * (qu @ segment.key_units[seg_rows].T)
                  + (0.0 if qc is None else FUSION[2] * (qc @ segment.context_keys[seg_rows].T))).astype(np.float32)
        score = np.concatenate([score, np.where(causal, sscore, -np.inf)], axis=1)
        exact = np.concatenate([exact, seg_exact], axis=1)
        bytes_ = np.concatenate([bytes_, np.broadcast_to(segment.next_bytes[seg_rows], (n, len(seg_rows)))], axis=1)
        ids = np.concatenate([ids, np.full((n, len(seg_rows)), -1, np.int64)], axis=1)
    k = min(r, score.shape[1])
    top, idx = topk_stable(score, k)
    valid = np.isfinite(top)
    res = empty(n, r, d)
    if k == 0:
        return res
    res.scores[:, :k] = np.where(valid, top, 0)
    res.valid[:, :k] = valid
    res.exact[:, :k] = np.take_along_axis(exact, idx, 1) & valid
    res.next_bytes[:, :k] = np.where(valid, np.take_along_axis(bytes_, idx, 1), 0)
    res.ids[:, :k] = np.where(valid, np.take_along_axis(ids, idx, 1), -1)
    n_stored = len(rows)
    stored_values = cols.get("value") if m else None
    for c in range(k):
        col = idx[:, c]
        from_store = (col < n_stored) & valid[:, c]
        if from_store.any():
            res.values[from_store, c] = stored_values[rows[col[from_store]]]
        from_seg = (col >= n_stored) & valid[:, c]
        if from_seg.any():
            res.values[from_seg, c] = segment.values[seg_rows[col[from_seg] - n_stored]]
    return res
