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
from m3edge.runtime.options import RuntimeOptions

from conftest import DATA, run_cli
from test_bank import assert_bank_is_its_experts


@pytest.mark.parametrize("method", quantize.METHODS)
def test_int8_export_with_each_calibration_method(tmp_path, tiny_target, tiny_checkpoint, method):
    out = tmp_path / method
    r = run_cli("export", "--target", tiny_target, "--checkpoint", tiny_checkpoint, "-o", out, "--precision", "int8",
                "--calibration-method", method, "--allow-accuracy-drop", "--parity-tokens", "256", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bundle"] == str(out)  # stdout is one JSON object, calibrator chatter kept out
    assert "pre-processing" not in r.stderr  # onnxruntime's advice for a step skipped on purpose (export/quantize.py)
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
    assert quantize.QUANT_TYPES["arm"].extra == {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
                                                 "DedicatedQDQPair": True}


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


# --- weight-only precisions (MatMulNBits) -----------------------------------------------------------------

def _ops(path):
    return [n for n in onnx.load(str(path), load_external_data=False).graph.node]


@pytest.mark.parametrize("precision,bits", [("int4", 4), ("int8-weight-only", 8)])
def test_weight_only_export_runs_and_is_judged_by_its_own_gates(tmp_path, tiny_target, tiny_checkpoint, precision, bits):
    out = tmp_path / precision
    r = run_cli("export", "--target", tiny_target, "--checkpoint", tiny_checkpoint, "-o", out, "--precision", precision,
                "--allow-accuracy-drop", "--parity-tokens", "256", "--json")
    assert r.returncode == 0, r.stderr
    assert "matmul_nbits_quantizer" not in r.stderr  # the quantizer's per-node log is kept off stderr
    m = bundle.open_bundle(out).manifest
    assert {g["precision"] for g in m["graphs"] if g["role"] != "reader"} == {precision}
    settings = m["precision"]["weight_only"][precision]
    assert settings == quantize.manifest_settings(quantize.WEIGHT_ONLY[(precision, "x86")]) and settings["bits"] == bits
    # float16 scales are recorded; float32, what every bundle stored before, leaves the manifest as it was
    assert settings.get("scale_dtype") == ("float16" if bits == 4 else None)
    for role in ("expert", "encoder", "router", "head"):
        g = next(g for g in m["graphs"] if g["role"] == role)
        nodes = _ops(out / g["path"])
        nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
        assert nbits and all(onnx.helper.get_attribute_value(a) == bits for n in nbits for a in n.attribute
                             if a.name == "bits"), role
        assert not any(n.op_type in ("Gemm", "MatMul") for n in nodes), role  # every weight is quantized
        # Packed weights, scales and zero points are the module's weights file's, not the shared graph file's.
        inits = onnx.load(str(out / g["path"]), load_external_data=False).graph.initializer
        assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in inits if t.data_type != onnx.TensorProto.INT64)
        dims = {t.name: list(t.dims) for t in inits}
        cast_from = {n.output[0]: n.input[0] for n in nodes if n.op_type == "Cast"}
        types = {t.name: t.data_type for t in inits}
        for n in nbits:  # B in MatMulNBits' layout: [N, K / block, block * bits / 8] bytes
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            assert dims[n.input[1]] == [a["N"], -(-a["K"] // a["block_size"]), a["block_size"] * bits // 8]
            stored = types[cast_from[n.input[2]]] if n.input[2] in cast_from else types[n.input[2]]
            assert stored == {"float16": onnx.TensorProto.FLOAT16, "float32": onnx.TensorProto.FLOAT}[
                settings.get("scale_dtype", "float32")]  # int4's scales stored as float16, int8's as float32
    parity = json.loads((out / "reports" / "parity.json").read_text())
    assert parity["gates"]["bpb_increase"] == 0.03 and parity["gates"]["top1_agreement"] == 0.95
    assert parity["end_to_end"]["gates"]["top1_agreement"] == 0.95
    acc = json.loads((out / "reports" / "accuracy.json").read_text())
    assert acc["weight_only"][precision]["block_size"] == settings["block_size"]
    # tiny: K = 16, so a scale and zero point per 16 values, and its embeddings and norms stay float
    ratio = acc["weights_bytes"] / acc["fp32_weights_bytes"]
    assert ratio < (0.45 if bits == 4 else 0.65), ratio
    assert not (out / "reports" / "calibration.json").exists()  # nothing calibrated
    with EdgeAgent.open(out) as agent:
        assert len(agent.generate(b"x = ", 4)) == 4
    # A cache smaller than the experts would share sessions with weights as inputs: not for MatMulNBits.
    with EdgeAgent.open(out, options=RuntimeOptions(cache_experts=2)) as agent:
        assert len(agent.generate(b"x = ", 4)) == 4
        assert agent.executor.shares_sessions is False
    assert_bank_is_its_experts(out)  # the bank reads each expert's own packed weights
    r = run_cli("verify", out, "--json", "--tokens", "128")
    assert r.returncode in (0, 1), r.stderr
    assert json.loads(r.stdout)["gates"]["top1_agreement"] == 0.95


def test_weight_only_per_role_from_the_profile(tmp_path, tiny_checkpoint):
    d = targets.load("rpi5").to_dict() | {"name": "tiny-int4", "aliases": [], "token_buckets": [1, 8],
                                          "capacity_buckets": [2, 8], "expert_banks": False}
    d["precision"] = {"encoder": "fp32", "alignment": "fp32", "router": "int8-weight-only", "expert": "int4",
                      "head": "fp32"}
    profile = tmp_path / "tiny-int4.json"
    profile.write_text(json.dumps(d))
    out = tmp_path / "b"
    r = run_cli("export", "--target", profile, "--checkpoint", tiny_checkpoint, "-o", out, "--allow-accuracy-drop",
                "--parity-tokens", "128", "--json")
    assert r.returncode == 0, r.stderr
    m = bundle.open_bundle(out).manifest
    by_role = {g["role"]: g for g in m["graphs"]}
    assert {r: by_role[r]["precision"] for r in ("encoder", "router", "expert", "head")} == {
        "encoder": "fp32", "router": "int8-weight-only", "expert": "int4", "head": "fp32"}
    assert set(m["precision"]["weight_only"]) == {"int4", "int8-weight-only"}
    assert m["precision"]["weight_only"]["int4"] == quantize.manifest_settings(quantize.WEIGHT_ONLY[("int4", "arm")])
    assert "MatMulNBits" not in {n.op_type for n in _ops(out / by_role["encoder"]["path"])}
    assert "MatMulNBits" in {n.op_type for n in _ops(out / by_role["expert"]["path"])}


@pytest.mark.parametrize("value", ["int3", "INT4", "int4-weight-only"])
def test_bad_precision_is_exit_2_with_one_line(tmp_path, tiny_target, value):
    r = run_cli("export", "--target", tiny_target, "--preset", "tiny", "-o", tmp_path / "b", "--precision", value)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and f"--precision {value!r}" in r.stderr and "int4" in r.stderr
    assert not (tmp_path / "b").exists()


def test_a_profile_asking_for_an_unknown_precision_is_bad_input(tmp_path):
    d = targets.load("rpi5").to_dict() | {"precision": {r: "int3" for r in ("encoder", "alignment", "router",
                                                                            "expert", "head")}}
    with pytest.raises(Exception, match="precision.encoder.*int8-weight-only, int4"):
        targets.Target.from_dict(d, "x.json")
    d["precision"] = {r: "int4" for r in d["precision"]}
    assert targets.Target.from_dict(d, "x.json").precision["expert"] == "int4"


def test_bucket_variants_are_calibrated_once_with_the_same_result(monkeypatch, tmp_path):
    """The largest bucket calibrates and writes its ranges; a smaller bucket reads them instead of running the
    calibration again, and gets the graph its own minmax calibration over the same rows would give."""
    import importlib

    from onnx import TensorProto, helper, numpy_helper

    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the module, not its function
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 5)).astype(np.float32)

    def model(rows):
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 5])],
                              [numpy_helper.from_array(w, "w")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    x = rng.standard_normal((8, 3)).astype(np.float32)
    feeds = {b: [{"x": x[i:i + b]} for i in range(0, 8, b)] for b in (4, 1)}
    calibrations = []
    real = ort_quantize.create_calibrator
    monkeypatch.setattr(ort_quantize, "create_calibrator", lambda *a, **k: calibrations.append(1) or real(*a, **k))
    target = targets.load("rpi5")
    ranges = tmp_path / "ranges.json"
    quantize.quantize(model(4), feeds[4], target, ranges=ranges)
    cached = quantize.quantize(model(1), feeds[1], target, ranges=ranges)
    assert len(calibrations) == 1 and ranges.is_file()  # the second bucket read the ranges
    fresh = quantize.quantize(model(1), feeds[1], target)
    assert len(calibrations) == 2
    assert cached.SerializeToString() == fresh.SerializeToString()


def test_gemms_become_matmuls_with_the_same_results():
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 3)).astype(np.float32)
    m = quantize.gemms_as_matmuls(model)
    assert [n.op_type for n in m.graph.node] == ["MatMul", "Add"] and {t.name for t in m.graph.initializer} == {"w_kn", "b"}
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(y, x @ w.T + b, atol=1e-6)


def _nbits_session(model, optimized=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as the runtime opens graphs
    if optimized:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _two_matmuls(k=256, n=128, scale=1.0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) * scale for s in ((k, n), (n, k)))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"], name="a"),
                           helper.make_node("MatMul", ["h", "w2"], ["y"], name="b")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), w1, w2


@pytest.mark.parametrize("bits,share", [(4, 0.05), (8, 0.5)])
def test_float16_scales_fold_back_to_float32_at_load_with_the_same_results(tmp_path, bits, share):
    """Scales stored as float16 behind a Cast: 1/8 of a bit per 4-bit weight fewer bytes; onnxruntime folds
    the Cast when it opens the graph (none is left to run, so MatMulNBits prepacks constant scales), and the
    outputs differ from fp32-stored scales' by a small part of the quantization's own error at 4 bits (8-bit's
    finer steps make it a larger part: why int8-weight-only keeps float32 scales)."""
    from onnx import numpy_helper

    model, w1, w2 = _two_matmuls()
    s16 = quantize.WeightOnly(bits, 32, False, 4, "float16")  # 4-bit's chosen storage, tried at 8 bits too
    q16 = quantize.quantize_weight_only(onnx.ModelProto.FromString(model.SerializeToString()), "int4", None, s16)
    q32 = quantize.quantize_weight_only(onnx.ModelProto.FromString(model.SerializeToString()), "int4", None,
                                        quantize.WeightOnly(bits, 32, False, 4, "float32"))
    inits = {t.name: t for t in q16.graph.initializer}
    casts = [n for n in q16.graph.node if n.op_type == "Cast"]
    nbits = [n for n in q16.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 and {n.input[2] for n in nbits} == {c.output[0] for c in casts}
    assert all(inits[c.input[0]].data_type == onnx.TensorProto.FLOAT16 for c in casts)
    assert not any(n.op_type == "Cast" for n in q32.graph.node)
    scale_bytes = sum(t.ByteSize() for t in q32.graph.initializer) - sum(t.ByteSize() for t in q16.graph.initializer)
    assert scale_bytes > 0.9 * 2 * (w1.size + w2.size) / 32  # two bytes saved per block
    x = np.random.default_rng(2).standard_normal((1, w1.shape[0])).astype(np.float32)
    y16 = _nbits_session(q16, tmp_path / "opt.onnx").run(None, {"x": x})[0]
    y32 = _nbits_session(q32).run(None, {"x": x})[0]
    ref = x @ w1 @ w2
    assert not any(n.op_type == "Cast" for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)  # folded
    assert np.abs(y16 - y32).max() < share * np.abs(y32 - ref).max()
    # A scale below float16's normal range would lose its precision: that tensor stays float32.
    tiny, _, _ = _two_matmuls(scale=1e-6)
    qt = quantize.quantize_weight_only(tiny, "int4", None, s16)
    scales = [numpy_helper.to_array({t.name: t for t in qt.graph.initializer}[n.input[2]])
              for n in qt.graph.node if n.op_type == "MatMulNBits"]
    assert all(a.dtype == np.float32 for a in scales) and not any(n.op_type == "Cast" for n in qt.graph.node)
    with pytest.raises(ValueError, match="scale dtype"):
        quantize.quantize_weight_only(model, "int4", None, quantize.WeightOnly(bits, 32, False, 4, "bfloat16"))


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"), reason="onnxruntime's x86 rewrite")
def test_arm_int8_weighted_ops_run_on_the_integer_kernel_on_x86(tmp_path):
    """The episodic expert's gate Gemms read one activation. They are quantized as MatMul + Add (a QDQ Gemm runs
    as QGemm, half MatMulIntegerToFloat's speed at batch 1), each with its own Q/DQ pair, and the runtime keeps
    onnxruntime's CSE and MatMulAddFusion off, so on x86 every one runs as MatMulIntegerToFloat over uint8
    activations (S8 -> U8 rewritten): none stays a float MatMul over weights dequantized per call."""
    from m3edge.bundle import GraphFile
    from m3edge.backends import SessionConfig
    from m3edge.backends.onnxruntime.runtime import OrtGraph

    agent, _ = build_agent(preset_name="tiny")
    for kind in ("episodic", "semantic"):  # semantic: a residual Add reads the same DQ as the next MatMul
        spec = next(s for s in split(agent, (1,), (1,)) if s.role == "expert" and s.memory_type == kind)
        model = export_module(spec.module, spec.example(1), ["h"], ["y"], 17)
        rng = np.random.default_rng(0)
        feeds = [{"h": rng.standard_normal((1, agent.cfg.d_model)).astype(np.float32)} for _ in range(8)]
        q = quantize.quantize(model, feeds, targets.load("rpi5"), "minmax", per_channel=False)
        matmuls = [n for n in q.graph.node if n.op_type == "MatMul"]
        assert not any(n.op_type == "Gemm" for n in q.graph.node)
        assert len({n.input[0] for n in matmuls}) == len(matmuls)  # no DQ output shared between MatMuls
        d = tmp_path / kind
        d.mkdir()
        graph = OrtGraph(GraphFile(f"{kind}.onnx", q.SerializeToString(), {}), SessionConfig(profile_dir=str(d)))
        graph.run(feeds[0]["h"])
        opt = onnx.load(str(next(d.glob("*.optimized.onnx"))))
        inits = {t.name: t for t in opt.graph.initializer}
        producer = {o: n for n in opt.graph.node for o in n.output}
        fused = [n for n in opt.graph.node if n.op_type == "MatMulIntegerToFloat"]
        assert len(fused) == len(matmuls), kind
        assert not any(n.op_type in ("MatMul", "Gemm", "QGemm") for n in opt.graph.node), kind
        for n in fused:
            zero_point = inits[producer[n.input[0]].input[2]]  # the QuantizeLinear feeding A
            assert zero_point.data_type == onnx.TensorProto.UINT8


def test_reference_rpi5_int4_bundle_meets_the_weight_only_gates(tmp_path):
    """The rpi5-int4 profile's claim (targets/rpi5-int4.json): INT4 experts and INT8 weight-only dense graphs pass
    bits/byte +3%, top-1 >= 95%, routing >= 95% on the small reference, at a fifth of fp32's weight bytes."""
    out = tmp_path / "rpi5-int4"
    r = run_cli("export", "--target", "rpi5-int4", "--checkpoint", "checkpoints/small", "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    e2e = json.loads(r.stdout)["end_to_end"]
    assert e2e["passed"] and e2e["gates"]["top1_agreement"] == 0.95 and e2e["gates"]["bpb_increase"] == 0.03
    assert e2e["top1_agreement"] >= 0.95 and e2e["routing_agreement"] >= 0.95
    acc = json.loads((out / "reports" / "accuracy.json").read_text())
    assert acc["weights_bytes"] < 0.21 * acc["fp32_weights_bytes"]
