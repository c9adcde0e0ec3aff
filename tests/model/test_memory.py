"""M3MemorySystem: the three levels wired together, importance, retrieval through the crossbar."""

import pytest
import torch

from m3edge.model.associator import FUSION, ContextualAssociator, fuse_scores
from m3edge.model.memory import M3MemorySystem
from m3edge.memory.synaptic import IMPORTANCE_WEIGHTS, experience_importance
from m3edge.model.sensory import SensoryBuffer


def test_importance_weights():
    assert IMPORTANCE_WEIGHTS == (0.4, 0.4, 0.2)
    v = experience_importance(torch.tensor(0.5), torch.tensor(1.0), torch.tensor(0.25))
    assert float(v) == pytest.approx(0.4 * 0.5 + 0.4 * 1.0 + 0.2 * 0.25)


def test_sensory_buffer_shapes_and_gate_range():
    sb = SensoryBuffer(16, (512, 256, 128))
    widths = [m.out_features for m in sb.compress if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 256, 128]
    z, c = sb(torch.randn(5, 16))
    assert z.shape == (5, 128) and c.shape == (5, 1) and bool(((c > 0) & (c < 1)).all())


def test_associator_fuses_scores_and_takes_top_five():
    assert FUSION == (0.4, 0.4, 0.2)
    assert float(fuse_scores(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.25))) == pytest.approx(0.65)
    torch.manual_seed(0)
    a = ContextualAssociator(8, top_k=5)
    keys, values = torch.randn(12, 8), torch.randn(12, 4)
    ctx, idx, top = a(keys[:3], keys, values, torch.zeros(12))
    assert ctx.shape == (3, 4) and idx.shape == (3, 5)
    assert idx[:, 0].tolist() == [0, 1, 2]  # a stored key is its own best match
    empty_ctx, empty_idx, _ = a(keys[:3], keys[:0], values[:0], torch.zeros(0))
    assert bool((empty_ctx == 0).all()) and empty_idx.shape == (3, 0)


def test_store_then_read_returns_what_followed(tiny_cfg):
    torch.manual_seed(0)
    clock = lambda: 1000.0  # noqa: E731
    mem = M3MemorySystem(tiny_cfg, clock=clock).eval()
    state = torch.randn(4, tiny_cfg.d_model)
    key, complexity = mem.sensory(state)
    w = torch.arange(4 * tiny_cfg.context).reshape(4, -1) % 256
    assert mem.read(key, w).valid.sum() == 0  # empty store
    ids = mem.store(state, key, w, torch.tensor([1, 2, 3, 4]), complexity, torch.full((4,), 0.5), torch.eye(6)[:4])
    assert len(ids) == 4 and len(mem.storage) == 4
    got = mem.read(key, w)
    assert got.valid[:, 0].tolist() == [1, 1, 1, 1] and got.exact[:, 0].tolist() == [1, 1, 1, 1]
    assert got.next_bytes[:, 0].tolist() == [1, 2, 3, 4]  # each window's own memory first: what followed it
    assert [m.memory_type for m in mem.storage.memories.values()] == ["episodic", "semantic", "procedural", "emotional"]
    assert got.context(tiny_cfg.memory_top_k).shape == (4, tiny_cfg.d_model)


def test_experience_encoder_takes_state_plus_byte(tiny_cfg):
    mem = M3MemorySystem(tiny_cfg)
    v = mem.encode_experience(torch.randn(3, tiny_cfg.d_model), torch.tensor([0, 65, 255]))
    assert v.shape == (3, tiny_cfg.d_model)
    assert mem.memory_encoder[0].in_features == tiny_cfg.d_model + 256
