"""INT8 MatMuls of a shared graph written out as onnxruntime's integer kernel: the experts' own outputs, exactly."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from m3edge import bundle
from m3edge.backends import SessionConfig
from m3edge.backends.onnxruntime.runtime import OrtGraph
from m3edge.bundle import GraphFile
from m3edge.runtime.agent import EdgeAgent
from m3edge.runtime.options import RuntimeOptions
from m3edge.runtime.qdq import int8_activations_native, integer_matmuls
from m3edge.runtime.template import weights_as_inputs


@pytest.fixture(scope="module", params=["host-cpu", "rpi5"])
def int8_bundle(request, tmp_path_factory, tiny_checkpoint):
    """The tiny checkpoint at INT8 laid out for x86 (uint8 activations) and for ARM (int8 activations, which the
    rewrite keeps for ARM's kernels and re-zeroes to uint8 for x86's)."""
    import json

    from m3edge import checkpoint, targets
    from m3edge.export.pipeline import ExportOptions, export_bundle

    from conftest import DATA

    d = tmp_path_factory.mktemp(f"int8-{request.param}")
    spec = targets.load(request.param).to_dict() | {"name": f"tiny-{request.param}", "aliases": [],
                                                     "token_buckets": [1, 8], "capacity_buckets": [2, 8]}
    (d / "target.json").write_text(json.dumps(spec))
    agent, source = checkpoint.build_agent(tiny_checkpoint)
    export_bundle(agent, source, targets.load(str(d / "target.json")), d / "tiny", DATA,
                  opts=ExportOptions(precision="int8", parity_tokens=256, allow_accuracy_drop=True))
    return d / "tiny", request.param


def _ops(model: bytes) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load_from_string(model).graph.node)


@pytest.mark.parametrize("int8_activations", [False, True], ids=["x86-kernels", "arm-kernels"])
def test_every_int8_matmul_runs_on_the_integer_kernel_with_the_experts_own_outputs(int8_bundle, int8_activations,
                                                                                   tmp_path):
    root, profile = int8_bundle
    b = bundle.open_bundle(root)
    kinds = {}
    for e in range(8):
        entry = b.find("expert", 2, 0, e)
        kinds.setdefault(entry["path"], []).append(entry)
    rng = np.random.default_rng(0)
    shared_files = 0
    for path, entries in kinds.items():
        before = weights_as_inputs(b.read(path))
        t = integer_matmuls(before, int8_activations)
        onnx.checker.check_model(onnx.load_from_string(t.model), full_check=True)
        ops = _ops(t.model)
        assert ops["MatMulIntegerToFloat"] == _ops(before.model)["MatMul"] > 0, path
        assert "MatMul" not in ops
        activations = {x.onnx_type for x in before.tensors if x.name == "h_zero_point"}
        assert activations == ({3} if profile == "rpi5" else {2})  # ARM bundles: int8 activations; x86: uint8
        # int8 activations are re-zeroed to uint8 for x86's kernels, kept for ARM's; uint8 ones always kept
        assert (ops["Cast"] > 0) == (profile == "rpi5" and not int8_activations), path
        # What onnxruntime runs: no float MatMul over weights dequantized per call is left.
        d = tmp_path / path.replace("/", "_")
        d.mkdir()
        shared = OrtGraph(GraphFile(path, t.model, {}), SessionConfig(profile_dir=str(d)))
        x = rng.standard_normal(entries[0]["inputs"][0]["shape"]).astype(np.float32) * 3
        outs = []
        for e in entries:
            feeds = t.feeds({"weights": b.read(e["weights"])})
            got = shared.run_feeds({shared.input_names[0]: x, **feeds})[0]
            own = OrtGraph(b.graph_file(e)).run(x)[0]
            np.testing.assert_array_equal(got, own)
            outs.append(got)
        if len(outs) > 1:
            assert not np.array_equal(outs[0], outs[1])  # each expert's own weights and scales
            shared_files += 1
        optimized = onnx.load(str(next(d.glob("*.optimized.onnx"))))
        assert not {"MatMul", "Gemm"} & {n.op_type for n in optimized.graph.node}
    assert shared_files > 0  # some graph file served several experts


def test_the_activation_type_follows_the_cpu():
    assert int8_activations_native("aarch64") and int8_activations_native("arm64")
    assert not int8_activations_native("x86_64") and not int8_activations_native("AMD64")


def test_a_graph_without_int8_matmuls_comes_back_unchanged(tiny_bundle):
    b = bundle.open_bundle(tiny_bundle)
    t = weights_as_inputs(b.read(b.find("expert", 2, 0, 0)["path"]))
    assert integer_matmuls(t) is t


def test_a_budget_runs_int8_experts_through_shared_sessions_with_the_same_bytes(int8_bundle):
    path, _ = int8_bundle
    with EdgeAgent.open(path) as agent:
        resident = agent.generate(b"def main(", 48)
    with EdgeAgent.open(path, options=RuntimeOptions(cache_experts=2)) as agent:
        assert agent.executor.shares_sessions
        assert agent.generate(b"def main(", 48) == resident
        assert all("MatMulIntegerToFloat" in _ops(g.template.model) for g in agent.executor._shared.values())


def _qdq_model(tmp_path, weights=TensorProto.INT8, per_axis=False, dq_output=False, reverse=False):
    """y = DQ(Q(x)) @ DQ(W), every initializer external as in a bundle: (model bytes, weights bytes, path)."""
    k, n = 64, 32
    rng = np.random.default_rng(1)
    lo, hi = (-127, 128) if weights == TensorProto.INT8 else (0, 256)
    w = rng.integers(lo, hi, (k, n))
    scale = rng.uniform(0.001, 0.01, n).astype(np.float32) if per_axis else np.float32(0.004)
    wt = np.int8 if weights == TensorProto.INT8 else np.uint8
    arrays = {"w": w.astype(wt), "sw": np.asarray(scale, np.float32),
              "zw": np.full(n, 3, wt) if per_axis else np.asarray(3, wt),
              "s": np.asarray(0.02, np.float32), "z": np.asarray(-5, np.int8)}
    inits = [onnx.numpy_helper.from_array(a, name) for name, a in arrays.items()]  # raw data: saved external
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], **({"axis": 1} if per_axis else {})),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])]
    if dq_output:
        outputs.append(helper.make_tensor_value_info("xd", TensorProto.FLOAT, [2, k]))
    graph = helper.make_graph(nodes[::-1] if reverse else nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights",
                    size_threshold=0)
    return path.read_bytes(), (tmp_path / "weights").read_bytes(), path


def _same_outputs(path, t, data, exact=True):
    x = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32) * 2
    own = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    shared = ort.InferenceSession(t.model, providers=["CPUExecutionProvider"])
    got = shared.run(None, {"x": x, **t.feeds({"weights": data})})
    for a, b in zip(got, own):
        np.testing.assert_allclose(a, b, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-5)


@pytest.mark.parametrize("case", ["uint8-weights-on-arm", "dq-read-by-a-graph-output", "nodes-out-of-order"])
def test_the_rewrite_keeps_what_is_still_read_and_only_pairs_types_onnxruntime_runs(tmp_path, case):
    raw, data, path = _qdq_model(tmp_path, weights=TensorProto.UINT8 if case == "uint8-weights-on-arm" else TensorProto.INT8,
                                 dq_output=case == "dq-read-by-a-graph-output", reverse=case == "nodes-out-of-order")
    t = integer_matmuls(weights_as_inputs(raw), int8_activations=True)
    ops = _ops(t.model)
    assert ops["MatMulIntegerToFloat"] == 1 and "MatMul" not in ops
    # int8 activations meet uint8 weights: no such kernel, so they are re-zeroed to uint8 even on ARM
    assert (ops["Cast"] > 0) == (case == "uint8-weights-on-arm")
    assert (ops["DequantizeLinear"] > 0) == (case == "dq-read-by-a-graph-output")
    # onnxruntime itself leaves a MatMul unfused when its DQ is read elsewhere: float sums, equal to ~1e-6
    _same_outputs(path, t, data, exact=case != "dq-read-by-a-graph-output")


def test_per_axis_weights_are_left_as_they_are(tmp_path):
    raw, _, _ = _qdq_model(tmp_path, per_axis=True)
    t = weights_as_inputs(raw)
    assert integer_matmuls(t, int8_activations=False) is t
