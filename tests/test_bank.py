"""Expert banks (export/bank.py): a layer's expert graphs merged side by side, checked block by block."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from m3edge import bundle
from m3edge.export.bank import BankReference, merge
from m3edge.runtime.graph import SessionConfig, open_graph


def test_a_bank_is_its_experts_side_by_side(tiny_bundle):
    b = bundle.open_bundle(tiny_bundle)
    entry = b.find("bank", 8, 0)
    bank = open_graph(b.path(entry["path"]), entry, SessionConfig())
    x = np.random.default_rng(0).standard_normal((8 * 8, 16)).astype(np.float32)
    y = bank.run(x)[0]
    for e in range(8):
        g = b.find("expert", 8, 0, e)
        # The same kernels on the same rows: equal to the bit, not within a tolerance.
        assert np.array_equal(open_graph(b.path(g["path"]), g, SessionConfig()).run(x[8 * e:8 * e + 8])[0],
                              y[8 * e:8 * e + 8])
    # Its initializers are the experts' own, read from their weights files: the bank stores no weights.
    model = onnx.load(str(b.path(entry["path"])), load_external_data=False)
    locations = {d.value for t in model.graph.initializer for d in t.external_data if d.key == "location"}
    assert locations == {f"expert_{e:02d}.weights" for e in range(8)}


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
