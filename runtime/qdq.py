"""INT8 MatMuls written out as MatMulIntegerToFloat for a graph whose weights are inputs (runtime/template.py).

onnxruntime turns ``MatMul(DQ(Q(x)), DQ(W))`` into its integer kernel only when W and every scale and zero point
are constant initializers. In a shared session they are inputs (one expert's bytes per call), so it ran a float
MatMul over weights dequantized on every call: 0.6-2.0 ms a seed INT8 expert against 0.06-0.2 ms on the expert's
own session. Written out here in the fused form onnxruntime itself makes, the integer kernel runs on the inputs
unpacked: 0.2-0.75 ms. As onnxruntime does (``QDQIsInt8Allowed``), int8 activations stay int8 on ARM, whose
kernels take int8 x int8, and are re-zeroed to uint8 elsewhere, whose kernels take uint8 x int8 (int8 x int8
unpacked took 3-5 ms a seed expert on this x86 host). Both forms accumulate the same integers and scale them the
same way: the outputs equal each expert's own session's to the bit (a test; onnxruntime re-zeroes the own
session's activations alike, so an x86 kernel without VNNI, whose uint8 x int8 sums can saturate, does so in both).

Like template.py this works on the protobuf wire format, so the device runtime needs no ``onnx`` package; a
graph without the pattern comes back unchanged.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace

from m3edge.runtime.protowire import fields, int_field, message
from m3edge.runtime.template import MODEL_GRAPH, Template

MODEL_OPSET = 8
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_OUTPUT = 1, 5, 12
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
INT8, UINT8, INT32 = 3, 2, 6
OFFSET = "m3edge/int8_to_uint8"  # 128: an int8 zero point + 128 is the uint8 one for the same values
ARM = ("aarch64", "arm64", "armv7l", "armv8l")
ONNX_DOMAINS = ("", "ai.onnx")
ATTR_TYPE, ATTR_GRAPH, ATTR_GRAPHS, GRAPH, GRAPHS = 20, 6, 11, 5, 10  # AttributeProto fields and types


def int8_activations_native(machine: str | None = None) -> bool:
    """Whether this CPU's integer kernels take int8 activations (ARM) rather than uint8 (x86)."""
    return (machine or platform.machine()).lower() in ARM


@dataclass
class Node:
    op: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attributed: bool
    raw: bytes
    subgraph: bool = False  # an attribute holds a graph (If, Loop, Scan, SequenceMap, contrib search ops)

    @property
    def onnx(self) -> bool:
        return self.domain in ONNX_DOMAINS


def _node(buf) -> Node:
    n = Node("", "", [], [], False, bytes(buf))
    for field, _, value, _ in fields(buf):
        if field == NODE_INPUT:
            n.inputs.append(bytes(value).decode())
        elif field == NODE_OUTPUT:
            n.outputs.append(bytes(value).decode())
        elif field == NODE_OP:
            n.op = bytes(value).decode()
        elif field == NODE_DOMAIN:
            n.domain = bytes(value).decode()
        elif field == NODE_ATTRIBUTE:
            n.attributed = True
            n.subgraph = n.subgraph or any(f in (ATTR_GRAPH, ATTR_GRAPHS) or (f == ATTR_TYPE and v in (GRAPH, GRAPHS))
                                           for f, _, v, _ in fields(value))
    return n


def _make(op: str, inputs, outputs, name: str, domain: str = "", to: int | None = None) -> Node:
    raw = b"".join(message(NODE_INPUT, i.encode()) for i in inputs) + b"".join(message(NODE_OUTPUT, o.encode()) for o in outputs)
    raw += message(NODE_NAME, name.encode()) + message(NODE_OP, op.encode())
    if to is not None:  # Cast's ``to``: AttributeProto name (1), i (3), type (20) = INT (2)
        raw += message(NODE_ATTRIBUTE, message(1, b"to") + int_field(3, to) + int_field(20, 2))
    if domain:
        raw += message(NODE_DOMAIN, domain.encode())
    return Node(op, domain, list(inputs), list(outputs), to is not None, raw)


def integer_matmuls(template: Template, int8_activations: bool | None = None) -> Template:
    """``template`` with each ``MatMul(DQ(Q(x, s, z), s, z), DQ(W, sw, zw))`` whose W, scales and zero points are
    per-tensor inputs replaced by ``MatMulIntegerToFloat(Q(x, s, z'), W, s, sw, z', zw)``: z' = z where the
    kernels take int8 activations (``int8_activations``, default: this CPU's), else uint8 z + 128."""
    if int8_activations is None:
        int8_activations = int8_activations_native()
    shapes = {t.name: (t.onnx_type, t.shape) for t in template.tensors}

    def scalar(name, types=None):  # a per-tensor input (of one of ``types``, when given)
        t = shapes.get(name)
        return t is not None and t[1] == () and (types is None or t[0] in types)

    model = memoryview(template.model)
    graph_raw = next((v for f, w, v, _ in fields(model) if f == MODEL_GRAPH and w == 2), None)
    if graph_raw is None:
        return template
    nodes = [_node(v) for f, w, v, _ in fields(graph_raw) if f == GRAPH_NODE]
    if any(n.subgraph for n in nodes):  # a body may read what the pruning below would drop
        return template
    producer = {o: n for n in nodes for o in n.outputs}
    out, converted, changed = [], {}, False
    for n in nodes:
        a, b = (producer.get(i) for i in n.inputs[:2]) if n.op == "MatMul" and n.onnx and len(n.inputs) == 2 else (None, None)
        q = producer.get(a.inputs[0]) if a is not None else None
        if (a is None or b is None or q is None or not (a.onnx and b.onnx and q.onnx)
                or {a.op, b.op} != {"DequantizeLinear"} or q.op != "QuantizeLinear"
                or a.attributed or b.attributed or q.attributed or len(a.inputs) != 3 or len(b.inputs) != 3
                or q.inputs[1:] != a.inputs[1:]):
            out.append(n)
            continue
        (_, sa, za), (w, sw, zw) = a.inputs, b.inputs
        wt = shapes.get(w)
        if not (scalar(sa) and scalar(sw) and scalar(za, (INT8, UINT8)) and scalar(zw, (INT8, UINT8)) and wt and len(wt[1]) == 2
                and wt[0] in (INT8, UINT8)):
            out.append(n)
            continue
        key = (q.inputs[0], sa, za, wt[0])
        if key not in converted:
            tag = f"m3edge/q/{len(converted)}"
            zu = za
            # int8 x int8 where the CPU takes it; onnxruntime has no int8 x uint8 kernel, and x86 takes uint8 x *
            if shapes[za][0] == INT8 and not (int8_activations and wt[0] == INT8):
                zu = f"{tag}/zero_point"
                out += [_make("Cast", [za], [f"{tag}/z32"], f"{tag}/cast", to=INT32),
                        _make("Add", [f"{tag}/z32", OFFSET], [f"{tag}/z32u"], f"{tag}/add"),
                        _make("Cast", [f"{tag}/z32u"], [zu], f"{tag}/cast_u8", to=UINT8)]
            out.append(_make("QuantizeLinear", [q.inputs[0], sa, zu], [f"{tag}/x"], f"{tag}/quantize"))
            converted[key] = (f"{tag}/x", zu)
        xq, zu = converted[key]
        out.append(_make("MatMulIntegerToFloat", [xq, w, sa, sw, zu, zw], n.outputs, f"{n.outputs[0]}/integer",
                         domain="com.microsoft"))
        changed = True
    if not changed:
        return template
    # Drop what nothing reads any more (the float DQs of the weights, the int8 Qs): onnxruntime runs them otherwise.
    # Walked from the graph's outputs through producers, so the nodes' order in the file does not matter.
    producer = {o: i for i, n in enumerate(out) for o in n.outputs}
    todo = [bytes(v2).decode() for f, w, v, _ in fields(graph_raw) if f == GRAPH_OUTPUT
            for f2, _, v2, _ in fields(v) if f2 == 1]
    keep: set[int] = set()
    while todo:
        i = producer.get(todo.pop())
        if i is not None and i not in keep:
            keep.add(i)
            todo.extend(out[i].inputs)
    live = [n for i, n in enumerate(out) if i in keep]
    offset_used = any(OFFSET in n.inputs for n in live)
    graph = bytearray()
    for f, w, v, raw in fields(graph_raw):
        if f == GRAPH_NODE:
            if live:
                graph += b"".join(message(GRAPH_NODE, n.raw) for n in live)
                live = []
            continue
        graph += raw
    if offset_used:
        graph += message(GRAPH_INITIALIZER, int_field(2, INT32) + message(8, OFFSET.encode()) + message(9, (128).to_bytes(4, "little")))
    body, has_ms = bytearray(), False
    for f, w, v, raw in fields(model):
        if f == MODEL_GRAPH and w == 2:
            body += message(MODEL_GRAPH, bytes(graph))
            continue
        if f == MODEL_OPSET and any(f2 == 1 and bytes(v2) == b"com.microsoft" for f2, _, v2, _ in fields(v)):
            has_ms = True
        body += raw
    if not has_ms:
        body += message(MODEL_OPSET, message(1, b"com.microsoft") + int_field(2, 1))
    return replace(template, model=bytes(body))
