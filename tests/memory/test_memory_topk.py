import numpy as np

from m3edge.memory.topk import topk_stable


def test_topk_stable_matches_a_stable_sort():
    rng = np.random.default_rng(4)
    a = np.round(rng.random((5, 3000)), 2)
    a[0, :20] = -np.inf
    a[1] = -np.inf
    got, idx = topk_stable(a, 16)
    want = np.argsort(-a, axis=-1, kind="stable")[:, :16]
    assert (idx == want).all() and (got == np.take_along_axis(a, want, 1)).all()


def test_topk_stable_takes_both_paths_alike():
    """A few rows sort whole; many rows partition first. Both give the stable sort's answer, ties included."""
    rng = np.random.default_rng(5)
    for rows, cols in ((1, 1100), (3, 2000), (64, 2000), (256, 700)):
        a = np.round(rng.standard_normal((rows, cols)), 1).astype(np.float32)
        a[:, rng.integers(0, cols, cols // 10)] = -np.inf
        for k in (1, 8, 16, 100):
            got, idx = topk_stable(a, k)
            want = np.argsort(-a, axis=-1, kind="stable")[:, :k]
            assert (idx == want).all() and (got == np.take_along_axis(a, want, 1)).all(), (rows, cols, k)
