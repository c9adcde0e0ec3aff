"""The durable memory store: parity with the torch memory system, crash safety, concurrency, bad input, CLI."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from m3edge.runtime.store import DB_NAME, SCHEMA_VERSION, MemoryInputError, MemoryStore, topk_stable
from m3edge.memory.synaptic import DAY, EVICT_FRACTION

from conftest import ROOT, memory_step, run_cli


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def rows(rng, n, dim=8, base=None):
    """Keys with structure: half of them near a few shared directions, so associations and merges happen."""
    x = rng.normal(size=(n, dim)).astype(np.float32)
    if base is not None:
        x[: n // 2] = base[rng.integers(0, len(base), n // 2)] + 0.3 * x[: n // 2]
    return x


def state_of(storage):
    """Everything the seed's semantics define, comparable across implementations."""
    return {i: (m.priority, m.access_count, m.last_access, m.created, dict(m.associations), m.key.tobytes(),
                m.value.tobytes()) for i, m in storage.memories.items()}


def graph_of(g):
    return ([(n.count, sorted(n.sources), n.vector.tobytes()) for n in g.nodes], sorted(g.edges))


def test_parity_with_the_torch_memory_system_under_ideal(tiny_cfg, tmp_path):
    """The same operations on the torch M3MemorySystem and on the durable store give the same records,
    associations, forgetting, decay, consolidation graph and retrieved context; a reopened store equals both."""
    import torch

    from m3edge.model.memory import M3MemorySystem
    from m3edge.runtime.memory import LongTermMemory

    torch.manual_seed(0)
    clock = Clock()
    ref = M3MemorySystem(tiny_cfg, capacity=40, clock=clock).eval()
    dev = LongTermMemory(tiny_cfg.d_model, tiny_cfg.memory_top_k, capacity=40, clock=clock,
                         distill=ref.distiller.distill_array)  # the learned map, which bundles do not carry
    dev.load(tmp_path / "mem")
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for step in range(14):
            state = torch.from_numpy(rng.normal(size=(6, tiny_cfg.d_model)).astype(np.float32))
            if step % 3 == 2:
                state[3:] = state[:3] + 0.01  # near-duplicates: merges in the graph, strong associations
            memory_step(ref, dev, state, rng, step)
            clock.t += 0.3 * DAY  # decay applies; old memories age toward forgetting
    assert ref.storage.forgotten > 0 and 40 - int(40 * EVICT_FRACTION) <= len(ref.storage) <= 40
    assert state_of(dev.storage) == state_of(ref.storage)
    assert ref.distiller.graph.nodes and graph_of(dev.store_.graph) == graph_of(ref.distiller.graph)
    dev.close()
    again = MemoryStore.open(tmp_path / "mem", clock=clock)
    assert state_of(again.storage) == state_of(ref.storage)  # disk holds exactly the working set
    assert graph_of(again.graph) == graph_of(ref.distiller.graph)
    assert again.storage._next_id == ref.storage._next_id and again.storage._last_decay == ref.storage._last_decay
    assert again.integrity() == "ok"
    again.close()


def test_a_store_without_a_database_keeps_no_journal_of_its_changes():
    s = MemoryStore(key_dim=8, value_dim=4, capacity=20, device="ideal", clock=Clock())
    rng = np.random.default_rng(1)
    for _ in range(10):  # past capacity: stores, links, forgetting, consolidation
        s.store(rows(rng, 6, base=rng.normal(size=(2, 8))), rng.normal(size=(6, 4)), np.full(6, 0.9))
        s.search(rng.normal(size=8), k=3)
    assert s.storage.forgotten and s.graph.nodes
    st = s.storage
    assert (st.new, st.touched, st.gone, st.pairs, st.decays) == ([], set(), set(), set(), [])
    assert s.graph.drain_changes() == (set(), set(), {})


def test_only_a_durable_store_journals_its_changes(tmp_path):
    rng = np.random.default_rng(2)
    mem = MemoryStore(key_dim=8, value_dim=4, capacity=20, device="ideal", clock=Clock())
    assert mem.storage.journaling is False
    durable = MemoryStore.open(tmp_path, key_dim=8, value_dim=4, capacity=20, device="ideal", clock=Clock())
    assert durable.storage.journaling is True
    for _ in range(6):  # past capacity: links, forgetting, reconsolidation, all written back
        k, v = rows(rng, 6, base=rng.normal(size=(2, 8))), rng.normal(size=(6, 4))
        mem.store(k, v, np.full(6, 0.9))
        durable.store(k, v, np.full(6, 0.9))
    durable.close()
    again = MemoryStore.open(tmp_path, clock=Clock())
    links = lambda st: {i: dict(m.associations) for i, m in st.memories.items()}  # noqa: E731
    assert links(again.storage) == links(mem.storage) and len(again.storage) == len(mem.storage)
    again.close()


def test_sqlite_messages_become_one_printable_line():
    from m3edge.runtime.store import db_error

    e = sqlite3.OperationalError("Could not decode to UTF-8 column 'value' with text 'a\nb\x07" + "z" * 400 + "'")
    msg = str(db_error(e, "/x/memory.sqlite"))
    assert "\n" not in msg and msg.isprintable() and "\\x07" in msg and "..." in msg and len(msg) < 400


def test_a_transaction_left_open_when_its_store_closed_finishes_quietly():
    from m3edge.runtime.store import _sql_transaction

    db = sqlite3.connect(":memory:", isolation_level=None)
    ctx = _sql_transaction(db, "BEGIN")
    ctx.__enter__()  # BEGIN ran; the `with` body never started (a SIGTERM landed here)
    db.close()
    exc = SystemExit(143)
    assert ctx.__exit__(SystemExit, exc, None) is False  # the exit goes on (no ProgrammingError instead of it)


def test_topk_matches_a_stable_sort_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, size=(4, 3000)).astype(np.float32)  # many ties
    ref = np.argsort(-s, axis=-1, kind="stable")[:, :10]
    assert np.array_equal(topk_stable(s, 10)[1], ref)


def make(tmp_path, **kw):
    args = dict(key_dim=8, value_dim=4, context_dim=None, capacity=1000, device="ideal", clock=Clock())
    return MemoryStore.open(tmp_path / "m", **(args | kw))


def snapshot_bytes(path):
    """The database's content: its file and whatever its write-ahead log holds."""
    wal = path.parent / (path.name + "-wal")
    return path.read_bytes(), wal.read_bytes() if wal.exists() else b""


@pytest.mark.parametrize("call, word", [
    (lambda s: s.store(np.ones((2, 7)), np.ones((2, 4)), [0.5, 0.5]), r"keys must have shape \[N, 8\]"),
    (lambda s: s.store(np.ones((2, 8)), np.ones((3, 4)), [0.5, 0.5]), r"values must have shape \[2, 4\]"),
    (lambda s: s.store(np.full((1, 8), np.nan), np.ones((1, 4)), [0.5]), "keys holds NaN or inf"),
    (lambda s: s.store(np.ones((1, 8)), np.full((1, 4), np.inf), [0.5]), "values holds NaN or inf"),
    (lambda s: s.store(np.ones((1, 8)), np.ones((1, 4)), [float("nan")]), "priorities holds NaN"),
    (lambda s: s.store(np.ones((1, 8)), np.ones((1, 4)), [0.5], context_keys=np.ones((1, 8))), "no context keys"),
    (lambda s: s.store_experiences(np.ones((2, 8)), np.ones((2, 4)), [0.5], [0.5, 0.5]), "complexity must have 2"),
    (lambda s: s.reconsolidate([[0, 99]]), "unknown memory id 99"),
    (lambda s: s.reconsolidate([["x"]]), "must be integers"),
    (lambda s: s.get(-1), "unknown memory id -1"),
    (lambda s: s.search(np.ones(8), k=0), "k must be a positive integer"),
    (lambda s: s.search(np.ones(3)), r"query must have shape"),
])
def test_bad_input_is_a_value_error_and_writes_nothing(tmp_path, call, word):
    s = make(tmp_path)
    s.store(np.eye(8)[:3], np.ones((3, 4)), [0.2, 0.5, 0.9])
    s.save_ledger()
    before = snapshot_bytes(s.path)
    version = s.db.execute("PRAGMA data_version").fetchone()[0]
    with pytest.raises(ValueError, match=word):
        call(s)
    assert s.db.execute("PRAGMA data_version").fetchone()[0] == version
    assert snapshot_bytes(s.path) == before and len(s.storage) == 3
    s.close()


def test_a_failed_transaction_leaves_memory_and_disk_as_they_were(tmp_path):
    s = make(tmp_path)
    s.store(np.eye(8)[:2], np.ones((2, 4)), [0.5, 0.5])
    with pytest.raises(RuntimeError):
        with s.transaction():
            s.storage.store_many(np.eye(8)[2:4], np.ones((2, 4)), [0.5, 0.5])
            raise RuntimeError("power cut in the middle")
    assert sorted(s.storage.memories) == [0, 1] and s.storage._next_id == 2
    assert s.store(np.eye(8)[5:6], np.ones((1, 4)), [0.5]) == [2]
    s.close()


def test_another_schema_version_is_refused_and_nothing_is_written(tmp_path):
    s = make(tmp_path)
    s.store(np.eye(8)[:2], np.ones((2, 4)), [0.5, 0.5])
    s.db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    s.close()
    before = snapshot_bytes(tmp_path / "m" / DB_NAME)
    for open_it in (lambda: MemoryStore.open(tmp_path / "m"), lambda: MemoryStore.open(tmp_path / "m", readonly=True)):
        with pytest.raises(MemoryInputError, match=f"schema version 99; this m3edge reads version {SCHEMA_VERSION}"):
            open_it()
    assert snapshot_bytes(tmp_path / "m" / DB_NAME) == before
    r = run_cli("memory", "inspect", tmp_path / "m")
    assert r.returncode == 2 and "schema version 99" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_version_1_store_is_read_as_it_is_and_migrated_by_a_writer(tmp_path):
    """Version 1 kept a row per link direction and an index on dst; version 2 keeps one row per link."""
    from m3edge.runtime.store import inspect

    s = make(tmp_path, capacity=30)
    rng = np.random.default_rng(3)
    for _ in range(8):  # past capacity: forgetting removes linked memories too
        s.store(rows(rng, 6, base=rng.normal(size=(2, 8))), rng.normal(size=(6, 4)), rng.random(6))
    s.search(rng.normal(size=8), k=4)  # reconsolidation strengthens links
    want, links = state_of(s.storage), inspect(tmp_path / "m")["associations"]
    assert s.storage.forgotten and links and s.db.execute("SELECT count(*) FROM associations WHERE src < dst").fetchone()[0] == 0
    with s.transaction():  # what version 1 wrote
        s.db.execute("INSERT INTO associations SELECT dst, src, strength FROM associations")
        s.db.execute("CREATE INDEX associations_dst ON associations (dst)")
        s.db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    s.close()
    assert inspect(tmp_path / "m")["associations"] == links
    with MemoryStore.open(tmp_path / "m", readonly=True, clock=Clock()) as r:
        assert state_of(r.storage) == want
    assert inspect(tmp_path / "m")["schema_version"] == 1  # a reader changes nothing
    with MemoryStore.open(tmp_path / "m", clock=Clock()) as w:
        assert state_of(w.storage) == want
        assert w.db.execute("SELECT count(*) FROM associations WHERE src < dst").fetchone()[0] == 0
        assert w.db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'associations_dst'").fetchone()[0] == 0
    info = inspect(tmp_path / "m")
    assert info["schema_version"] == SCHEMA_VERSION == 3 and info["associations"] == links


def test_a_version_2_store_is_migrated_and_its_memories_are_never_read_by_the_reader(tmp_path):
    """Version 2 kept no next byte: its memories stay (and are searchable) but retrieval never returns them."""
    import sqlite3

    s = make(tmp_path, capacity=30)
    rng = np.random.default_rng(4)
    s.store(rows(rng, 6, base=rng.normal(size=(2, 8))), rng.normal(size=(6, 4)), rng.random(6))
    s.close()
    db = sqlite3.connect(tmp_path / "m" / "memory.sqlite")
    db.executescript("ALTER TABLE memories DROP COLUMN next_byte; ALTER TABLE memories DROP COLUMN hashes; "
                     "ALTER TABLE memories DROP COLUMN scene; UPDATE meta SET value = '2' WHERE key = 'schema_version';")
    db.close()
    with MemoryStore.open(tmp_path / "m", clock=Clock()) as w:
        assert len(w.storage) == 6 and {int(m.extra["next_byte"]) for m in w.storage.memories.values()} == {-1}
        q = rows(rng, 1)
        assert len(w.search(q[0], k=3)) == 3
        got = w.retrieve(q / np.linalg.norm(q), None, np.zeros((1, 3), np.int64), 4)
        assert got.valid.sum() == 0
    from m3edge.runtime.store import inspect

    assert inspect(tmp_path / "m")["schema_version"] == 3


def test_open_checks_what_it_is_given(tmp_path):
    make(tmp_path).close()
    with pytest.raises(MemoryInputError, match="key_dim 8, asked for 16"):
        MemoryStore.open(tmp_path / "m", key_dim=16)
    with pytest.raises(ValueError, match="unknown memory device 'optane'"):
        MemoryStore.open(tmp_path / "new", key_dim=8, value_dim=4, device="optane")
    assert not (tmp_path / "new" / DB_NAME).exists() or MemoryStore._read_meta(
        sqlite3.connect(tmp_path / "new" / DB_NAME), tmp_path) is None
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / DB_NAME).execute("CREATE TABLE t (x)")
    with pytest.raises(MemoryInputError, match="not an m3edge memory store"):
        MemoryStore.open(other)


def test_two_handles_see_each_others_writes(tmp_path):
    a = make(tmp_path)
    b = MemoryStore.open(tmp_path / "m", clock=a.clock)
    a.store(np.eye(8)[:2], np.ones((2, 4)), [0.5, 0.5])
    b.store(np.eye(8)[2:3], np.ones((1, 4)), [0.5])  # reloads first: a's rows are kept, ids continue
    assert sorted(b.storage.memories) == [0, 1, 2]
    a.refresh()
    assert sorted(a.storage.memories) == [0, 1, 2]
    a.close(), b.close()


def test_reconsolidating_a_memory_another_writer_forgot_is_an_input_error(tmp_path):
    a = make(tmp_path, capacity=2)
    b = MemoryStore.open(tmp_path / "m", clock=a.clock)
    a.store(np.eye(8)[:2], np.ones((2, 4)), [0.5, 0.5])
    b.refresh()
    a.store(np.eye(8)[2:3], np.ones((1, 4)), [0.9])  # full: a forgets one that b still holds
    (gone,) = set(b.storage.memories) - set(a.storage.memories)
    with pytest.raises(MemoryInputError, match=f"unknown memory id {gone}"):  # checked after b reloads
        b.reconsolidate([[gone]])
    assert sorted(b.storage.memories) == sorted(a.storage.memories)
    a.close(), b.close()


def test_store_reads_through_the_crossbar_and_keeps_its_ledger(tmp_path):
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(200, 8)).astype(np.float32)
    s = make(tmp_path, device="reram")
    s.store(keys, np.ones((200, 4)), np.full(200, 0.5))
    hits = s.search(keys[17], k=5)
    assert hits[0]["id"] == 17  # a stored key finds itself through the noisy array
    st = s.stats()
    assert st["device"] == "reram" and st["count"] == 200 and st["energy_pj"]["write"] > 0 and st["reads"] == 1
    s.close()
    again = MemoryStore.open(tmp_path / "m")
    assert again.stats()["energy_pj"] == st["energy_pj"]  # the read energy was saved at close
    assert np.array_equal(again.crossbar._w, s.crossbar._w)  # the same conductances, rebuilt from the records
    again.close()


def test_write_energy_is_charged_at_store_time_even_if_nothing_is_ever_read(tmp_path):
    s = make(tmp_path, device="reram")
    s.store(np.random.default_rng(1).normal(size=(10, 8)), np.ones((10, 4)), np.full(10, 0.5))
    assert s.stats()["writes"] == 10 and s.stats()["energy_pj"]["write"] > 0
    s.close()
    again = MemoryStore.open(tmp_path / "m")
    again.search(np.ones(8), k=3)  # programs the array: no second charge
    assert again.stats()["writes"] == 10
    again.close()


WRITER = """
import sys, numpy as np
from m3edge.runtime.store import MemoryStore
s = MemoryStore.open(sys.argv[1], key_dim=32, value_dim=4, capacity=100000, device="ideal", synchronous=sys.argv[4])
rng = np.random.default_rng(int(sys.argv[2]))
for i in range(int(sys.argv[3])):
    n = int(rng.integers(1, 8))
    ids = s.store(rng.normal(size=(n, 32)), rng.normal(size=(n, 4)), rng.random(n))
    print(" ".join(map(str, ids)), flush=True)
"""


def test_sigkill_during_thousands_of_stores_loses_nothing_that_returned(tmp_path):
    """A real writer killed at random moments: the database passes integrity_check and holds every store
    that had returned (its ids were printed after the commit). synchronous=NORMAL: in WAL mode a commit survives
    the death of its process either way (FULL adds power-cut safety, which no process kill can test), and the
    test stays quick on a busy machine."""
    d = tmp_path / "m"
    acked: set[int] = set()
    rnd = random.Random(0)
    total_lines = 0
    for round_ in range(3):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(d), str(round_), "3000", "NORMAL"],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
        target = rnd.randint(100, 700)  # stores acknowledged before the kill
        deadline = time.monotonic() + 60
        lines = 0
        while lines < target and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            acked.update(int(x) for x in line.split())
            lines += 1
        time.sleep(rnd.random() * 0.05)  # land somewhere inside a later transaction
        p.send_signal(signal.SIGKILL)
        rest, _ = p.communicate(timeout=30)
        for line in rest.splitlines():  # printed before the kill: committed too
            if line.strip():
                acked.update(int(x) for x in line.split())
        total_lines += lines
        assert p.returncode == -signal.SIGKILL
    assert total_lines >= 200
    db = sqlite3.connect(d / DB_NAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    present = {r[0] for r in db.execute("SELECT id FROM memories")}
    db.close()
    assert acked <= present
    s = MemoryStore.open(d)
    assert set(s.storage.memories) >= acked and s.integrity() == "ok"
    s.close()


READER = """
import sys, time, numpy as np
from m3edge.runtime.store import MemoryStore, inspect
seen = 0
t_end = time.monotonic() + 60
while seen < int(sys.argv[2]) and time.monotonic() < t_end:
    try:
        seen = max(seen, inspect(sys.argv[1])["count"])
        with MemoryStore.open(sys.argv[1], readonly=True) as s:  # the whole working set, built beside the writer
            assert len(s.storage) >= seen, (len(s.storage), seen)
    except Exception as e:
        print("ERR", type(e).__name__, e, flush=True)
        if not any(w in str(e) for w in ("no memory store", "empty memory store", "not a directory")):
            raise  # the writer has not created the store yet: anything else is a failure
with MemoryStore.open(sys.argv[1], readonly=True) as s:
    print("OK", seen, len(s.search(np.ones(32), k=3)), flush=True)
"""


def test_a_reader_and_a_writer_in_two_processes_never_see_database_is_locked(tmp_path):
    d = tmp_path / "m"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(d), "7", "400", "FULL"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(d), "1000"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _, werr = writer.communicate(timeout=120)
    out, rerr = reader.communicate(timeout=120)
    assert writer.returncode == 0, werr
    assert reader.returncode == 0, rerr
    assert "locked" not in werr + rerr + out
    assert out.strip().splitlines()[-1].startswith("OK")


def test_memory_inspect_cli(tmp_path):
    clock = Clock(1_700_000_000.0)
    s = make(tmp_path, device="pcm", clock=clock)
    s.store(np.eye(8)[:3], np.ones((3, 4)), [0.2, 0.5, 0.9])
    clock.t += 60
    s.store(np.eye(8)[3:5], np.ones((2, 4)), [0.2, 0.5])
    s.search(np.ones(8), k=2)
    s.close()
    r = run_cli("memory", "inspect", tmp_path / "m", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"count", "bytes", "device", "energy_pj", "oldest", "newest"} <= set(out)
    assert out["count"] == 5 and out["device"] == "pcm" and out["bytes"] > 0
    assert out["energy_pj"]["write"] > 0 and out["energy_pj"]["read"] > 0
    assert out["oldest"] == 1_700_000_000.0 and out["newest"] == 1_700_000_060.0
    r = run_cli("memory", "inspect", tmp_path / "m")
    assert r.returncode == 0 and "pcm" in r.stdout and "memories   5" in r.stdout
    for bad, word in [(tmp_path / "nope", "not a directory"), (tmp_path, "no memory store here")]:
        r = run_cli("memory", "inspect", bad)
        assert r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr
    assert run_cli("memory", "inspect", "--help").returncode == 0


def test_memory_dir_keeps_memories_across_processes(tmp_path):
    """What `m3edge run --memory-dir` relies on: a second process opens what the first stored."""
    code = ("import sys, numpy as np\nfrom m3edge.runtime.memory import LongTermMemory\n"
            "m = LongTermMemory(4, clock=lambda: 100.0)\nm.load(sys.argv[1])\n"
            "m.store(np.ones((3, 8)), np.ones((3, 8)) / 8 ** 0.5, np.ones((3, 4)), np.ones(3), np.ones(3))\n"
            "m.save(sys.argv[1])\nprint(len(m))\n")
    outs = [subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                           cwd=ROOT, timeout=60).stdout.strip() for _ in range(2)]
    assert outs == ["3", "6"]
    assert os.path.exists(tmp_path / "m" / DB_NAME)
