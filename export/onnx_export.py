"""torch module -> static-shape ONNX, with one weights file shared by all bucket variants of a module.

Exporter choice: torch.onnx's TorchScript path (``dynamo=False``). At these graph sizes it takes
~0.1 s per graph against 1-2 s for the dynamo path, and a bundle has hundreds of graphs (every expert
at every capacity bucket); its output is checked against torch like any other. Each graph is exported
from its own module with a fixed example shape, so no expert depends on what a dummy input routed.

Bucket variants of one module hold identical initializers; they are written once to ``<stem>.weights``
(ONNX external data, 64-byte aligned) and each ``<stem>.b<bucket>.onnx`` keeps only its graph.
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

ALIGN = 64
INLINE_BELOW = 128


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


def write_shared(models: dict[int, onnx.ModelProto], root: Path, stem: str) -> tuple[str, dict[int, str]]:
    """Write ``stem.weights`` once and one graph file per bucket. Returns (weights path, {bucket: path})."""
    weights_rel = f"graphs/{stem}.weights"
    (root / weights_rel).parent.mkdir(parents=True, exist_ok=True)
    blob = bytearray()
    offsets: dict[str, tuple[int, int]] = {}
    paths = {}
    for bucket in sorted(models):
        model = models[bucket]
        for t in model.graph.initializer:
            arr = numpy_helper.to_array(t)
            raw = arr.tobytes()
            # Tiny tensors and int64 shape constants stay in the graph: shape inference must read shape
            # constants, and an external reference costs ~60 bytes. Everything else, per-channel scales and
            # quantized biases included, is stored once for all buckets (a QDQ graph's scales were most of
            # its bytes, repeated in every bucket's file).
            if len(raw) < INLINE_BELOW or arr.dtype == np.int64:
                continue
            key = hashlib.sha256(raw).hexdigest() + str(t.data_type) + str(list(t.dims))
            if key not in offsets:
                blob.extend(b"\0" * (-len(blob) % ALIGN))
                offsets[key] = (len(blob), len(raw))
                blob.extend(raw)
            off, length = offsets[key]
            t.CopyFrom(numpy_helper.from_array(arr, t.name))  # normalise to raw_data, which external data needs
            # The location is relative to the graph file, which sits beside the weights file.
            set_external_data(t, Path(weights_rel).name, offset=off, length=length)
            t.data_location = onnx.TensorProto.EXTERNAL
            t.ClearField("raw_data")
        rel = f"graphs/{stem}.b{bucket}.onnx"
        (root / rel).write_bytes(model.SerializeToString(deterministic=True))
        paths[bucket] = rel
    (root / weights_rel).write_bytes(bytes(blob))
    return weights_rel, paths
