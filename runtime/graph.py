"""Graph backends behind one small interface: ``Graph.run(feeds) -> list of outputs``.

The onnxruntime backend takes execution providers from the target profile, in order. A provider this
onnxruntime build lacks (no TensorRT on a Pi, no onnxruntime-gpu wheel on PyPI for Jetson) falls back
to the next with one warning line, or raises under ``strict``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3edge.errors import BadInput

_warned: set[str] = set()
_available: set[str] | None = None


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


@dataclass
class SessionConfig:
    threads: int = 1
    providers: list = field(default_factory=lambda: [("CPUExecutionProvider", {})])
    strict: bool = False
    target: object = None  # a targets.Target: providers per graph (TensorRT needs each graph's shapes)
    cache_dir: str | None = None  # where TensorRT engines are cached

    def providers_for(self, input_shapes: dict | None) -> list[tuple[str, dict]]:
        if self.target is not None:
            return self.target.ort_providers(input_shapes, self.cache_dir)
        return list(self.providers)


class OrtGraph:
    """One static-shape ONNX graph in an onnxruntime session."""

    def __init__(self, path: str | Path, cfg: SessionConfig = SessionConfig(), input_shapes: dict | None = None):
        import onnxruntime as ort

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
        providers = resolve_providers(cfg.providers_for(input_shapes), cfg.strict)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types; name the file
            raise BadInput(f"{path}: onnxruntime cannot load this graph ({str(e).splitlines()[0]})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, dict(zip(self.input_names, inputs)))
