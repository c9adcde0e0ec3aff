"""MemoryExpertAlignment: the type preference, the task re-weighting and the seed's co-occurrence matrix."""

import torch

from m3edge.config import preset
from m3edge.model.alignment import MemoryExpertAlignment


def test_co_occurrence_counts_pairs_picked_together_and_spreads_the_bias():
    cfg = preset("tiny")
    torch.manual_seed(0)
    a = MemoryExpertAlignment(cfg)
    x, mem = torch.randn(5, cfg.d_model), torch.randn(5, cfg.d_model)
    before, _ = a(x, mem)
    a.observe(torch.tensor([[0, 1], [0, 1], [1, 2]]))
    c = a.co_occurrence
    assert c[0, 1] == c[1, 0] == 2 and c[1, 2] == c[2, 1] == 1 and c.diagonal().sum() == 0 and c.sum() == 6
    assert torch.equal(a(x, mem)[0], before)  # weight 0: counts alone change nothing
    with torch.no_grad():
        a.co_weight.fill_(0.5)
    after, _ = a(x, mem)
    row = a.co_matrix()
    assert torch.allclose(row[1], torch.tensor([2 / 3, 0, 1 / 3] + [0.0] * (cfg.n_experts - 3)))
    assert torch.allclose(after, before + 0.5 * before @ row)
    assert "co_occurrence" in dict(a.named_buffers())  # saved with the checkpoint
