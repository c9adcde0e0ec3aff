"""FP16 graphs: every float tensor and op in half precision, inputs and outputs kept float32.

onnxruntime's own converter (``onnxruntime.transformers.float16``) rather than onnxconverter-common's:
the latter leaves the TransformerEncoder graph's internal ``Cast(to=float)`` nodes pointing at float32,
which breaks type inference; onnxruntime's retargets them. Float I/O keeps the runtime's dispatch code
the same for every precision (the converter adds the two casts at the graph's edges), and what TensorRT
builds from such a graph with ``trt_fp16_enable`` is an fp16 engine.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import onnx


def half(a: np.ndarray, min_positive_val: float = 5.96e-08, max_finite_val: float = 65504.0) -> np.ndarray:
    """The converter's ``convert_np_to_float16``, value for value: nonzero magnitudes below min_positive_val
    become it, finite ones above max_finite_val become it, signs kept; NaN, 0 and inf unchanged. One pass of
    masks instead of its four ``where`` passes and six copies for debug logs, which every weight pays once
    per bucket: the seed's Jetson export took 147 s against 156, graphs the same (docs/export.md)."""
    a = np.asarray(a)
    m = np.abs(a)
    tiny = (m > 0) & (m < min_positive_val)
    huge = (m > max_finite_val) & (m < np.inf)
    if tiny.any() or huge.any():
        a = a.copy()
        a[tiny] = np.copysign(min_positive_val, a[tiny])
        a[huge] = np.copysign(max_finite_val, a[huge])
    return np.float16(a)


@contextlib.contextmanager
def _fast_half():
    import onnxruntime.transformers.float16 as f16

    slow, f16.convert_np_to_float16 = f16.convert_np_to_float16, half
    try:
        yield
    finally:
        f16.convert_np_to_float16 = slow


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    with warnings.catch_warnings(), _fast_half():
        warnings.simplefilter("ignore")  # it warns for every constant it clamps into fp16's range
        half16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    # The converter appends the input casts at the end of the node list; ONNX wants topological order.
    OnnxModel(half16).topological_sort()
    half16.producer_name = "m3edge"
    return half16
