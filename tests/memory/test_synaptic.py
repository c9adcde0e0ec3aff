"""The seed's SynapticStorage formulas, driven by an injected clock."""

import numpy as np
import pytest

from m3edge.memory import synaptic as st
from m3edge.memory.synaptic import SynapticStorage


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def vec(*xs):
    return np.array(xs, dtype=np.float32)


def test_formulas_match_the_seed():
    assert st.forgetting_score(0.2, 3, 2.0) == pytest.approx(0.4 * 0.8 + 0.3 / 4 + 0.3 * 2.0)
    assert st.reconsolidate_strength(0.5) == pytest.approx(0.5 * 1.1 + 0.05)
    assert st.reconsolidate_strength(0.99) == 1.0
    assert st.reconsolidate_priority(0.5) == pytest.approx(0.525)
    assert st.reconsolidate_priority(0.99) == 1.0
    assert (st.HEBBIAN_INIT, st.FORGETTING_RATE, st.CONSOLIDATION_THRESHOLD) == (0.5, 0.01, 0.7)


def test_similar_memories_associate_both_ways_at_half_strength():
    s = SynapticStorage(clock=Clock())
    a = s.store(vec(1, 0), vec(1, 1), 0.5)
    b = s.store(vec(0.9, 0.1), vec(2, 2), 0.5)
    c = s.store(vec(0, 1), vec(3, 3), 0.5)  # orthogonal to a: no link
    assert s.memories[a].associations == {b: 0.5}
    assert s.memories[b].associations[a] == 0.5
    assert a not in s.memories[c].associations


def test_reconsolidation_on_retrieval():
    clock = Clock()
    s = SynapticStorage(clock=clock)
    a = s.store(vec(1, 0), vec(1), 0.5)
    b = s.store(vec(1, 0.1), vec(2), 0.8)
    clock.t += 60
    s.reconsolidate([a, b])
    ma, mb = s.memories[a], s.memories[b]
    assert ma.priority == pytest.approx(0.525) and mb.priority == pytest.approx(0.84)
    assert ma.access_count == 1 and ma.last_access == clock.t
    assert ma.associations[b] == pytest.approx(0.6) and mb.associations[a] == pytest.approx(0.6)


def test_forgetting_at_capacity_removes_the_highest_score():
    clock = Clock()
    s = SynapticStorage(capacity=2, clock=clock)
    keep = s.store(vec(1, 0), vec(1), 0.9)
    weak = s.store(vec(0, 1), vec(2), 0.1)
    clock.t += 3 * st.DAY
    s.reconsolidate([keep])  # recently accessed, high priority
    new = s.store(vec(-1, 0), vec(3), 0.5)
    assert set(s.memories) == {keep, new} and weak not in s.memories


def test_decay_follows_the_forgetting_rate_per_day():
    clock = Clock()
    s = SynapticStorage(clock=clock)
    a = s.store(vec(1, 0), vec(1), 0.5)
    b = s.store(vec(1, 0), vec(2), 0.5)
    s.decay()
    clock.t += 10 * st.DAY
    s.decay()
    assert s.memories[a].associations[b] == pytest.approx(0.5 * 0.99 ** 10)


def test_consolidation_candidates_use_the_threshold():
    s = SynapticStorage(clock=Clock())
    s.store(vec(1, 0), vec(1), 0.69)
    hi = s.store(vec(0, 1), vec(1), 0.7)
    assert [m.id for m in s.consolidation_candidates()] == [hi]


def test_links_are_capped_and_a_full_store_forgets_a_batch_at_once():
    rng = np.random.default_rng(0)
    s = SynapticStorage(capacity=1000, clock=Clock())
    base = rng.normal(size=8).astype(np.float32)
    keys = base + 0.05 * rng.normal(size=(600, 8)).astype(np.float32)  # all alike: every pair above 0.5
    st.store_experiences(s, keys, np.zeros((600, 4)), np.full(600, 0.5), np.full(600, 0.5))
    links = [len(m.associations) for m in s.memories.values()]
    assert max(links) <= st.LINK_LIMIT and min(links) >= 1  # the seed's rule would give 599 each
    assert all(len(s.memories[i].associations) <= st.LINK_LIMIT for i in s.memories)
    assert all(i in s.memories[j].associations for i, m in s.memories.items() for j in m.associations)  # symmetric
    st.store_experiences(s, keys[:500], np.zeros((500, 4)), np.full(500, 0.5), np.full(500, 0.5))
    # 1,100 stored into 1,000: forgetting took the overflow plus 5% of the capacity in one compaction
    assert len(s) == 1000 - int(1000 * st.EVICT_FRACTION) and s.forgotten == 100 + int(1000 * st.EVICT_FRACTION)
    assert len(s._cols.ids) == len(s) == len(s.unit_keys())
    assert all(j in s.memories for m in s.memories.values() for j in m.associations)


@pytest.mark.parametrize("victims", [[0], [4999], [3, 2047, 2048, 2049, 4096], list(range(0, 5000, 7)), []])
def test_columns_remove_compacts_in_place_keeping_order_and_capacity(monkeypatch, victims):
    """Columns.remove moves the kept rows down a block at a time inside the same buffers: every column keeps
    its kept rows, in id order, at its old capacity, across block edges (blocks of 1,000 rows here)."""
    monkeypatch.setattr(st, "COMPACT_ROWS", 1000)
    rng = np.random.default_rng(3)
    c = st.Columns()
    ids = list(range(10, 5010))
    data = {"value": rng.normal(size=(5000, 3)).astype(np.float32), "hashes": rng.integers(0, 99, (5000, 3)),
            "created": rng.normal(size=5000)}
    c.extend(ids[:1234], {k: v[:1234] for k, v in data.items()})
    c.extend(ids[1234:], {k: v[1234:] for k, v in data.items()})
    caps = {k: len(b) for k, b in c.cols.items()}
    bufs = {k: b for k, b in c.cols.items()}
    c.remove([ids[v] for v in victims])
    keep = np.setdiff1d(np.arange(5000), victims)
    assert c.n == len(keep) and c.ids == [ids[i] for i in keep] and c.id_array().tolist() == c.ids
    for k, v in data.items():
        assert np.array_equal(c.get(k), v[keep]), k
        assert len(c.cols[k]) == caps[k] and c.cols[k] is bufs[k]  # the same buffers: nothing reallocated
    assert c.row(ids[keep[-1]]) == len(keep) - 1


def test_reconsolidating_groups_at_once_equals_one_retrieval_after_another():
    """reconsolidate_groups (an ingested prompt's retrievals at once) leaves priorities, access counts, links
    and columns exactly as the seed's per-retrieval rule applied group by group."""
    import copy

    rng = np.random.default_rng(4)
    s = SynapticStorage(capacity=1000, clock=Clock())
    base = rng.normal(size=8).astype(np.float32)
    keys = base + 0.3 * rng.normal(size=(200, 8)).astype(np.float32)
    st.store_experiences(s, keys, np.zeros((200, 4)), rng.random(200), rng.random(200))
    ids = sorted(s.memories)
    groups = [sorted(rng.choice(ids[:40], size=int(rng.integers(1, 5)), replace=False).tolist()) for _ in range(300)]
    groups += [[], [ids[0]], [ids[1], ids[1]]]  # an id twice in a group counts twice, as the rule's loop does
    ref = copy.deepcopy(s)
    ref.clock.t = s.clock.t = 2_000_000.0
    for g in groups:  # the rule, one retrieval at a time
        for i in g:
            m = ref.memories[i]
            m.priority = st.reconsolidate_priority(m.priority)
            m.access_count += 1
            m.last_access = ref.clock()
            for j in g:
                if j != i and j in m.associations:
                    m.associations[j] = st.reconsolidate_strength(m.associations[j])
    s.reconsolidate_groups(groups)
    assert any(m.priority == 1.0 for m in s.memories.values())  # some reached the cap on the way
    for i in ids:
        a, b = ref.memories[i], s.memories[i]
        assert (a.priority, a.access_count, a.last_access, a.associations) == \
               (b.priority, b.access_count, b.last_access, b.associations), i
    rows = np.searchsorted(s._cols.id_array(), ids)
    assert s._cols.get("priority")[rows].tolist() == [ref.memories[i].priority for i in ids]
    assert s._cols.get("access_count")[rows].tolist() == [ref.memories[i].access_count for i in ids]
    assert set(ids[:40]) & {i for g in groups for i in g} <= s._dirty
    # One retrieval of distinct ids (a decode step) takes the path without the sort: the same rule.
    one = ids[50:53]
    before = {i: (s.memories[i].priority, s.memories[i].access_count) for i in one}
    s.reconsolidate(one)
    for i in one:
        assert s.memories[i].priority == st.reconsolidate_priority(before[i][0])
        assert s.memories[i].access_count == before[i][1] + 1
        assert s._cols.get("priority")[s._cols.row(i)] == s.memories[i].priority


def test_reconsolidating_an_unknown_id_changes_nothing():
    s = SynapticStorage(capacity=100, clock=Clock())
    for i in range(5):
        s.store(vec(1, i, 0), vec(0, 0), 0.5)
    s._drop([2])
    before = (s._cols.get("priority").copy(), s._cols.get("access_count").copy(),
              [(m.priority, m.access_count) for m in s.memories.values()])
    with pytest.raises(KeyError):
        s.reconsolidate_groups([[4], [2]])  # 2 was forgotten: its searchsorted row is memory 3's
    assert np.array_equal(s._cols.get("priority"), before[0]) and np.array_equal(s._cols.get("access_count"), before[1])
    assert [(m.priority, m.access_count) for m in s.memories.values()] == before[2]
    with pytest.raises(KeyError):
        s.reconsolidate([99])  # past the last row
