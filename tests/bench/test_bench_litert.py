"""m3edge.bench.litert: a real LiteRT export of a tiny random-init model, every phase timed."""

import json

import pytest

from conftest import DATA

pytest.importorskip("litert_torch")


def test_litert_profile_times_every_phase_of_a_real_export(tmp_path):
    import subprocess
    import sys

    from m3edge.config import preset

    cfg = tmp_path / "tiny.json"
    cfg.write_text(preset("tiny").to_json())
    out = tmp_path / "profile.json"
    r = subprocess.run([sys.executable, "-m", "m3edge.bench", "litert-profile", "--config", str(cfg),
                        "--data-dir", str(DATA), "--parity-tokens", "32", "-o", str(out)],
                       capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, r.stderr[-2000:]
    p = json.loads(out.read_text())
    calls = p["phase_calls"]
    assert p["modules"] > 0 and p["modules"] == calls["module total (convert + write + ports)"]
    # litert-torch exports and lowers each bucket signature: at least one of each per conversion
    conversions = calls["convert (litert-torch, quantization included)"]
    assert calls["litert: Torch Export"] >= conversions and calls["litert: Lower to MLIR"] >= conversions
    assert 0 < p["phases_s"]["litert: Torch Export"] < p["total_s"]
    assert p["module_s_by_kind"]["expert"]["n"] == p["model_config"]["n_layers"] * p["model_config"]["n_experts"]
