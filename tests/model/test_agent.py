import dataclasses

import numpy as np
import torch

from m3edge.data import windows
from m3edge.model.agent import MemoryMoEAgent


def test_forward_shapes_and_routing(tiny_agent, tiny_cfg):
    w = torch.randint(0, 256, (12, tiny_cfg.context))
    out = tiny_agent(w)
    assert out.logits.shape == (12, 256)
    assert len(out.routed) == tiny_cfg.n_layers
    r = out.routed[0]
    assert r.index.shape == (12, tiny_cfg.top_k) and torch.allclose(r.weight.sum(-1), torch.ones(12))
    assert out.encoded.key.shape == (12, tiny_cfg.memory_dim)


def test_tokens_are_independent_rows(tiny_agent, tiny_cfg):
    w = torch.randint(0, 256, (10, tiny_cfg.context))
    with torch.no_grad():
        full = tiny_agent(w).logits
        part = tiny_agent(w[3:5]).logits
    assert torch.allclose(full[3:5], part, atol=1e-5)


def test_memory_context_biases_the_router(tiny_agent, tiny_cfg):
    w = torch.randint(0, 256, (6, tiny_cfg.context))
    with torch.no_grad():
        a = tiny_agent(w).routed[0].logits
        b = tiny_agent(w, torch.randn(6, tiny_cfg.d_model)).routed[0].logits
    assert not torch.allclose(a, b)


def test_alignment_maps_types_to_any_expert_count(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, n_experts=13, top_k=3)
    agent = MemoryMoEAgent(cfg)
    a = agent.alignment.type_to_expert.detach()
    assert a.shape == (6, 13) and a[0, 6] == 1.0 and a[0, 12] == 1.0 and a[1, 6] == 0.0


def test_generate_is_deterministic_and_stores_experiences(tiny_cfg):
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        agent = MemoryMoEAgent(tiny_cfg, clock=lambda: 0.0).eval()
        outs.append(agent.generate(b"def f(x):\n", 6))
        assert len(agent.memory.storage) == len(b"def f(x):\n") - 1 + 6
    assert outs[0] == outs[1] and len(outs[0]) == 6


def test_step_matches_forward_without_memory(tiny_agent, tiny_cfg):
    data = np.frombuffer(b"import os\n", dtype=np.uint8)
    w = torch.from_numpy(windows(data, np.arange(len(data)), tiny_cfg.context))
    assert torch.allclose(tiny_agent.step(w, use_memory=False).logits, tiny_agent(w).logits)
