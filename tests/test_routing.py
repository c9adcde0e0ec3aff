"""The routing contract against slow, obvious implementations."""

import torch

from m3edge.model import routing


def slow_topk(row, k):
    return sorted(range(len(row)), key=lambda e: (-row[e], e))[:k]


def slow_capacity(index, weight, capacity):
    keep = [[False] * len(index[0]) for _ in index]
    experts = {e for row in index for e in row}
    for e in experts:
        pairs = [(n, j) for n, row in enumerate(index) for j, x in enumerate(row) if x == e]
        pairs.sort(key=lambda p: (-weight[p[0]][p[1]], p[0]))
        for n, j in pairs[:capacity]:
            keep[n][j] = True
    return keep


def test_topk_matches_slow_and_breaks_ties_toward_lower_index():
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(-3, 3, (200, 12), generator=g).float()  # many exact ties
    values, index = routing.select_topk(logits, 4)
    for row, idx, val in zip(logits.tolist(), index.tolist(), values.tolist()):
        assert idx == slow_topk(row, 4)
        assert val == [row[e] for e in idx]


def test_weights_are_softmax_over_selected_logits_only():
    v = torch.tensor([[2.0, 1.0, 0.5]])
    w = routing.topk_weights(v)
    ref = torch.exp(v) / torch.exp(v).sum()
    assert torch.allclose(w, ref) and abs(float(w.sum()) - 1) < 1e-6


def test_capacity_keep_matches_slow_rule():
    g = torch.Generator().manual_seed(1)
    for capacity in (1, 3, 7, 100):
        logits = torch.randn(64, 6, generator=g)
        logits[::5] = logits[1::5][: len(logits[::5])]  # duplicated rows: equal weights, token order decides
        values, index = routing.select_topk(logits, 2)
        weight = routing.topk_weights(values)
        keep = routing.capacity_keep(index, weight, 6, capacity)
        assert keep.tolist() == slow_capacity(index.tolist(), weight.tolist(), capacity)
        per_expert = torch.bincount(index[keep], minlength=6)
        assert int(per_expert.max()) <= capacity


def test_group_by_expert_keeps_token_order():
    index = torch.tensor([[2, 0], [0, 1], [2, 1]])
    order, counts = routing.group_by_expert(index, 3)
    assert counts.tolist() == [2, 2, 2]
    assert order.tolist() == [1, 2, 3, 5, 0, 4]  # expert 0: pairs 1, 2 ...


def test_balance_loss_is_one_when_perfectly_balanced():
    logits = torch.zeros(4, 4)
    index = torch.tensor([[0], [1], [2], [3]])
    assert abs(float(routing.balance_loss(logits, index, 4)) - 1.0) < 1e-6
