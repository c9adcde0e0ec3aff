"""m3edge.memory.index and .retrieval: bounded candidates, the retrieval modes, task preferences, segments."""

import numpy as np
import pytest

from m3edge.memory import index as ix
from m3edge.memory import retrieval as rv
from m3edge.memory.synaptic import SynapticStorage, store_experiences, unit

CONTEXT = 8
ORDERS = ix.suffix_orders(CONTEXT)


def test_equal_contexts_hash_equal_and_suffixes_are_shared():
    w = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 9, 9, 5, 6, 7, 8],
                  [9, 9, 9, 9, 9, 9, 7, 9]])
    h = ix.window_hashes(w, ORDERS)
    assert ORDERS == (8, 4, 2) and h.shape == (4, 3) and h.dtype == np.int64
    assert (h[0] == h[1]).all()
    assert h[0, 0] != h[2, 0] and h[0, 1] == h[2, 1] and h[0, 2] == h[2, 2]  # same last 4 bytes
    assert (h[3] != h[0]).all() and (h != 0).all()


def test_a_bucket_keeps_only_its_most_recent_ids_and_drops_forgotten_ones():
    idx = ix.ContextIndex(0)
    for mid in range(ix.BUCKET + 10):
        idx.add(mid, np.array([7, 8, 9]), "kitchen")
    alive = set(range(5, ix.BUCKET + 10)) - {20}
    assert idx.exact([7, 0, 0], alive) == [i for i in range(10, ix.BUCKET + 10) if i != 20]
    assert len(idx.suffix([0, 8, 9], alive)) == 2 * (ix.BUCKET - 1)
    assert idx.scene("kitchen", alive)[-1] == ix.BUCKET + 9 and idx.scene("", alive) == []


def store(n: int, rng, windows=None, scene: str = "", types=None, clock=lambda: 100.0):
    """A SynapticStorage with n memories carrying what the retrieval reads."""
    s = SynapticStorage(capacity=100_000, clock=clock)
    keys = rng.normal(size=(n, 8)).astype(np.float32)
    windows = rng.integers(0, 256, (n, CONTEXT)) if windows is None else windows
    h = ix.window_hashes(windows, ORDERS)
    ctx = unit(rng.normal(size=(n, 8)).astype(np.float32))
    types = np.zeros(n, np.int64) if types is None else types
    extras = [{"context_key": ctx[i], "next_byte": np.int64(i % 256), "hashes": h[i], "type_id": np.int64(types[i]),
               "scene": scene} for i in range(n)]
    store_experiences(s, keys, rng.normal(size=(n, 4)).astype(np.float32), np.full(n, 0.5), np.full(n, 0.5), extras)
    return s, keys, ctx, h


def exact_read(s):
    """An exact crossbar: rows a slice (every query) or an [n, E] array (each query its own rows)."""
    def read(q, rows):
        if isinstance(rows, np.ndarray) and rows.ndim == 2:
            return np.einsum("nm,nem->ne", q, s.unit_keys()[rows])
        return q @ s.unit_keys()[rows].T
    return read


def test_factual_returns_exact_matches_only_and_nothing_rather_than_a_near_miss():
    rng = np.random.default_rng(0)
    s, keys, ctx, h = store(50, rng)
    q = unit(keys[[7]])
    got = rv.retrieve(s, exact_read(s), q, ctx[[7]], h[[7]], 4, 4, 100.0, mode="factual")
    assert got.valid.tolist() == [[1, 0, 0, 0]] and got.ids[0, 0] == 7 and got.exact[0, 0] == 1
    assert got.next_bytes[0, 0] == 7
    miss = ix.window_hashes(np.full((1, CONTEXT), 3), ORDERS)  # a context never seen: the same key, no match
    none = rv.retrieve(s, exact_read(s), q, ctx[[7]], miss, 4, 4, 100.0, mode="factual")
    assert none.valid.sum() == 0 and (none.ids == -1).all()
    near = rv.retrieve(s, exact_read(s), q, ctx[[7]], miss, 4, 4, 100.0, mode="hybrid")
    assert near.valid.sum() == 4 and near.ids[0, 0] == 7  # hybrid still finds the nearest key


def test_experiential_merges_the_scene_beyond_the_fifo():
    rng = np.random.default_rng(1)
    s, keys, ctx, h = store(10, rng, scene="garden")
    s2, *_ = store(1, rng)  # noqa: F841
    extra_keys = rng.normal(size=(ix.RECENT, 8)).astype(np.float32)
    e = [{"context_key": unit(extra_keys[i]), "next_byte": np.int64(1), "hashes": np.array([5, 6, 7], np.int64),
          "type_id": np.int64(0)} for i in range(ix.RECENT)]
    store_experiences(s, extra_keys, np.zeros((ix.RECENT, 4)), np.zeros(ix.RECENT), np.zeros(ix.RECENT), e)
    q, qc, qh = unit(keys[[3]]), ctx[[3]], np.array([[11, 12, 13]])  # no hash match: only FIFO and scene
    with_scene = rv.retrieve(s, exact_read(s), q, qc, qh, 4, 4, 100.0, "experiential", scene="garden")
    without = rv.retrieve(s, exact_read(s), q, qc, qh, 4, 4, 100.0, "experiential")
    assert with_scene.ids[0, 0] == 3  # outside the FIFO, found through its scene
    assert 3 not in without.ids[0].tolist() and (without.ids[0] >= 10).all()


def test_a_task_prefers_its_memory_types():
    rng = np.random.default_rng(2)
    w = np.tile(np.arange(CONTEXT), (12, 1))  # one context: every memory an exact match
    types = np.array([2] * 6 + [3] * 6)  # procedural, emotional
    s, keys, ctx, h = store(12, rng, windows=w, types=types)
    q, qc = unit(keys[:1]), ctx[:1]
    code = rv.retrieve(s, exact_read(s), q, qc, h[:1], 6, 4, 100.0, task="code_generation")
    art = rv.retrieve(s, exact_read(s), q, qc, h[:1], 6, 4, 100.0, task="creative_writing")
    assert (types[code.ids[0]] == 2).sum() > (types[art.ids[0]] == 2).sum()
    general = rv.retrieve(s, exact_read(s), q, qc, h[:1], 6, 4, 100.0)
    assert np.allclose(general.scores, rv.retrieve(s, exact_read(s), q, qc, h[:1], 6, 4, 100.0, task="general").scores)
    with pytest.raises(ValueError, match="unknown task type 'poetry'"):
        rv.retrieve(s, exact_read(s), q, qc, h[:1], 6, 4, 100.0, task="poetry")
    with pytest.raises(ValueError, match="unknown retrieval mode"):
        rv.retrieve(s, exact_read(s), q, qc, h[:1], 6, 4, 100.0, mode="fuzzy")


def test_a_segment_row_reads_only_the_rows_before_it_and_far_exact_matches():
    rng = np.random.default_rng(3)
    n = ix.RECENT + 300
    w = rng.integers(0, 256, (n, CONTEXT))
    w[-1] = w[5]  # the last row's context was seen at row 5, far outside its FIFO
    keys = unit(rng.normal(size=(n, 8)).astype(np.float32))
    ctx = unit(rng.normal(size=(n, 8)).astype(np.float32))
    keys[-1], ctx[-1] = keys[5], ctx[5]  # the same context gives the same keys
    seg = rv.Segment(keys, ctx, np.arange(n) % 256, ix.window_hashes(w, ORDERS), rng.normal(size=(n, 4)).astype(np.float32))
    s = SynapticStorage(clock=lambda: 0.0)
    got = rv.retrieve(s, exact_read(s), keys, ctx, seg.hashes, 8, 4, 0.0, segment=seg)
    assert got.valid[0].sum() == 0  # the first row has nothing before it
    assert got.valid[1].sum() == 1 and got.next_bytes[1, 0] == 0  # the second sees the first
    assert (got.ids == -1).all()  # segment rows are not stored ids
    assert got.exact[-1, 0] == 1 and got.next_bytes[-1, 0] == 5  # row 5 found by its hash, ranked first
    small = rv.Segment(keys[:50], ctx[:50], np.arange(50), seg.hashes[:50], seg.values[:50])
    got = rv.retrieve(s, exact_read(s), keys[:50], ctx[:50], seg.hashes[:50], 8, 4, 0.0, segment=small)
    for r in range(50):  # causal: row r reads rows j < r only (their next bytes are their indices here)
        assert got.valid[r].sum() == min(r, 8) and (got.next_bytes[r][got.valid[r] > 0] < r).all()


def test_a_long_segment_reads_the_stored_fifo_only_while_its_window_reaches_back():
    """A prompt after stored memories: row p's window holds the last RECENT - p stored rows, none from row
    RECENT on (chunks score only the stored columns one of their rows can read: one row per chunk, where each
    row scores exactly its own, gives the same answer)."""
    rng = np.random.default_rng(5)
    s = SynapticStorage(clock=lambda: 0.0)
    m = ix.RECENT + 200
    sk = rng.normal(size=(m, 8)).astype(np.float32)
    e = [{"context_key": unit(sk[i]), "next_byte": np.int64(i % 256), "hashes": np.array([1, 2, 3], np.int64) + 3 * i,
          "type_id": np.int64(0)} for i in range(m)]  # hashes no segment row shares
    store_experiences(s, sk, np.zeros((m, 4)), np.zeros(m), np.zeros(m), e)
    n = ix.RECENT + 300
    keys = unit(rng.normal(size=(n, 8)).astype(np.float32))
    ctx = unit(rng.normal(size=(n, 8)).astype(np.float32))
    hashes = rng.integers(10 ** 9, 2 * 10 ** 9, (n, 3))
    seg = rv.Segment(keys, ctx, np.arange(n) % 256, hashes, rng.normal(size=(n, 4)).astype(np.float32))
    got = rv.retrieve(s, exact_read(s), keys, ctx, hashes, 8, 4, 0.0, segment=seg)
    one = rv.retrieve(s, exact_read(s), keys, ctx, hashes, 8, 4, 0.0, segment=seg, rows_per_chunk=1)
    for f in ("ids", "next_bytes", "exact", "valid", "values"):
        assert np.array_equal(getattr(got, f), getattr(one, f)), f
    assert np.allclose(got.scores, one.scores, rtol=0, atol=1e-6)  # a one-row product rounds apart in the last bit
    ids = s._cols.id_array()
    assert (got.ids[0] >= 0).all()  # the first row reads stored rows only
    for p in range(ix.RECENT):
        assert set(got.ids[p][got.ids[p] >= 0].tolist()) <= set(ids[m - (ix.RECENT - p):].tolist()), p
    assert (got.ids[ix.RECENT:] == -1).all()  # from row RECENT on, only segment rows
    assert got.valid[ix.RECENT:].all()
