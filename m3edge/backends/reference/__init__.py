"""reference: onnx's own ``onnx.reference.ReferenceEvaluator`` running a bundle's ONNX graphs.

Host-only and slow (numpy, op by op), written independently of onnxruntime: ``m3edge verify BUNDLE --backend
reference`` checks a bundle against torch without trusting onnxruntime's kernels or graph optimisations. It
exports nothing (a profile cannot name it); it reads the graphs any ONNX backend wrote.

runtime.py  ``ReferenceGraph``: the graph's bytes, its weights files inlined, in a ReferenceEvaluator
"""

from m3edge.backends.base import Backend, Capabilities
from m3edge.backends.registry import register


@register
class ReferenceBackend(Backend):
    name = "reference"
    capabilities = Capabilities(graph_format="onnx", precisions=(), shared_weights=False, providers=False,
                                device=False, engine="onnx.reference.ReferenceEvaluator")
