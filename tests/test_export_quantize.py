"""INT8 export: routing-aware calibration, each method, reports, gates, and the runtime on the result."""

import json

import numpy as np
import onnx
import pytest

from m3edge import bundle, targets
from m3edge.checkpoint import build_agent
from m3edge.export import pipeline, quantize
from m3edge.export.capture import capture
from m3edge.export.graphs import split
from m3edge.backends.onnxruntime.onnx_export import export_module
from m3edge.export.parity import Gates
from m3edge.data import load_split
from m3edge.runtime.agent import EdgeAgent

from conftest import DATA, run_cli
from test_bank import assert_bank_is_its_experts


@pytest.mark.parametrize("method", quantize.METHODS)
def test_int8_export_with_each_calibration_method(tmp_path, tiny_target, tiny_checkpoint, method):
    out = tmp_path / method
    r = run_cli("export", "--target", tiny_target, "--checkpoint", tiny_checkpoint, "-o", out, "--precision", "int8",
                "--calibration-method", method, "--allow-accuracy-drop", "--parity-tokens", "256", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bundle"] == str(out)  # stdout is one JSON object, calibrator chatter kept out
    m = bundle.open_bundle(out).manifest
    assert {g["precision"] for g in m["graphs"] if g["role"] != "reader"} == {"int8"}
    assert {g["precision"] for g in m["graphs"] if g["role"] == "reader"} == {"fp32"}  # always: docs/export.md
    g = next(g for g in m["graphs"] if g["role"] == "expert")
    ops = {n.op_type for n in onnx.load(str(out / g["path"]), load_external_data=False).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    acc = json.loads((out / "reports" / "accuracy.json").read_text())
    modules = {(g["role"], g["layer"], g["expert"]) for g in m["graphs"]}
    assert acc["calibration_method"] == method and len(acc["sqnr_db"]) == len(modules)
    assert all(v > 10 for v in acc["sqnr_db"].values())  # quantized, not broken
    assert acc["weights_bytes"] < acc["fp32_weights_bytes"]
    cal = json.loads((out / "reports" / "calibration.json").read_text())
    assert cal["context"] == "x86" and cal["types"]["reduce_range"] is True  # host-cpu runs on x86
    with EdgeAgent.open(out) as agent:
        assert len(agent.generate(b"x = ", 4)) == 4
    assert_bank_is_its_experts(out)  # its Q/DQ scales are each expert's own


def test_an_expert_never_routed_falls_back_to_its_layer_rows(tiny_agent):
    cap = capture(tiny_agent, load_split(DATA, "calibration"), 64)
    cap.routed[(0, 3)] = cap.routed[(0, 3)][:0]  # nobody routed to it
    rows, fallback = cap.calibration_rows("expert", 0, 3, quantize.MIN_EXPERT_ROWS)
    assert fallback and rows[0].shape == cap.inputs[("expert", 0, 3)][0].shape
    rows, fallback = cap.calibration_rows("router", 0, None, quantize.MIN_EXPERT_ROWS)
    assert not fallback and len(rows) == 2


def test_quantization_types_follow_the_target():
    assert quantize.context_of(targets.load("jetson")) == "tensorrt"
    assert quantize.context_of(targets.load("rpi5")) == "arm"
    assert quantize.context_of(targets.load("host-cpu")) == "x86"
    assert quantize.QUANT_TYPES["tensorrt"].extra == {"ActivationSymmetric": True, "WeightSymmetric": True,
                                                      "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}
    assert quantize.QUANT_TYPES["arm"].activation == "QInt8"
    assert quantize.QUANT_TYPES["arm"].extra == {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}


def test_missed_accuracy_gate_exits_1_and_writes_nothing(tmp_path, tiny_target):
    agent, source = build_agent(preset_name="tiny")
    opts = pipeline.ExportOptions(precision="int8", parity_tokens=128, gates=Gates(top1_agreement=1.01))
    with pytest.raises(pipeline.ExportFailed, match="accuracy outside the gates") as e:
        pipeline.export_bundle(agent, source, targets.load(str(tiny_target)), tmp_path / "b", DATA, opts=opts)
    assert e.value.exit_code == 1 and list(tmp_path.iterdir()) == []


def test_sqnr():
    x = np.ones(100)
    assert quantize.sqnr_db(x, x) == float("inf")
    assert abs(quantize.sqnr_db(x, x + 0.1) - 20.0) < 1e-9


def test_reference_rpi5_bundle_is_int8_and_meets_the_gates(tmp_path):
    out = tmp_path / "rpi5"
    r = run_cli("export", "--target", "rpi5", "--checkpoint", "checkpoints/small", "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    e2e = json.loads(r.stdout)["end_to_end"]
    assert e2e["quantized"] and e2e["passed"]
    assert e2e["bits_per_byte_increase"] <= 0.02 and e2e["top1_agreement"] >= 0.97 and e2e["routing_agreement"] >= 0.95
    acc = json.loads((out / "reports" / "accuracy.json").read_text())
    assert set(v for k, v in acc["precision"].items() if k != "reader") == {"int8"}
    r = run_cli("verify", out, "--json", "--tokens", "1024")  # judged by the quantized gates, not by atol
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["passed"] and v["routing_agreement"] >= 0.95 and v["top1_agreement"] >= 0.97


def _router_int8(target_name: str):
    agent, _ = build_agent(preset_name="tiny")
    spec = next(s for s in split(agent, (4,), (1,)) if s.role == "router")
    names = ([p.name for p in spec.inputs], [p.name for p in spec.outputs])
    model = export_module(spec.module, spec.example(4), *names, 17)
    cap = capture(agent, load_split(DATA, "calibration"), 64)
    x, bias = cap.inputs[("router", 0, None)]
    feeds = [{"x": x[i:i + 4], "bias": bias[i:i + 4]} for i in range(0, 64, 4)]
    return quantize.quantize(model, feeds, targets.load(target_name), "minmax")


def test_qdq_on_matmul_inputs_and_weights_not_on_outputs():
    """TensorRT's placement, also used for ARM: every Gemm/MatMul reads Q/DQ'd activations and weights (it runs
    in INT8), its output stays float; x86 keeps onnxruntime's default (outputs quantized too)."""
    for name, output_qdq in (("jetson", False), ("rpi5", False), ("rpi4", False), ("host-cpu", True)):
        g = _router_int8(name).graph
        producer = {o: n for n in g.node for o in n.output}
        consumers = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        gemms = [n for n in g.node if n.op_type in ("Gemm", "MatMul")]
        assert len(gemms) == 2
        for n in gemms:
            assert all(producer[i].op_type == "DequantizeLinear" for i in n.input[:2])
            assert any(c.op_type == "QuantizeLinear" for c in consumers.get(n.output[0], [])) is output_qdq
