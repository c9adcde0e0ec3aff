"""MemoryReader: what is retrieved changes the next-byte distribution, and nothing retrieved changes nothing."""

import numpy as np
import torch

from m3edge.model.reader import MemoryReader


def test_nothing_retrieved_gives_the_models_own_distribution():
    torch.manual_seed(0)
    r = MemoryReader()
    logits = torch.randn(3, 256)
    z = torch.zeros(3, 5)
    out = r(logits, z, z.long(), z, z)
    assert torch.allclose(out.exp(), torch.softmax(logits, -1), atol=1e-7)


def test_an_exact_match_moves_probability_to_what_followed_it():
    torch.manual_seed(0)
    r = MemoryReader()
    logits = torch.randn(2, 256)
    scores = torch.tensor([[1.0, 0.6, 0.0], [1.0, 0.6, 0.0]])
    nb = torch.tensor([[65, 66, 0], [65, 66, 0]])
    valid = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    exact = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = r(logits, scores, nb, exact, valid).exp()
    base = torch.softmax(logits, -1)
    assert float(out[0, 65]) > float(base[0, 65]) and float(out[1, 65]) > float(base[1, 65])
    assert torch.allclose(out.sum(-1), torch.ones(2), atol=1e-5)


def test_memory_changes_what_the_agent_predicts(tiny_agent):
    """A text seen once is continued from memory: greedy output with memory on differs from memory off and
    follows what was seen."""
    seen = b"the quick brown fox jumps over the lazy dog; "
    on = tiny_agent.generate(seen * 2, 20)
    tiny_agent.memory.reset()
    off = tiny_agent.generate(seen * 2, 20, use_memory=False)
    assert on != off
    assert on == (seen * 2)[:20]
