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
from m3edge.runtime.qdq import integer_matmuls
from m3edge.runtime.template import weights_as_inputs


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, tiny_checkpoint, tiny_target):
    from m3edge import checkpoint, targets
    from m3edge.export.pipeline import ExportOptions, export_bundle

    from conftest import DATA

    agent, source = checkpoint.build_agent(tiny_checkpoint)
    out = tmp_path_factory.mktemp("int8") / "tiny"
    export_bundle(agent, source, targets.load(str(tiny_target)), out, DATA,
                  opts=ExportOptions(precision="int8", parity_tokens=256, allow_accuracy_drop=True))
    return out


def _ops(model: bytes) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load_from_string(model).graph.node)


def test_every_int8_matmul_runs_on_the_integer_kernel_with_the_experts_own_outputs(int8_bundle, tmp_path):
    b = bundle.open_bundle(int8_bundle)
    kinds = {}
    for e in range(8):
        entry = b.find("expert", 2, 0, e)
        kinds.setdefault(entry["path"], []).append(entry)
    rng = np.random.default_rng(0)
    for path, entries in kinds.items():
        before = weights_as_inputs(b.read(path))
        t = integer_matmuls(before)
        onnx.checker.check_model(onnx.load_from_string(t.model), full_check=True)
        ops = _ops(t.model)
        assert ops["MatMulIntegerToFloat"] == _ops(before.model)["MatMul"] > 0, path
        assert "MatMul" not in ops
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


def test_a_graph_without_int8_matmuls_comes_back_unchanged(tiny_bundle):
    b = bundle.open_bundle(tiny_bundle)
    t = weights_as_inputs(b.read(b.find("expert", 2, 0, 0)["path"]))
    assert integer_matmuls(t) is t


def test_a_budget_runs_int8_experts_through_shared_sessions_with_the_same_bytes(int8_bundle):
    with EdgeAgent.open(int8_bundle) as agent:
        resident = agent.generate(b"def main(", 48)
    with EdgeAgent.open(int8_bundle, options=RuntimeOptions(cache_experts=2)) as agent:
        assert agent.executor.shares_sessions
        assert agent.generate(b"def main(", 48) == resident
        assert all("MatMulIntegerToFloat" in _ops(g.template.model) for g in agent.executor._shared.values())
