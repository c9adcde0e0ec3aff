"""Expert banks: every expert of a layer in one graph, for batches that touch most of them.

A batch of 16 tokens routes 64 (token, expert) pairs to about 40 of the small reference's 64 experts per
layer: 40 onnxruntime calls of ~8 us each, plus the Python around each call, where one call would do.
A bank is the layer's expert graphs (already exported, validated and quantized) merged side by side:

    x [E * C, d] -> Split into E blocks of C rows -> expert e's own nodes on block e -> Concat -> y [E * C, d]

Each expert's nodes, initializers and Q/DQ scales are its own graph's, names prefixed; the initializers
keep their external-data references, block e's renamed ``<name>.e`` (``weights.3``: the third weights file
the bank's manifest entry lists), so a bank reads the experts' own weights files and adds no weight bytes
to the bundle (only its graph file). Its outputs are the expert graphs' outputs exactly, block by
block, because the same kernels run on the same rows (a test holds it to that). Static shapes throughout:
C is one of the profile's capacity buckets, rows per expert.
"""

from __future__ import annotations

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn


def merge(experts: list[onnx.ModelProto], rows: int, width: int, in_name: str = "h", out_name: str = "y") -> onnx.ModelProto:
    """One graph running ``experts[e]`` on rows [e*rows, (e+1)*rows) of its input. The experts take
    ``in_name`` [rows, width] and give ``out_name`` [rows, width], as every expert graph of a bundle does."""
    nodes, inits, ys = [], [], []
    opsets: dict[str, int] = {}
    for i, model in enumerate(experts):
        g = model.graph
        if [v.name for v in g.input] != [in_name] or [v.name for v in g.output] != [out_name]:
            raise ValueError(f"expert {i}: expected one input {in_name!r} and one output {out_name!r}")
        if model.functions:  # their names would clash across experts; the exporter writes none
            raise ValueError(f"expert {i}: graphs with local functions are not merged")
        for o in model.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)

        def name(n: str, i=i) -> str:
            return f"e{i}/{n}" if n else n  # an empty name is an omitted optional input

        for t in g.initializer:
            t2 = TensorProto()
            t2.CopyFrom(t)
            t2.name = name(t.name)
            for kv in t2.external_data:
                if kv.key == "location":
                    kv.value = f"{kv.value}.{i}"
            inits.append(t2)
        for n in g.node:
            n2 = onnx.NodeProto()
            n2.CopyFrom(n)
            n2.name = name(n.name)
            del n2.input[:], n2.output[:]
            n2.input.extend(name(x) for x in n.input)
            n2.output.extend(name(x) for x in n.output)
            nodes.append(n2)
        ys.append(name(out_name))
    n = len(experts)
    sizes = helper.make_tensor("bank/split", TensorProto.INT64, [n], [rows] * n)
    split = helper.make_node("Split", ["x", "bank/split"], [f"e{i}/{in_name}" for i in range(n)], axis=0)
    concat = helper.make_node("Concat", ys, ["y"], axis=0)
    graph = helper.make_graph([split, *nodes, concat], "expert_bank",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n * rows, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n * rows, width])],
                              [sizes, *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              producer_name="m3edge")
    model.ir_version = max(m.ir_version for m in experts)
    return model


class BankReference(nn.Module):
    """What a bank computes, in torch: the agent's own experts, each on its block of ``rows`` rows."""

    def __init__(self, experts: list[nn.Module], rows: int):
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.rows = rows

    def forward(self, x):
        return torch.cat([e(block) for e, block in zip(self.experts, x.split(self.rows))])
