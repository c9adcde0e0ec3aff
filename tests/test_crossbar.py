import torch

from m3edge.model.crossbar import ResistiveArraySimulator


def test_ideal_device_reads_exactly():
    torch.manual_seed(0)
    w, x = torch.randn(10, 6), torch.randn(3, 6)
    xb = ResistiveArraySimulator("ideal")
    xb.program(w)
    assert torch.allclose(xb.read(x), x @ w.T, atol=1e-5)
    assert float(xb.g_pos.min()) >= 1e-6 * (1 - 1e-6) and float(xb.g_pos.max()) <= 1e-4 * (1 + 1e-6)


def test_reram_is_close_but_not_exact_and_seeded():
    torch.manual_seed(0)
    w, x = torch.randn(32, 16), torch.randn(4, 16)
    reads = []
    for _ in range(2):
        xb = ResistiveArraySimulator("reram", seed=3)
        xb.program(w)
        reads.append(xb.read(x))
    exact = x @ w.T
    err = (reads[0] - exact).abs().max() / exact.abs().max()
    assert 0 < float(err) < 0.2
    assert torch.equal(reads[0], reads[1])  # same seed, same result
