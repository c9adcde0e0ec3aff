"""The torch agent's ResistiveArraySimulator: the shared numpy device model behind tensors."""

import numpy as np
import torch

from m3edge.model.crossbar import ResistiveArraySimulator


def test_ideal_device_reads_exactly():
    torch.manual_seed(0)
    w, x = torch.randn(10, 6), torch.randn(3, 6)
    xb = ResistiveArraySimulator("ideal")
    xb.program(w)
    assert torch.allclose(xb.read(x), x @ w.T, atol=1e-5)
    assert xb.ledger.writes == 10 and xb.ledger.write_pj > 0


def test_reram_is_close_but_not_exact_and_seeded():
    torch.manual_seed(0)
    w, x = torch.randn(32, 16), torch.randn(4, 16)
    reads = []
    for _ in range(2):
        xb = ResistiveArraySimulator("reram", seed=3)
        xb.program(w)
        reads.append(xb.read(x))
    exact = x @ w.T
    err = (reads[0] - exact).abs().mean() / exact.abs().mean()
    assert 0 < float(err) < 0.3  # stuck devices dominate; tests/memory/test_crossbar_sim.py checks each effect
    assert torch.equal(reads[0], reads[1])  # same seed, same result


def test_programming_is_kept_for_rows_already_written():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    xb = ResistiveArraySimulator("reram", seed=1)
    xb.program(w[:5], ids=np.arange(5))
    before = xb.array._w.copy()
    xb.program(w, ids=np.arange(8))  # three new columns; the first five keep their conductances
    assert np.array_equal(xb.array._w[:5], before) and xb.ledger.writes == 8
