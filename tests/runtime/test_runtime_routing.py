"""The numpy routing contract agrees with the torch reference exactly, ties included."""

import numpy as np
import pytest
import torch

from m3edge import routing
from m3edge import routing as ref
from m3edge.runtime.chunks import plan_chunks


@pytest.mark.parametrize("seed", range(5))
def test_topk_and_capacity_match_torch(seed):
    rng = np.random.default_rng(seed)
    logits = rng.integers(-4, 4, size=(300, 10)).astype(np.float32)  # heavy ties
    logits[::3] += rng.normal(size=(100, 10)).astype(np.float32)
    v, i = routing.select_topk(logits, 3)
    tv, ti = ref.select_topk(torch.from_numpy(logits), 3)
    assert np.array_equal(i, ti.numpy()) and np.array_equal(v, tv.numpy())
    w = routing.topk_weights(v)
    tw = ref.topk_weights(tv)
    assert np.allclose(w, tw.numpy(), atol=1e-7)
    for cap in (1, 5, 40):
        keep = routing.get("capacity").keep(i, tw.numpy(), 10, cap)
        assert np.array_equal(keep, ref.get("capacity").keep(ti, tw, 10, cap).numpy())


def test_group_by_expert_matches_torch():
    idx = np.random.default_rng(0).integers(0, 6, size=(50, 2))
    o, c = routing.group_by_expert(idx, 6)
    to, tc = ref.group_by_expert(torch.from_numpy(idx), 6)
    assert np.array_equal(o, to.numpy()) and np.array_equal(c, tc.numpy())


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 70, 256, 300, 1000])
def test_plan_chunks_covers_rows_with_bounded_padding(n):
    buckets = (1, 4, 16, 64, 256)
    plan = plan_chunks(n, buckets)
    assert sum(rows for rows, _ in plan) == n
    assert all(rows <= b and b in buckets for rows, b in plan)
    assert sum(b - rows for rows, b in plan) <= n  # never more padding than real rows
    assert plan_chunks(3, (4, 16)) == [(3, 4)]  # below the smallest bucket: pad up
