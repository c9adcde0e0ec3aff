"""Backends: one folder each (onnxruntime, litert, reference), two contracts, one registry.

    from m3edge import backends
    backends.get("onnxruntime").capabilities.precisions      # ("fp32", "fp16", "int8")
    backends.runtime("tflite").open(graph_file, entry, cfg)  # a loaded graph
    backends.export("onnxruntime").build(spec, ...)          # host-side; imports torch

See ``base.py`` for the contracts and docs/design.md ("How to extend") for adding a backend.
"""

from m3edge.backends.base import Backend, Capabilities, ExportBackend, Graph, RuntimeBackend
from m3edge.backends.registry import (UnknownBackend, capabilities, export, export_side, get, graph_backend, names,
                                      open_graph, register, runtime, runtime_side)
from m3edge.backends.session import SessionConfig

__all__ = ["Backend", "Capabilities", "ExportBackend", "Graph", "RuntimeBackend", "SessionConfig", "UnknownBackend",
           "capabilities", "export", "export_side", "get", "graph_backend", "names", "open_graph", "register",
           "runtime", "runtime_side"]
