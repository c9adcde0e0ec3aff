"""MemoryMoELayer dispatch against a per-token loop, in both routing modes."""

import dataclasses

import pytest
import torch

from m3edge.model.moe import MemoryMoELayer


def slow_forward(layer, h, bias):
    r = layer.route(h, bias)
    out = torch.zeros_like(h)
    for n in range(h.shape[0]):
        for j in range(layer.cfg.top_k):
            if r.keep[n, j]:
                e = int(r.index[n, j])
                out[n] += r.weight[n, j] * layer.experts[e](h[n:n + 1])[0]
    return out


@pytest.mark.parametrize("mode, capacity", [("dropless", 256), ("capacity", 3)])
def test_dispatch_matches_per_token_loop(tiny_cfg, mode, capacity):
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_cfg, routing=mode, expert_capacity=capacity)
    layer = MemoryMoELayer(cfg).eval()
    h = torch.randn(40, cfg.d_model)
    bias = torch.randn(40, cfg.n_experts) * 0.1
    with torch.no_grad():
        fast, r = layer(h, bias)
        slow = slow_forward(layer, h, bias)
    assert torch.allclose(fast, slow, atol=1e-5)
    if mode == "capacity":
        assert not bool(r.keep.all())  # 80 pairs over 8 experts of capacity 3: some must drop
        assert torch.bincount(r.index[r.keep], minlength=cfg.n_experts).max() <= 3
        dropped = ~r.keep
        assert bool((r.weight[dropped] == 0).all())
    else:
        assert bool(r.keep.all())


def test_gate_shape_follows_the_seed(tiny_cfg):
    layer = MemoryMoELayer(tiny_cfg)
    d, e = tiny_cfg.d_model, tiny_cfg.n_experts
    lin1, norm, _, lin2 = layer.gate
    assert (lin1.in_features, lin1.out_features, norm.normalized_shape[0], lin2.out_features) == (d, d // 2, d // 2, e)
