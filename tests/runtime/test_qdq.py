"""INT8 MatMuls of a shared graph written out as onnxruntime's integer kernel: the experts' own outputs, exactly."""

import collections

import numpy as np
import onnx
import pytest

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
    """The tiny checkpoint at INT8 for x86 (uint8 activations) and for ARM (int8 activations: the rewrite
    re-zeroes them to uint8 in the graph)."""
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
    for path, entries in kinds.items():
        before = weights_as_inputs(b.read(path))
        t = integer_matmuls(before, int8_activations)
        onnx.checker.check_model(onnx.load_from_string(t.model), full_check=True)
        ops = _ops(t.model)
        assert ops["MatMulIntegerToFloat"] == _ops(before.model)["MatMul"] > 0, path
        assert "MatMul" not in ops
        activations = {t.onnx_type for t in before.tensors if t.name == "h_zero_point"}
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
        optimized = onnx.load(str(next(d.glob("*.optimized.onnx"))))
        assert not {"MatMul", "Gemm"} & {n.op_type for n in optimized.graph.node}


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
