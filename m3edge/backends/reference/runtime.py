"""The reference backend's runtime side: one ONNX graph in ``onnx.reference.ReferenceEvaluator``.

The graph file's bytes and its weights files' bytes are the ones the bundle checked (sha256); the weights are
copied into the graph's initializers (the evaluator reads no in-memory external data), so what runs is what
onnxruntime would run. Outputs are cast to the dtypes the graph declares: the evaluator computes some ops in
float64, the runtime hands float32 on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m3edge.backends.base import RuntimeBackend
from m3edge.backends.registry import runtime_side
from m3edge.backends.session import SessionConfig
from m3edge.bundle import GraphFile
from m3edge.errors import BadInput


def _onnx():
    try:
        import onnx
        from onnx.reference import ReferenceEvaluator
    except ImportError:
        raise BadInput("the reference backend needs onnx (host-side): pip install 'm3edge[export]'") from None
    return onnx, ReferenceEvaluator


def inline_weights(model, data: dict[str, bytes], name: str) -> None:
    """Every tensor stored as external data gets its bytes from ``data`` (location -> bytes), in place."""
    onnx, _ = _onnx()
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        info = {e.key: e.value for e in t.external_data}
        blob = data.get(info.get("location", ""))
        if blob is None:
            raise BadInput(f"{name}: tensor {t.name!r} reads external data {info.get('location')!r}, which the bundle "
                           f"entry does not provide")
        start = int(info.get("offset", 0))
        end = start + int(info["length"]) if "length" in info else len(blob)
        t.raw_data = blob[start:end]
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


class ReferenceGraph:
    def __init__(self, src: GraphFile | str | Path, cfg: SessionConfig = SessionConfig()):
        onnx, ReferenceEvaluator = _onnx()
        from onnx.helper import tensor_dtype_to_np_dtype

        if isinstance(src, GraphFile) and src.model is not None:
            model, name = onnx.load_model_from_string(src.model), src.name
            inline_weights(model, src.data, name)
        else:
            name = str(getattr(src, "name", src))
            model = onnx.load(name)  # a path: onnx reads the external data beside it
        initializers = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in initializers]
        self.output_names = [o.name for o in model.graph.output]
        self.output_dtypes = [tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type) for o in model.graph.output]
        try:
            self.evaluator = ReferenceEvaluator(model)
        except Exception as e:  # the evaluator raises many types (an op it lacks, a bad graph); name the file
            raise BadInput(f"{name}: onnx's reference evaluator cannot load this graph "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        outs = self.evaluator.run(self.output_names, dict(zip(self.input_names, inputs)))
        return [np.asarray(o).astype(t, copy=False) for o, t in zip(outs, self.output_dtypes)]


@runtime_side("reference")
class Reference(RuntimeBackend):
    def open(self, src, entry: dict, cfg: SessionConfig) -> ReferenceGraph:
        return ReferenceGraph(src, cfg)
