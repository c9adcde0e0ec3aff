"""The crossbar device model (m3edge/memory/crossbar.py): each non-ideality on its own, seeded, and the ideal device."""

import numpy as np
import pytest

from m3edge.memory import crossbar as xb
from m3edge.memory.crossbar import DEVICES, IDEAL, CrossbarArray, with_overrides

BARE = with_overrides(IDEAL, name="bare")  # an exact device to switch one effect on at a time


def data(n=64, m=32, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, m)).astype(np.float32)
    return w / np.linalg.norm(w, axis=1, keepdims=True), rng.normal(size=(3, m)).astype(np.float32)


def test_presets_are_a_registry_and_ideal_is_exact():
    assert set(DEVICES) == {"ideal", "reram", "pcm"} and xb.DEFAULT_DEVICE == "reram"
    assert DEVICES["ideal"].exact and not DEVICES["reram"].exact and not DEVICES["pcm"].exact
    w, x = data()
    a = CrossbarArray(32, "ideal")
    a.write(np.arange(64), w, 0.0)
    assert np.array_equal(a.read(x, w, 1e6), x @ w.T)  # bit for bit, at any age
    with pytest.raises(ValueError, match="unknown memory device"):
        xb.device("flash")


def test_conductances_stay_in_range_and_take_only_the_levels():
    dev = with_overrides(BARE, levels=16)
    w, _ = data()
    gp, gn, scale = xb.target_conductances(w, dev)
    step = (dev.g_max - dev.g_min) / 15
    for g in (gp, gn):
        assert g.min() >= dev.g_min - 1e-18 and g.max() <= dev.g_max + 1e-18
        k = (g - dev.g_min) / step
        assert np.allclose(k, np.round(k)) and len(np.unique(np.round(k))) <= 16
    # differential pair: one device of each pair sits at g_min; the larger |w| of a column maps to g_max
    assert np.all(np.minimum(gp, gn) == dev.g_min)
    assert np.allclose(np.maximum(gp, gn).max(axis=1), dev.g_max)
    assert np.allclose(scale, np.abs(w).max(axis=1))


def test_programming_noise_is_permanent_seeded_and_per_memory():
    dev = with_overrides(BARE, program_noise=0.02)
    w, x = data()
    a, b, c = (CrossbarArray(32, dev, seed=s) for s in (1, 1, 2))
    a.write(np.arange(64), w, 0.0)
    b.write(np.arange(32), w[:32], 0.0)  # written in two batches: the same conductances per memory
    b.write(np.arange(32, 64), w[32:], 0.0)
    c.write(np.arange(64), w, 0.0)
    assert np.array_equal(a._w, b._w) and not np.array_equal(a._w, c._w)
    assert np.array_equal(a.read(x, w), a.read(x, w))  # no read noise: reads repeat exactly
    err = a._w * a._scale[:, None] - w
    assert 0.005 < float(err.std()) < 0.1


def test_read_noise_is_fresh_per_read_and_seeded():
    dev = with_overrides(BARE, read_noise=0.01)
    w, x = data()
    a, b = CrossbarArray(32, dev, seed=5), CrossbarArray(32, dev, seed=5)
    for arr in (a, b):
        arr.write(np.arange(64), w, 0.0)
    r1, r2 = a.read(x, w), a.read(x, w)
    assert not np.array_equal(r1, r2)
    assert np.array_equal(r1, b.read(x, w)) and np.array_equal(r2, b.read(x, w))  # same seed, same sequence
    assert np.abs(r1 - x @ w.T).max() < 0.5


def test_drift_follows_a_power_law_and_compensation_undoes_its_mean():
    nu, t0 = 0.05, 20.0
    raw = with_overrides(BARE, drift_nu=nu, drift_t0=t0, drift_compensation=False)
    w, x = data()
    ids = np.arange(64)
    w0 = xb.effective_weights(w, ids, np.zeros(64), raw, 0)[0]
    for t in (20.0, 2000.0, 2e6):
        wt = xb.effective_weights(w, ids, np.full(64, t), raw, 0)[0]
        assert np.allclose(wt, w0 * (max(t, t0) / t0) ** -nu, rtol=1e-5)
    comp = with_overrides(raw, drift_compensation=True, drift_nu_std=0.02)
    late = xb.effective_weights(w, ids, np.full(64, 2e6), comp, 0)[0]
    uncomp = xb.effective_weights(w, ids, np.full(64, 2e6), with_overrides(comp, drift_compensation=False), 0)[0]
    assert np.abs(late - w0).mean() < 0.5 * np.abs(uncomp - w0).mean()  # the nu spread remains
    # the array re-evaluates drift as the clock moves
    a = CrossbarArray(32, raw)
    a.write(ids, w, 0.0)
    early, later = a.read(x, w, 20.0), a.read(x, w, 2e6)
    assert np.allclose(later, early * (2e6 / t0) ** -nu, rtol=1e-4, atol=1e-6)


def test_stuck_devices_read_their_stuck_value():
    dev = with_overrides(BARE, stuck_on=0.05, stuck_off=0.05)
    w, _ = data(n=400)
    ids = np.arange(400)
    gp0, gn0, _ = xb.program(w, ids, dev, 0)
    gp, gn = xb.apply_faults(gp0, gn0, ids, dev, 0)
    stuck = xb.stuck_mask(ids, 32, dev, 0)
    assert 0.08 < stuck.mean() < 0.12
    changed = np.stack([gp != gp0, gn != gn0], axis=1)
    assert not (changed & ~stuck).any()  # only stuck devices differ
    assert set(np.unique(np.concatenate([gp[stuck[:, 0]], gn[stuck[:, 1]]]))) <= {dev.g_min, dev.g_max}


def test_dac_and_adc_quantise_inputs_and_outputs():
    assert np.allclose(xb.quantize_signed(np.array([0.26, -1.4, 0.5]), 3, 1.0), [1 / 3, -1.0, 2 / 3])
    dev = with_overrides(BARE, dac_bits=4, adc_bits=6, out_bound=4.0)
    w, x = data()
    a = CrossbarArray(32, dev)
    a.write(np.arange(64), w, 0.0)
    y = a.read(x, w)
    norm = y / (np.abs(x).max(axis=1, keepdims=True) * a._scale[None, :])  # back to ADC units
    step = 4.0 / 31
    assert np.allclose(norm / step, np.round(norm / step), atol=1e-3)
    assert 0 < np.abs(y - x @ w.T).max() < 1.0


def test_energy_and_latency_are_accounted_per_write_and_read():
    dev = DEVICES["reram"]
    w, x = data()
    a = CrossbarArray(32, dev)
    a.write(np.arange(64), w, 0.0)
    assert a.ledger.writes == 64
    assert a.ledger.write_pj == pytest.approx(64 * 32 * 2 * dev.write_pulses * dev.write_pulse_pj)
    a.read(x, w)
    one = a.ledger.read_pj
    assert a.ledger.reads == 3 and one > 3 * 64 * xb.adc_pj(dev)  # at least one ADC conversion per column
    a.read(x, w)
    assert a.ledger.read_pj == pytest.approx(2 * one, rel=0.05) and a.ledger.read_ns > 0
    dram = xb.dram_cost(64, 3, 64, 32)
    assert dram["read"] > one and dram["write"] > 0


def test_sync_follows_the_callers_rows():
    w, x = data()
    a = CrossbarArray(32, "reram", seed=3)
    a.sync(np.arange(10), w[:10], 0.0)
    kept = a._w[[0, 2, 3]].copy()
    ids = np.array([0, 2, 3, 10, 11])
    a.sync(ids, w[ids], 0.0)
    assert list(a.ids) == list(ids) and np.array_equal(a._w[:3], kept) and a.ledger.writes == 12


def test_recall_of_the_presets_against_exact_search():
    """A stored key's nearest neighbours through each device, against exact float (the bench's recall@10)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32))
    w = (centers[rng.integers(0, 20, 500)] + 0.7 * rng.normal(size=(500, 32))).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    q = w[:20] + 0.1 * rng.normal(size=(20, 32)).astype(np.float32)
    exact = np.argsort(-(q @ w.T), axis=1)[:, :10]
    recall = {}
    for name in DEVICES:
        a = CrossbarArray(32, name, seed=0)
        a.write(np.arange(500), w, 0.0)
        got = np.argsort(-a.read(q, w, 3600.0), axis=1)[:, :10]
        recall[name] = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact)])
    assert recall["ideal"] == 1.0
    assert 0.3 < recall["reram"] <= 1.0 and 0.3 < recall["pcm"] <= 1.0
