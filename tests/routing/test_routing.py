"""The routing contract against slow, obvious implementations: one conformance suite run against every
implementation (numpy for the runtime, torch for the reference agent, the monolithic export's ONNX TopK)."""

import numpy as np
import pytest
import torch

from m3edge import routing


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
        keep = routing.get("capacity").keep(index, weight, 6, capacity)
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


def _topk_onnx(tmp_path):
    """The monolithic export's top-k: the same function through the same exporter settings and session."""
    from m3edge.export import monolithic

    class TopK(torch.nn.Module):
        def forward(self, logits):
            return routing.select_topk_traceable(logits, 4)

    path = tmp_path / "topk.onnx"
    torch.onnx.export(TopK(), (torch.zeros(3, 12),), str(path), dynamo=False, opset_version=monolithic.OPSET,
                      input_names=["logits"], output_names=["values", "index"],
                      dynamic_axes={"logits": {0: "n"}, "values": {0: "n"}, "index": {0: "n"}})
    g = monolithic.session(path, threads=1)
    return lambda logits, k: tuple(g.run(logits.astype(np.float32)))


TOPK = {
    "numpy": lambda tmp: lambda logits, k: routing.select_topk_numpy(logits, k),
    "torch": lambda tmp: lambda logits, k: tuple(t.numpy() for t in routing.select_topk_torch(torch.from_numpy(logits), k)),
    "monolithic-onnx": _topk_onnx,
}


@pytest.mark.parametrize("impl", sorted(TOPK))
def test_conformance_topk(impl, tmp_path):
    """Every implementation of the top-k step picks the slow rule's experts, ties toward the lower index."""
    select = TOPK[impl](tmp_path)
    rng = np.random.default_rng(7)
    logits = rng.integers(-3, 3, size=(200, 12)).astype(np.float32)  # many exact ties
    logits[::4] += rng.normal(size=logits[::4].shape).astype(np.float32)
    values, index = select(logits, 4)
    assert index.tolist() == [slow_topk(row, 4) for row in logits.tolist()]
    assert np.array_equal(values, np.take_along_axis(logits, index.astype(np.int64), axis=-1))


def _slow_keep(rule, index, weight, capacity):
    return slow_capacity(index, weight, capacity) if rule.drops else [[True] * len(index[0]) for _ in index]


@pytest.mark.parametrize("name", ["dropless", "capacity"])
@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_conformance_rules(name, impl):
    """Each registered rule, numpy and torch side by side, against the slow rule; both agree bit for bit."""
    rule = routing.get(name)
    assert set(routing.names()) >= {"dropless", "capacity"}
    rng = np.random.default_rng(3)
    for capacity in (1, 3, 7, 100):
        logits = rng.normal(size=(64, 6)).astype(np.float32)
        logits[::5] = logits[1::5][: len(logits[::5])]  # equal weights: token order decides
        values, index = routing.select_topk_numpy(logits, 2)
        weight = routing.topk_weights(values)
        if impl == "numpy":
            keep = rule.keep_numpy(index, weight, 6, capacity)
        else:
            keep = rule.keep_torch(torch.from_numpy(index), torch.from_numpy(weight), 6, capacity).numpy()
        assert keep.dtype == bool and keep.tolist() == _slow_keep(rule, index.tolist(), weight.tolist(), capacity)


def test_unknown_rule_is_refused_naming_the_rules():
    from m3edge.errors import BadInput

    with pytest.raises(BadInput, match="unknown routing rule 'switch'.*capacity"):
        routing.get("switch")


def test_runtime_routing_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, m3edge.routing as r, numpy as np; r.get('capacity').keep(np.zeros((2, 1), int), np.ones((2, 1)), 2, 1); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
