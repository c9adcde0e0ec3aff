"""Decode experiences are held and written in batches, yet read at once (m3edge/memory/pending.py)."""

import numpy as np

from m3edge.memory.index import suffix_orders, window_hashes
from m3edge.memory.pending import FLUSH_ROWS
from m3edge.runtime.memory import LongTermMemory


def row(rng, d=8, m=4, window=None):
    key = rng.normal(size=(1, m)).astype(np.float32)
    ctx = key / np.linalg.norm(key)
    w = rng.integers(0, 256, (1, 16)) if window is None else window
    return key, ctx, rng.normal(size=(1, d)).astype(np.float32), window_hashes(w, suffix_orders(16))


def store_held(mem, rng, next_byte=7, scene="", task="general", window=None):
    key, ctx, value, h = row(rng, window=window)
    return mem.store(key, ctx, value, [0.5], [0.5], np.array([next_byte]), h, np.array([0]), scene, task,
                     defer=True), (key, ctx, h)


def test_a_held_row_is_read_before_it_is_written_then_written_in_one_batch():
    rng = np.random.default_rng(0)
    mem = LongTermMemory(8, 5, capacity=1000)
    window = rng.integers(0, 256, (1, 16))
    ids, (key, ctx, h) = store_held(mem, rng, next_byte=42, window=window)
    assert ids == [] and len(mem) == 1 and len(mem.pending) == 1 and mem.store_ is None
    # factual: only an exact context match, and the held row is one
    got = mem.read(key, ctx, h, 4, mode="factual")
    assert got.valid[0, 0] == 1 and got.exact[0, 0] == 1 and got.next_bytes[0, 0] == 42 and got.ids[0, 0] == -1
    other = row(rng)
    assert mem.read(other[0], other[1], other[3], 4, mode="factual").valid.sum() == 0  # no near miss
    written = []
    for _ in range(FLUSH_ROWS - 1):
        written += store_held(mem, rng)[0]
    assert len(written) == FLUSH_ROWS and len(mem.pending) == 0 and len(mem.store_.storage) == FLUSH_ROWS
    got = mem.read(key, ctx, h, 4, mode="factual")  # now from the store, with its id
    assert got.next_bytes[0, 0] == 42 and got.ids[0, 0] == written[0]


def test_a_change_of_scene_or_task_a_prompt_or_a_save_writes_what_is_held(tmp_path):
    rng = np.random.default_rng(1)
    mem = LongTermMemory(8, 5, capacity=1000)
    store_held(mem, rng, scene="a")
    store_held(mem, rng, scene="b")  # another scene: the first row is written first
    assert len(mem.store_.storage) == 1 and len(mem.pending) == 1
    store_held(mem, rng, scene="b", task="code_generation")
    assert len(mem.store_.storage) == 2
    key, ctx, value, h = row(rng)
    mem.store(key, ctx, value, [0.5], [0.5], np.array([1]), h, np.array([0]))  # not deferred: held rows first
    assert len(mem.store_.storage) == 4 and len(mem.pending) == 0
    store_held(mem, rng)
    mem.save(tmp_path / "m")
    again = LongTermMemory(8, 5, capacity=1000)
    again.load(tmp_path / "m")
    assert len(again) == 5
