"""``m3edge export`` end to end on tiny agents: bundles, validation, determinism, atomicity, bad input."""

import json

import onnx
import pytest

from m3edge import bundle, targets
from m3edge.checkpoint import build_agent
from m3edge.config import ModelConfig
from m3edge.export import pipeline
from m3edge.export.parity import Gates

from conftest import DATA, run_cli


def export(tmp_path, tiny_target, name="b", *extra):
    out = tmp_path / name
    r = run_cli("export", "--target", tiny_target, *extra, "-o", out, "--parity-tokens", "256", "--json")
    return out, r


def test_tiny_preset_bundle_is_complete_static_and_within_gates(tmp_path, tiny_target):
    out, r = export(tmp_path, tiny_target, "b", "--preset", "tiny")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["passed"] and res["end_to_end"]["logits_max_abs_diff"] <= 1e-4
    assert res["end_to_end"]["routing_agreement"] == 1.0
    b = bundle.open_bundle(out)
    m = b.manifest
    roles = [g["role"] for g in m["graphs"]]
    assert roles.count("expert") == 8 * 2 and roles.count("router") == 2 and roles.count("encoder") == 2
    assert roles.count("memory") == 2
    # One expert bank per layer, at the smallest capacity bucket holding 4 rows (8 here), reading its
    # experts' weights files: it has none of its own.
    banks = [g for g in m["graphs"] if g["role"] == "bank"]
    assert [(g["layer"], g["bucket"]) for g in banks] == [(0, 8)]
    assert banks[0]["weights"] == [f"graphs/layer0/expert_{e:02d}.weights" for e in range(8)]
    assert banks[0]["inputs"][0]["shape"] == [8 * 8, 16] == banks[0]["outputs"][0]["shape"]
    assert {g["memory_type"] for g in m["graphs"] if g["role"] == "expert"} == {
        "episodic", "semantic", "procedural", "emotional", "spatial", "temporal"}
    for g in m["graphs"]:
        model = onnx.load(str(out / g["path"]), load_external_data=False)
        for v in list(model.graph.input) + list(model.graph.output):
            dims = v.type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") for d in dims), (g["path"], v.name)  # no dynamic axes
        blocks = 8 if g["role"] == "bank" else 1
        assert [i["shape"][0] for i in g["inputs"]] == [g["bucket"] * blocks] * len(g["inputs"])
    report = json.loads((out / "reports" / "parity.json").read_text())
    assert all(c["status"] == "ok" and max(c["max_abs_diff"]) <= 1e-5 for c in report["graphs"])
    assert m["source"]["kind"] == "random-init" and m["target"]["name"] == "tiny-test"


@pytest.mark.parametrize("cfg", [
    ModelConfig(d_model=8, n_layers=2, n_experts=5, top_k=1, context=4, sensory_dims=(16, 12, 8), n_heads=2,
                routing="capacity", expert_capacity=3),
    ModelConfig(d_model=24, n_layers=1, n_experts=7, top_k=3, context=6, sensory_dims=(32, 16, 8), n_heads=4),
    ModelConfig(d_model=12, n_layers=1, n_experts=13, top_k=2, context=5, sensory_dims=(20, 16, 10), n_heads=3,
                routing="capacity", expert_capacity=2),
])
def test_other_configs_export_within_gates(tmp_path, tiny_target, cfg):
    p = tmp_path / "cfg.json"
    p.write_text(cfg.to_json())
    out, r = export(tmp_path, tiny_target, "b", "--config", p, "--seed", "3")
    assert r.returncode == 0, r.stderr + r.stdout
    res = json.loads(r.stdout)
    assert res["passed"] and res["end_to_end"]["routing_agreement"] == 1.0
    graphs = bundle.open_bundle(out).graphs
    assert sum(g["role"] == "expert" for g in graphs) == cfg.n_experts * cfg.n_layers * 2
    assert sorted(g["layer"] for g in graphs if g["role"] == "bank") == list(range(cfg.n_layers))


def test_bank_rows_0_leaves_the_banks_out(tmp_path, tiny_target):
    p = tmp_path / "cfg.json"
    p.write_text(ModelConfig(d_model=8, n_layers=2, n_experts=5, top_k=2, context=4, sensory_dims=(16, 12, 8),
                             n_heads=2).to_json())
    out, r = export(tmp_path, tiny_target, "b", "--config", p, "--bank-rows", "0")
    assert r.returncode == 0, r.stderr + r.stdout
    m = bundle.open_bundle(out).manifest
    assert not [g for g in m["graphs"] if g["role"] == "bank"] and "bank" not in m["precision"]["graphs"]
    assert not list(out.rglob("experts.b*.onnx"))


def test_same_inputs_give_byte_identical_bundles(tmp_path, tiny_target):
    a, _ = export(tmp_path, tiny_target, "a", "--preset", "tiny")
    b, _ = export(tmp_path, tiny_target, "b", "--preset", "tiny")
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_failed_gate_leaves_no_bundle(tmp_path, tiny_target):
    agent, source = build_agent(preset_name="tiny")
    out = tmp_path / "never"
    opts = pipeline.ExportOptions(parity_tokens=64, gates=Gates(graph_atol=0.0, logits_atol=0.0))
    with pytest.raises(pipeline.ExportFailed) as e:
        pipeline.export_bundle(agent, source, targets.load(str(tiny_target)), out, DATA, opts=opts)
    assert e.value.exit_code == 1 and e.value.report["graphs"]
    assert list(tmp_path.iterdir()) == []


def test_crash_midway_leaves_no_bundle(tmp_path, tiny_target, monkeypatch):
    agent, source = build_agent(preset_name="tiny")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "end_to_end", boom)
    with pytest.raises(KeyboardInterrupt):
        pipeline.export_bundle(agent, source, targets.load(str(tiny_target)), tmp_path / "b", DATA)
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_needs_force(tmp_path, tiny_target):
    out, r = export(tmp_path, tiny_target, "b", "--preset", "tiny")
    before = (out / "manifest.json").read_bytes()
    _, r = export(tmp_path, tiny_target, "b", "--preset", "tiny")
    assert r.returncode == 2 and "--force" in r.stderr
    _, r = export(tmp_path, tiny_target, "b", "--preset", "tiny", "--force")
    assert r.returncode == 0 and (out / "manifest.json").read_bytes() == before


def test_bad_input_exits_2_with_one_line(tmp_path, tiny_target):
    cases = [
        (["--target", "jetsonn", "--preset", "tiny"], "valid"),
        (["--target", tiny_target, "--checkpoint", tmp_path / "nope"], "not found"),
        (["--target", tiny_target], "nothing to export"),
        (["--target", tiny_target, "--preset", "tiny", "--precision", "int3"], "precision"),
    ]
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text(json.dumps({"d_model": 8, "top_k": 9, "n_experts": 4}))
    cases.append((["--target", tiny_target, "--config", bad_cfg], "top_k"))
    bad_profile = tmp_path / "p.json"
    bad_profile.write_text(json.dumps(json.loads(tiny_target.read_text()) | {"backend": "tensorflow"}))
    cases.append((["--target", bad_profile, "--preset", "tiny"], "backend"))
    for args, word in cases:
        r = run_cli("export", *args, "-o", tmp_path / "out")
        assert r.returncode == 2, (args, r.stderr)
        assert word in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = run_cli("export", "--target", tiny_target, "--preset", "tiny", "-o", "/proc/m3edge-bundle")
    assert r.returncode == 2 and "cannot write" in r.stderr
    assert not (tmp_path / "out").exists()


def test_inspect_and_verify(tmp_path, tiny_target, tiny_checkpoint):
    out, _ = export(tmp_path, tiny_target, "b", "--checkpoint", tiny_checkpoint)
    r = run_cli("inspect", out, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for key in ("schema_version", "target", "routing", "total_bytes", "graphs"):
        assert key in info
    assert info["target"] == "tiny-test" and info["parity"]["passed"]
    g = info["graphs"][0]
    assert set(g) >= {"role", "layer", "expert", "path", "sha256", "bytes", "precision"}
    assert info["total_bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    r = run_cli("inspect", out)
    assert "sha256 verified" in r.stdout and "expert" in r.stdout

    r = run_cli("verify", out, "--json", "--tokens", "300")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["passed"] and v["routing_agreement"] == 1.0 and v["top1_agreement"] == 1.0
    assert set(v["bits_per_byte"]) == {"torch", "bundle"}

    text = tmp_path / "mine.txt"
    text.write_text("print('hello, edge')\n" * 20)
    r = run_cli("verify", out, "--data", text, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["tokens"] == len(text.read_bytes())

    other, _ = export(tmp_path, tiny_target, "rand", "--preset", "tiny")
    r = run_cli("verify", other, "--checkpoint", tiny_checkpoint, "--tokens", "100")
    assert r.returncode == 1 and "parity gates failed" in r.stderr  # a different agent must fail


def test_tampered_bundle_is_refused(tmp_path, tiny_target):
    out, _ = export(tmp_path, tiny_target, "b", "--preset", "tiny")
    victim = next((out / "graphs" / "layer0").glob("expert_03.weights"))
    data = bytearray(victim.read_bytes())
    data[10] ^= 1
    victim.write_bytes(bytes(data))
    for cmd in ("inspect", "verify"):
        r = run_cli(cmd, out)
        assert r.returncode == 2 and "expert_03.weights" in r.stderr and "sha256" in r.stderr


def test_committed_reference_exports_for_a_real_profile(tmp_path):
    out = tmp_path / "jetson"
    r = run_cli("export", "--target", "jetson", "--checkpoint", "checkpoints/small", "-o", out,
                "--parity-tokens", "512", "--precision", "fp32", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["passed"] and all(row["failed"] == 0 for row in res["summary"])
    assert res["end_to_end"]["logits_max_abs_diff"] <= 1e-4 and res["end_to_end"]["routing_agreement"] == 1.0
    m = bundle.open_bundle(out).manifest
    assert sum(g["role"] == "expert" for g in m["graphs"]) == 64 * 2 * 5
    assert m["source"]["kind"] == "checkpoint" and m["target"]["name"] == "jetson-orin-nano"
    assert {g["precision"] for g in m["graphs"]} == {"fp32"} and m["precision"]["requested"] == "fp32"


def test_eval_a_bundle_and_verify_from_another_directory(tmp_path, tiny_target, tiny_checkpoint):
    out, _ = export(tmp_path, tiny_target, "b", "--checkpoint", tiny_checkpoint)
    r = run_cli("eval", out, "--json", "--max-bytes", "500")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    ref = json.loads(run_cli("eval", tiny_checkpoint, "--json", "--max-bytes", "500").stdout)
    assert abs(got["bits_per_byte"] - ref["bits_per_byte"]) < 1e-4 and got["experts_used"] == ref["experts_used"]
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "m3edge.cli", "verify", str(out), "--tokens", "64", "--data-dir",
                        str(DATA)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
