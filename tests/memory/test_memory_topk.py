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


def test_one_row_takes_the_partition_shortcut_with_ties_and_nan_alike():
    rng = np.random.default_rng(6)
    for trial in range(300):
        n = int(rng.integers(65, 3000))
        a = np.round(rng.standard_normal((1, n)), 1).astype(np.float32)
        a[0, rng.integers(0, n, n // 3)] = -np.inf
        if trial % 4 == 0:
            a[0, rng.integers(0, n, 3)] = np.nan  # the sort's order, not the partition's
        k = int(rng.integers(1, 40))
        got, idx = topk_stable(a, k)
        want = np.argsort(-a, axis=-1, kind="stable")[:, :k]
        assert (idx == want).all() and np.array_equal(got, np.take_along_axis(a, want, 1), equal_nan=True), trial


def test_top_above_is_topk_stable_without_what_is_below_the_threshold():
    from m3edge.memory.topk import top_above

    rng = np.random.default_rng(7)
    for rows, cols in ((1, 70), (32, 1100), (128, 2000), (5, 3)):
        a = np.round(rng.random((rows, cols)), 2).astype(np.float32)  # ties at two decimals
        a[:, rng.integers(0, cols, cols // 4)] = -np.inf
        a[0, :] = 0.1  # a row with nothing above the threshold
        a[-1, 0] = np.nan
        got = top_above(a, 0.5, 8)
        masked = np.where(a >= 0.5, a, -np.inf)
        top, idx = topk_stable(masked, min(8, cols))
        assert got == [[c for c, ok in zip(r, f) if ok] for r, f in zip(idx.tolist(), np.isfinite(top).tolist())]
    assert got[0] == [] and top_above(np.zeros((0, 4), np.float32), 0.5, 8) == []
