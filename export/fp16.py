"""FP16 graphs: every float tensor and op in half precision, inputs and outputs kept float32.

onnxruntime's own converter (``onnxruntime.transformers.float16``) rather than onnxconverter-common's:
the latter leaves the TransformerEncoder graph's internal ``Cast(to=float)`` nodes pointing at float32,
which breaks type inference; onnxruntime's retargets them. Float I/O keeps the runtime's dispatch code
the same for every precision (the converter adds the two casts at the graph's edges), and what TensorRT
builds from such a graph with ``trt_fp16_enable`` is an fp16 engine.
"""

from __future__ import annotations

import warnings

import onnx


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every constant it clamps into fp16's range
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    # The converter appends the input casts at the end of the node list; ONNX wants topological order.
    OnnxModel(half).topological_sort()
    half.producer_name = "m3edge"
    return half
