"""Expert graph files with their weights as inputs: one session serves every expert sharing the file."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from m3edge import bundle
from m3edge.errors import BadInput
from m3edge.backends.onnxruntime.runtime import OrtGraph
from m3edge.runtime.template import weights_as_inputs


def test_weights_become_inputs_and_give_the_experts_own_outputs(tiny_bundle):
    b = bundle.open_bundle(tiny_bundle)
    entries = [b.find("expert", 2, 0, e) for e in range(8)]
    path = entries[0]["path"]
    mates = [e for e in entries if e["path"] == path]
    assert len(mates) > 1  # experts of one kind share the graph file
    t = weights_as_inputs(b.read(path))
    model = onnx.load_from_string(t.model)
    onnx.checker.check_model(model, full_check=True)
    names = [i.name for i in model.graph.input]
    assert names[1:] == [x.name for x in t.tensors] and len(t.tensors) > 0
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    shared = ort.InferenceSession(t.model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(entries[0]["inputs"][0]["shape"]).astype(np.float32)
    outs = []
    for e in mates:
        own = OrtGraph(b.graph_file(e)).run(x)[0]
        feeds = t.feeds({"weights": b.read(e["weights"])})
        got = shared.run(None, {names[0]: x, **feeds})[0]
        assert np.abs(got - own).max() <= 1e-6
        outs.append(got)
    assert not np.array_equal(outs[0], outs[1])  # each expert's own weights, not the first one's


def test_bad_input_is_refused(tiny_bundle):
    with pytest.raises(BadInput, match="not an ONNX model"):
        weights_as_inputs(b"\x0f\x00\x01")
    b = bundle.open_bundle(tiny_bundle)
    e = b.find("expert", 2, 0, 0)
    t = weights_as_inputs(b.read(e["path"]))
    with pytest.raises(BadInput, match="beyond the end of its weights file"):
        t.feeds({"weights": b.read(e["weights"])[:-8]})
