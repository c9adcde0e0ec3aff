"""FP16 graphs: onnxruntime's converter on every module kind, and a Jetson-profile export judged by the gates."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch

from m3edge import bundle, targets
from m3edge.export.fp16 import to_fp16
from m3edge.export.graphs import split
from m3edge.backends.onnxruntime.onnx_export import export_module
from m3edge.runtime.agent import EdgeAgent

from conftest import run_cli
from test_bank import assert_bank_is_its_experts


def kinds(agent):
    """One spec per distinct module kind: every graph role and every expert type."""
    seen = {}
    for s in split(agent, [4], [4]):
        seen.setdefault((s.role, s.memory_type), s)
    return list(seen.values())


def test_every_module_kind_converts_to_fp16_and_stays_close(tiny_agent):
    rng = np.random.default_rng(0)
    for spec in kinds(tiny_agent):
        names = [p.name for p in spec.inputs]
        half = to_fp16(export_module(spec.module, spec.example(4), names, [p.name for p in spec.outputs], 17))
        onnx.checker.check_model(half, full_check=True)
        floats = [t for t in half.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
        assert floats and all(t.data_type == onnx.TensorProto.FLOAT16 for t in floats), spec.label
        # I/O stays float32: the runtime's dispatch is the same for every precision.
        assert {i.type.tensor_type.elem_type for i in half.graph.output} == {onnx.TensorProto.FLOAT}
        feeds = {p.name: (rng.integers(0, 256, spec.shape(p, 4)) if p.dtype == "int64"
                          else rng.standard_normal(spec.shape(p, 4)).astype(np.float32)) for p in spec.inputs}
        got = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        with torch.no_grad():
            ref = spec.checked_against(*(torch.from_numpy(feeds[n]) for n in names))
        ref = ref if isinstance(ref, tuple) else (ref,)
        for g, r in zip(got, ref):
            r = r.numpy()
            assert np.abs(g - r).max() <= 1e-2 * max(1.0, np.abs(r).max()), spec.label  # fp16, not fp32, not noise


def test_jetson_profile_builds_fp16_experts_judged_by_the_gates(tmp_path):
    out = tmp_path / "jetson"
    r = run_cli("export", "--target", "jetson", "--preset", "tiny", "-o", out, "--parity-tokens", "256", "--json")
    assert r.returncode == 0, r.stderr
    e2e = json.loads(r.stdout)["end_to_end"]
    assert e2e["quantized"] and e2e["passed"] and e2e["top1_agreement"] >= 0.97
    m = bundle.open_bundle(out).manifest
    want = targets.load("jetson").precision
    for g in m["graphs"]:
        # The memory encoder runs at the encoder's precision; a bank is its experts' graphs.
        # The reader is always fp32 (export/pipeline.py: resolve_precision).
        assert g["precision"] == (want | {"reader": "fp32"})[{"memory": "encoder", "bank": "expert"}.get(g["role"], g["role"])]
    assert not [n for n in m["precision"]["notes"] if "fp16" in n]  # built, not just requested
    weights = {f["path"]: f["bytes"] for f in m["files"] if f["path"].endswith(".weights")}
    expert = next(g for g in m["graphs"] if g["role"] == "expert" and g["precision"] == "fp16")
    acc = json.loads((out / "reports" / "accuracy.json").read_text())
    assert acc["weights_bytes"] < 0.6 * acc["fp32_weights_bytes"]  # fp16: about half the bytes
    assert weights[expert["weights"]] > 0
    with EdgeAgent.open(out) as agent:  # the runtime takes the fp16 graphs as they are
        assert len(agent.generate(b"def f(", 8)) == 8
    assert_bank_is_its_experts(out)


def test_tflite_backend_refuses_fp16(tmp_path, tiny_target):
    d = json.loads(tiny_target.read_text()) | {"name": "tiny-tfl", "backend": "tflite", "providers": []}
    p = tmp_path / "t.json"
    p.write_text(json.dumps(d))
    r = run_cli("export", "--target", p, "--preset", "tiny", "-o", tmp_path / "b", "--precision", "fp16")
    assert r.returncode == 2 and "tflite backend builds fp32, int8" in r.stderr and "Traceback" not in r.stderr


def test_reference_jetson_bundle_meets_the_gates(tmp_path):
    out = tmp_path / "jetson"
    r = run_cli("export", "--target", "jetson", "--checkpoint", "checkpoints/small", "-o", out, "--parity-tokens",
                "1024", "--json")
    assert r.returncode == 0, r.stderr
    e2e = json.loads(r.stdout)["end_to_end"]
    assert e2e["passed"] and e2e["routing_agreement"] >= 0.95 and e2e["top1_agreement"] >= 0.97
    assert e2e["bits_per_byte_increase"] <= 0.02
    m = bundle.open_bundle(out).manifest
    assert {g["precision"] for g in m["graphs"] if g["role"] == "expert"} == {"fp16"}


def test_the_fp16_clamp_is_the_converters_bit_for_bit():
    """``half`` replaces onnxruntime's convert_np_to_float16 inside to_fp16: the same bits for every value."""
    import onnxruntime.transformers.float16 as f16

    from m3edge.export.fp16 import half

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):  # raw_data tensors give float32, float_data float64
        a = (rng.standard_normal(50_000) * np.exp(rng.uniform(-40, 15, 50_000))).astype(dtype)
        a[:10] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-9, -1e-9, 7e4, -7e4, 65504.0]
        want, got = f16.convert_np_to_float16(a), half(a)
        assert got.dtype == want.dtype == np.float16
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
    assert f16.convert_np_to_float16 is not half  # put back after each conversion
