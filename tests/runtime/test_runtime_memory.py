"""The device's long-term memory reproduces the torch memory system on the ideal device."""

import numpy as np
import torch

from m3edge.model.memory import M3MemorySystem
from m3edge.runtime.memory import LongTermMemory

from conftest import memory_step


def test_retrieval_and_storage_match_the_torch_memory(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    t = [1000.0]
    clock = lambda: t[0]  # noqa: E731
    ref = M3MemorySystem(tiny_cfg, clock=clock).eval()
    dev = LongTermMemory(tiny_cfg.d_model, tiny_cfg.memory_top_k, clock=clock)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for step in range(6):
            state = torch.from_numpy(rng.normal(size=(5, tiny_cfg.d_model)).astype(np.float32))
            memory_step(ref, dev, state, rng, step)
            t[0] += 7200.0  # two hours: the forgetting rate applies
    for i, m in ref.storage.memories.items():
        d = dev.storage.memories[i]
        assert d.priority == m.priority and d.access_count == m.access_count
        assert d.associations.keys() == m.associations.keys()
        assert all(abs(d.associations[j] - s) < 1e-12 for j, s in m.associations.items())

    dev.save(tmp_path / "mem")
    again = LongTermMemory(tiny_cfg.d_model, tiny_cfg.memory_top_k, clock=clock)
    again.load(tmp_path / "mem")
    q = rng.normal(size=(3, tiny_cfg.memory_dim)).astype(np.float32)
    qc = q / np.linalg.norm(q, axis=1, keepdims=True)
    h = ref.hashes(rng.integers(0, 3, (3, tiny_cfg.context)))
    a, b = (m.read(q, qc, h, tiny_cfg.memory_read_k, reconsolidate=False) for m in (again, dev))
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores) and np.array_equal(a.values, b.values)
    assert len(again) == len(dev) == 30


def old_snapshot(d, n=3, d_model=8, dim=4):
    """A memory dir as m3edge wrote it before the durable store: one memory.npz."""
    import json

    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    keys, ctx = rng.normal(size=(n, dim)).astype(np.float32), rng.normal(size=(n, dim)).astype(np.float32)
    values = rng.normal(size=(n, d_model)).astype(np.float32)
    meta = {"version": 1, "d_model": d_model, "count": n, "next_id": n + 2, "last_decay": 5.0,
            "memories": [{"id": i + 2, "priority": 0.1 * i, "created": 1.0 + i, "last_access": 2.0 + i,
                          "access_count": i, "memory_type": "episodic",
                          "associations": {str(j + 2): 0.5 for j in range(n) if j != i}} for i in range(n)]}
    np.savez(d / "memory.npz", keys=keys, values=values, context_keys=ctx,
             index=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    return meta, keys, values


def test_an_old_snapshot_is_migrated_into_the_store(tmp_path):
    meta, keys, values = old_snapshot(tmp_path / "m")
    mem = LongTermMemory(8, clock=lambda: 10.0)
    mem.load(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if "-" not in p.name) == ["memory.npz.migrated",
                                                                                     "memory.sqlite"]
    for row, m in enumerate(meta["memories"]):
        got = mem.storage.memories[m["id"]]
        assert got.priority == m["priority"] and got.access_count == m["access_count"]
        assert got.associations == {int(k): v for k, v in m["associations"].items()}
        assert np.array_equal(got.value, values[row])
    mem.close()
    again = LongTermMemory(8, clock=lambda: 10.0)
    again.load(tmp_path / "m")  # the store now, not the snapshot
    assert len(again) == 3 and again.storage._next_id == meta["next_id"]


def test_memory_dir_errors_are_bad_input(tmp_path):
    import pytest

    from m3edge.errors import BadInput

    mem = LongTermMemory(8, clock=lambda: 0.0)
    mem.store(np.ones((2, 4), np.float32), np.ones((2, 4), np.float32) / 2, np.ones((2, 8), np.float32),
              np.ones(2), np.ones(2))
    mem.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["memory.sqlite"]  # WAL checkpointed at close
    with pytest.raises(BadInput, match="d_model 8"):
        LongTermMemory(16).load(tmp_path / "m")
    (tmp_path / "m" / "memory.sqlite").write_bytes(b"garbage" * 1000)
    with pytest.raises(BadInput, match="not a readable memory store"):
        LongTermMemory(8).load(tmp_path / "m")
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadInput, match="must be a directory"):
        LongTermMemory(8).load(tmp_path / "f")
    old_snapshot(tmp_path / "bad")
    (tmp_path / "bad" / "memory.npz").write_bytes(b"garbage")
    with pytest.raises(BadInput, match="unreadable memory snapshot"):
        LongTermMemory(8).load(tmp_path / "bad")
