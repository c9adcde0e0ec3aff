"""Expert banks (backends/onnxruntime/bank.py): a layer's expert graphs merged side by side, checked block by block."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from m3edge import bundle
from m3edge.backends.onnxruntime.bank import BankReference, merge
from m3edge.backends import SessionConfig, open_graph


def assert_bank_is_its_experts(root, layer: int = 0) -> None:
    """Every block of the layer's bank equals its expert's own graph on the same rows, to the bit (the same
    kernels on the same rows), and the bank reads the experts' weights files: it stores no weights."""
    b = bundle.open_bundle(root)
    entry = next(g for g in b.graphs if g["role"] == "bank" and g["layer"] == layer)
    c, (n, d) = entry["bucket"], entry["inputs"][0]["shape"]
    bank = open_graph(b.graph_file(entry), entry, SessionConfig())
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    y = bank.run(x)[0]
    for e in range(n // c):
        g = b.find("expert", c, layer, e)
        assert np.array_equal(open_graph(b.graph_file(g), g, SessionConfig()).run(x[c * e:c * e + c])[0],
                              y[c * e:c * e + c]), f"expert {e}"
    model = onnx.load(str(b.path(entry["path"])), load_external_data=False)
    locations = {d.value for t in model.graph.initializer for d in t.external_data if d.key == "location"}
    assert locations == {f"weights.{e}" for e in range(n // c)}
    assert entry["weights"] == [f"graphs/layer{layer}/expert_{e:02d}.weights" for e in range(n // c)]


def test_a_bank_is_its_experts_side_by_side(tiny_bundle):
    assert_bank_is_its_experts(tiny_bundle)


def test_the_reference_runs_each_expert_on_its_block(tiny_agent):
    experts = list(tiny_agent.layers[0].experts)
    x = torch.randn(3 * len(experts), tiny_agent.cfg.d_model)
    with torch.no_grad():
        y = BankReference(experts, 3)(x)
        for e, expert in enumerate(experts):
            torch.testing.assert_close(y[3 * e:3 * e + 3], expert(x[3 * e:3 * e + 3]), rtol=0, atol=0)


def test_only_single_port_expert_graphs_merge():
    two = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["h", "bias"], ["y"])], "router",
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])]))
    with pytest.raises(ValueError, match="expert 0: expected one input 'h'"):
        merge([two], 2, 4)
