import torch

from m3edge.train import TrainConfig, lr_at, masked_mean, train

from conftest import DATA


def test_training_is_seeded_and_learns(tiny_cfg):
    tc = TrainConfig(steps=25, batch=128, eval_bytes=2048, log_every=5)
    a, report = train(tiny_cfg, DATA, tc)
    b, _ = train(tiny_cfg, DATA, tc)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    curve = report["loss_curve"]
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert report["eval"]["bits_per_byte"] < 8.0
    assert set(report["baselines"]) == {"unigram_bits_per_byte", "bigram_bits_per_byte"}


def test_lr_schedule_warms_up_then_decays():
    tc = TrainConfig(steps=1000, warmup=100, lr=1.0)
    assert lr_at(0, tc) == 0.01 and lr_at(99, tc) == 1.0
    assert abs(lr_at(999, tc) - 0.1) < 1e-3 and lr_at(500, tc) < lr_at(200, tc)


def test_masked_mean_averages_the_kept_positions_only():
    v = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert masked_mean(v, torch.tensor([True, True, True, False])).item() == 2.0
    assert masked_mean(v, torch.zeros(4, dtype=torch.bool)).item() == 0.0  # a batch with nothing kept: no NaN
