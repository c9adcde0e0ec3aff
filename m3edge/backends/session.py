"""How the runtime opens graphs, whatever the backend: threads, providers, strictness. Stdlib only."""

from __future__ import annotations

from dataclasses import dataclass, field

PARALLEL_WORK = 2 * 2 ** 20  # parameters x rows per call from which a graph gets the profile's threads
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1, "int8-weight-only": 1, "int4": 0.5}
# Precisions whose kernels need their weights as constants: onnxruntime's MatMulNBits packs B once at session
# creation (PrePack); fed as a graph input it dequantizes all of B to fp32 on every call instead, measured
# ~100x slower on a 1024 -> 1536 -> 1024 expert (0.6-0.9 ms -> 80-93 ms). Their experts never run through
# shared sessions with weights as inputs (runtime/template.py): each gets its own session.
CONSTANT_WEIGHTS = {"int4", "int8-weight-only"}


@dataclass
class SessionConfig:
    threads: int = 1  # the most a graph gets; small ones get one (``threads_for``)
    providers: list = field(default_factory=lambda: [("CPUExecutionProvider", {})])
    strict: bool = False
    target: object = None  # a targets.Target: providers per graph (TensorRT needs each graph's shapes)
    cache_dir: str | None = None  # where TensorRT engines are built and cached (runtime/engines.py): never a bundle
    # Where onnxruntime writes each session's profile and the graph it optimised (which kernels actually run:
    # m3edge/bench/graph_micro.py reads them); None, the default, costs nothing.
    profile_dir: str | None = None
    # Run every graph with this backend instead of the one the manifest records (`m3edge verify --backend`):
    # a backend that reads the same graph files, such as the reference evaluator for ONNX.
    backend: str | None = None

    def threads_for(self, weight_bytes: int, rows: int, precision: str = "fp32") -> int:
        """Intra-op threads for one graph: the profile's only where a call has the work to share. On a graph
        whose parameters times rows is below PARALLEL_WORK, waking a second thread costs more than it saves.
        Measured on 2 cores, one forward at batch 16: `small` (25k-parameter experts) 4.2 ms with 2 threads
        everywhere, 3.1 ms with 1, 3.2 ms with this rule; `seed` (6.3M) 43 ms with 2, 66 ms with 1, 43 ms with
        this rule (1M and 16M thresholds were each worse on one of the two). Parameters, not bytes: an INT8
        graph does the same multiply-adds as its fp32 source in a quarter of the bytes."""
        params = int(weight_bytes / BYTES_PER_PARAM.get(precision, 4))
        return self.threads if params * rows >= PARALLEL_WORK else 1

    def providers_for(self, input_shapes: dict | None, graph: str | None = None) -> list[tuple[str, dict]]:
        """The providers a session gets, each option checked against its allow-list (runtime/engines.py)."""
        from m3edge.runtime.engines import checked_providers, default_engine_cache

        cache = self.cache_dir if self.cache_dir is not None else default_engine_cache()
        if self.target is not None:
            return checked_providers(self.target.ort_providers(input_shapes, cache, graph), cache)
        return checked_providers(list(self.providers), cache)
