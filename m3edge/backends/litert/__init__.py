"""LiteRT (TFLite): one .tflite file per module, a static signature per bucket.

runtime.py  ``LiteRTGraph``: ai_edge_litert's interpreter (tflite_runtime as a fallback) (device side)
export.py   litert-torch conversion, INT8 through its PT2E quantizer
tflite.py   the conversion itself and the signature names
"""

from m3edge.backends.base import Backend, Capabilities
from m3edge.backends.registry import register


@register
class LiteRTBackend(Backend):
    name = "tflite"  # what profiles and manifests say (bundles keep their bytes)
    aliases = ("litert",)
    # A .tflite file embeds its weights: a bank would be a second copy of every expert, and there is no weights
    # file to feed a shared graph.
    capabilities = Capabilities(graph_format="tflite", precisions=("fp32", "int8"), shared_weights=False,
                                providers=False, engine="LiteRT interpreter (XNNPACK)")
