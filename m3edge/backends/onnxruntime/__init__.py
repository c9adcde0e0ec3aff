"""onnxruntime: static-shape ONNX graphs, experts' weights in shared external-data files.

runtime.py  ``OrtGraph``: a session per graph, execution providers from the profile (device side)
export.py   torch -> ONNX per bucket, fp16 / INT8 QDQ (onnxruntime's quantize_static), expert banks
onnx_export.py, bank.py  the ONNX writing and bank merging the export side uses
"""

from m3edge.backends.base import Backend, Capabilities
from m3edge.backends.registry import register


@register
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    # External data lets graphs of one structure share a file and read each expert's weights file, so banks
    # and shared sessions cost no extra weight bytes.
    capabilities = Capabilities(graph_format="onnx", precisions=("fp32", "fp16", "int8", "int4", "int8-weight-only"), shared_weights=True,
                                providers=True, engine="onnxruntime")
