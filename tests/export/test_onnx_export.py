"""ONNX export helpers: compact names keep the graph's function and its ports."""

import numpy as np
import onnx
import onnxruntime as ort

from m3edge.export.graphs import split
from m3edge.backends.onnxruntime.onnx_export import compact, export_module


def test_compact_shrinks_the_graph_and_keeps_its_outputs(tiny_agent):
    spec = next(s for s in split(tiny_agent, [4], [4]) if s.role == "router")
    names = [p.name for p in spec.inputs], [p.name for p in spec.outputs]
    model = export_module(spec.module, spec.example(4), *names, 17)
    before = model.SerializeToString()
    small = compact(onnx.load_from_string(before))
    onnx.checker.check_model(small, full_check=True)
    assert len(small.SerializeToString()) < 0.8 * len(before)
    assert [i.name for i in small.graph.input] == names[0] and [o.name for o in small.graph.output] == names[1]
    assert all(n.name == "" for n in small.graph.node)
    feeds = {n: np.random.default_rng(0).standard_normal(spec.shape(p, 4)).astype(np.float32)
             for n, p in zip(names[0], spec.inputs)}
    run = lambda m: ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feeds)  # noqa: E731
    for a, b in zip(run(before), run(small.SerializeToString())):
        assert np.array_equal(a, b)
    # Deterministic: the same graph gets the same names (bundles stay byte-identical).
    assert compact(onnx.load_from_string(before)).SerializeToString() == small.SerializeToString()
