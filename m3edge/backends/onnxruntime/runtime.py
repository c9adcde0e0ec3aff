"""The onnxruntime backend's runtime side: one static-shape ONNX graph in an ``InferenceSession``.

Execution providers come from the target profile, in order. A provider this onnxruntime build lacks (no
TensorRT on a Pi, no onnxruntime-gpu wheel on PyPI for Jetson) falls back to the next with one warning line,
or raises under ``strict``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from m3edge.backends.base import RuntimeBackend
from m3edge.backends.registry import runtime_side
from m3edge.backends.session import SessionConfig
from m3edge.bundle import GraphFile
from m3edge.errors import BadInput

_warned: set[str] = set()
_available: set[str] | None = None

# onnxruntime graph optimizers turned off for every session. Common-subexpression elimination would merge the
# dedicated Q/DQ pairs an INT8 export gives each Gemm back into one shared pair, which on x86 leaves those Gemms
# on MLAS's unpacked S8S8 path (export/quantize.py, DEDICATED; ~10x slower per Gemm). The exported graphs have
# no other common subexpressions for it to remove (torch's exporter already shares them). MatMulAddFusion would
# fold an INT8 graph's MatMul + bias Add into a Gemm, which runs as QGemm (half the speed at batch 1) or as a
# float Gemm over weights dequantized per call (export/quantize.py, GEMM_AS_MATMUL). Float graphs keep torch's
# Gemms, and weight-only graphs fuse their bias into MatMulNBits, so neither loses anything.
DISABLED_OPTIMIZERS = ["CommonSubexpressionElimination", "MatMulAddFusion"]


def available_providers() -> set[str]:
    global _available
    if _available is None:
        import onnxruntime as ort

        _available = set(ort.get_available_providers())
    return _available


def resolve_providers(wanted: list[tuple[str, dict]], strict: bool = False) -> list[tuple[str, dict]]:
    available = available_providers()
    chosen = [(name, opts) for name, opts in wanted if name in available]
    missing = [name for name, _ in wanted if name not in available]
    if missing and strict:
        raise BadInput(f"execution provider {missing[0]} is not available in this onnxruntime "
                       f"(available: {', '.join(sorted(available))})")
    for name in missing:
        if name not in _warned:
            _warned.add(name)
            nxt = chosen[0][0] if chosen else "CPUExecutionProvider"
            print(f"warning: {name} not available in this onnxruntime; falling back to {nxt}", file=sys.stderr)
    return chosen or [("CPUExecutionProvider", {})]


class OrtGraph:
    """One static-shape ONNX graph in an onnxruntime session, built from bytes already checked: the graph
    file's and its weights files', which onnxruntime takes as in-memory external data."""

    def __init__(self, src: GraphFile | str | Path, cfg: SessionConfig = SessionConfig(), input_shapes: dict | None = None):
        import onnxruntime as ort

        # A path (the monolithic export, tools) is onnxruntime's to read, external data beside it: reading a
        # 1.5 GB graph into Python first would hold it twice.
        if not isinstance(src, GraphFile):
            src = GraphFile(str(src), None, {})
        so = ort.SessionOptions()
        # Small static graphs: one thread pool per session sized by the profile, no inter-op
        # parallelism to pay for, all graph optimisations on.
        so.intra_op_num_threads = cfg.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # Spinning worker threads burn the cores the Python dispatch and the other sessions need; on
        # graphs this small, waking a thread costs less than it saves (measured: 4x at batch 1, 2 cores).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if cfg.profile_dir:
            stem = str(Path(cfg.profile_dir, (src.key or src.name).replace("/", "_").replace(" ", "_")[-120:]))
            so.enable_profiling, so.profile_file_prefix = True, stem
            so.optimized_model_filepath = stem + ".optimized.onnx"
        if src.data:
            if not hasattr(so, "add_external_initializers_from_files_in_memory"):
                raise BadInput(f"{src.name}: this bundle needs onnxruntime >= 1.23 (in-memory external data); "
                               f"this is {ort.__version__}")
            names = list(src.data)
            so.add_external_initializers_from_files_in_memory(names, [src.data[n] for n in names],
                                                              [len(src.data[n]) for n in names])
        providers = resolve_providers(cfg.providers_for(input_shapes, src.key or src.name), cfg.strict)
        try:
            self.session = ort.InferenceSession(src.name if src.model is None else src.model, so, providers=providers,
                                                disabled_optimizers=DISABLED_OPTIMIZERS)
        except Exception as e:  # onnxruntime raises its own exception types; name the file
            raise BadInput(f"{src.name}: onnxruntime cannot load this graph ({str(e).splitlines()[0]})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.run_options = ort.RunOptions()  # one, reused: a call without it makes a default each time (2 us)

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, dict(zip(self.input_names, inputs)), self.run_options)

    def run_feeds(self, feeds: dict) -> list[np.ndarray]:
        """Run with inputs by name (a shared graph: the rows and an expert's weights)."""
        return self.session.run(self.output_names, feeds, self.run_options)


@runtime_side("onnxruntime")
class OnnxRuntime(RuntimeBackend):
    def open(self, src, entry: dict, cfg: SessionConfig) -> OrtGraph:
        return OrtGraph(src, cfg, {i["name"]: i["shape"] for i in entry["inputs"]})

    def open_shared(self, src, cfg: SessionConfig) -> OrtGraph:
        return OrtGraph(src, cfg)
