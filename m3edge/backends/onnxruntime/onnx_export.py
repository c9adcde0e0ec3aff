"""torch module -> static-shape ONNX, with one weights file shared by all bucket variants of a module.

Exporter choice: torch.onnx's TorchScript path (``dynamo=False``). At these graph sizes it takes
~0.1 s per graph against 1-2 s for the dynamo path, and a bundle has hundreds of graphs (every expert
at every capacity bucket); its output is checked against torch like any other. Each graph is exported
from its own module with a fixed example shape, so no expert depends on what a dummy input routed.

Bucket variants of one module hold identical initializers; they are written once to ``<stem>.weights``
(ONNX external data) and each bucket's graph keeps only its structure, every tensor but int64 shape
constants external under the one name ``weights``. Graphs of the same structure are then the same bytes
(names follow the structure: export/inspectable.py, or ``compact``), so a graph file is named by its content
and written once: the 64 experts of a kind share one file per bucket (m3edge.bundle).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

# Tensors start at multiples of their widest element (4 bytes): onnxruntime copies in-memory external data
# into its own buffers, so page or cache-line alignment buys nothing, and a 64-byte pad per tensor was 4%
# of a small INT8 expert's file.
ALIGN = 4


def export_module(module, example: tuple, input_names: list[str], output_names: list[str], opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    # Not under no_grad: that would switch TransformerEncoderLayer to its fused fast path, which has no
    # ONNX symbolic.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, buf, dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names, do_constant_folding=True)
    model = onnx.load_model_from_string(buf.getvalue())
    model.producer_name = "m3edge"
    return model


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """Short tensor names, no node names, doc strings or value_info: a small expert's graph file is
    mostly names (exporter scopes, QDQ suffixes), and a bundle holds hundreds of them. Graph inputs and
    outputs keep their names (the manifest's ports). Deterministic: the same graph gets the same names."""
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for t in g.initializer:
        t.name = short(t.name)
    for n in g.node:
        n.name, n.doc_string = "", ""
        ins, outs = [short(x) for x in n.input], [short(x) for x in n.output]
        del n.input[:], n.output[:]
        n.input.extend(ins)
        n.output.extend(outs)
    del g.value_info[:]
    g.doc_string = ""
    return model


def write_graph(model: onnx.ModelProto, root: Path, name: str) -> str:
    """Write a graph under ``graphs/`` named by its content (``<name>.<sha256 prefix>.onnx``); a graph
    already written by another module is the same file. Returns its bundle path."""
    data = model.SerializeToString(deterministic=True)
    digest = hashlib.sha256(data).hexdigest()
    for n in (8, 64):  # a short name, unless two graphs of this bundle share its prefix
        rel = f"graphs/{name}.{digest[:n]}.onnx"
        if not (root / rel).exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            return rel
        if (root / rel).read_bytes() == data:
            return rel
    raise AssertionError(f"{rel}: two different graphs with one sha256")


def write_shared(models: dict[int, onnx.ModelProto], root: Path, stem: str, kind: str | None = None
                 ) -> tuple[str, dict[int, str]]:
    """Write ``graphs/<stem>.weights`` once and each bucket's graph as ``graphs/<kind>.b<bucket>.<sha>.onnx``.
    Returns (weights path, {bucket: graph path})."""
    from m3edge.bundle import WEIGHTS

    weights_rel = f"graphs/{stem}.weights"
    (root / weights_rel).parent.mkdir(parents=True, exist_ok=True)
    blob = bytearray()
    offsets: dict[str, tuple[int, int]] = {}
    paths = {}
    for bucket in sorted(models):
        model = models[bucket]
        for t in model.graph.initializer:
            arr = numpy_helper.to_array(t)
            # int64 shape constants stay in the graph, where shape inference reads them; they depend on
            # the bucket, not on the module. Every other tensor, scalar Q/DQ scales included, is the
            # module's own and goes to its weights file, once for all buckets.
            if arr.dtype == np.int64:
                continue
            raw = arr.tobytes()
            # Stored once per name (bucket variants name a tensor alike): sharing equal tensors of different
            # names would make the file's layout, and so the graph's offsets, depend on the values.
            key = t.name + hashlib.sha256(raw).hexdigest() + str(t.data_type) + str(list(t.dims))
            if key not in offsets:
                blob.extend(b"\0" * (-len(blob) % ALIGN))
                offsets[key] = (len(blob), len(raw))
                blob.extend(raw)
            off, length = offsets[key]
            t.CopyFrom(numpy_helper.from_array(arr, t.name))  # normalise to raw_data, which external data needs
            set_external_data(t, WEIGHTS, offset=off, length=length)
            t.data_location = onnx.TensorProto.EXTERNAL
            t.ClearField("raw_data")
        paths[bucket] = write_graph(model, root, f"{kind or stem.replace('/', '.')}.b{bucket}")
    (root / weights_rel).write_bytes(bytes(blob))
    return weights_rel, paths


def attach(model: onnx.ModelProto, data: dict[str, bytes]) -> onnx.ModelProto:
    """A copy of ``model`` with its external tensors read from ``data`` (name -> bytes), self-contained."""
    from onnx.external_data_helper import uses_external_data

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if uses_external_data(t):
            ext = {e.key: e.value for e in t.external_data}
            off, length = int(ext.get("offset", 0)), int(ext["length"])
            t.raw_data = data[ext["location"]][off:off + length]
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    return out
