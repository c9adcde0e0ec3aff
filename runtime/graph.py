"""Graph backends behind one small interface: ``Graph.run(*inputs) -> list of float/int outputs``.

A registry keyed by the manifest entry's ``backend`` picks the class (``open_graph``):

- onnxruntime takes execution providers from the target profile, in order. A provider this onnxruntime
  build lacks (no TensorRT on a Pi, no onnxruntime-gpu wheel on PyPI for Jetson) falls back to the next
  with one warning line, or raises under ``strict``.
- LiteRT (``ai_edge_litert``, then the unmaintained ``tflite_runtime`` as a fallback import) runs one
  signature of a .tflite file: a bundle's TFLite file holds one static signature per bucket. Inputs and
  outputs that the converter made int8 are quantized and dequantized here with the scale and zero point
  the manifest records, so callers always see float32 (and the int inputs they passed).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3edge.bundle import GraphFile
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


PARALLEL_WORK = 2 * 2 ** 20  # parameters x rows per call from which a graph gets the profile's threads
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1, "int8-weight-only": 1, "int4": 0.5}
# Precisions whose kernels need their weights as constants: onnxruntime's MatMulNBits packs B once at session
# creation (PrePack); fed as a graph input it dequantizes all of B to fp32 on every call instead, measured
# ~100x slower on a 1024 -> 1536 -> 1024 expert (0.6-0.9 ms -> 80-93 ms). Their experts never run through
# shared sessions with weights as inputs (runtime/template.py): each gets its own session.
CONSTANT_WEIGHTS = {"int4", "int8-weight-only"}


# onnxruntime graph optimizers turned off for every session. Common-subexpression elimination would merge the
# dedicated Q/DQ pairs an INT8 export gives each Gemm back into one shared pair, which on x86 leaves those Gemms
# on MLAS's unpacked S8S8 path (export/quantize.py, DEDICATED; ~10x slower per Gemm). The exported graphs have
# no other common subexpressions for it to remove (torch's exporter already shares them).
DISABLED_OPTIMIZERS = ["CommonSubexpressionElimination"]


@dataclass
class SessionConfig:
    threads: int = 1  # the most a graph gets; small ones get one (``threads_for``)
    providers: list = field(default_factory=lambda: [("CPUExecutionProvider", {})])
    strict: bool = False
    target: object = None  # a targets.Target: providers per graph (TensorRT needs each graph's shapes)
    cache_dir: str | None = None  # where TensorRT engines are built and cached (runtime/engines.py): never a bundle
    # Where onnxruntime writes each session's profile and the graph it optimised (which kernels actually run:
    # bench/graph_micro.py reads them); None, the default, costs nothing.
    profile_dir: str | None = None

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
        from m3edge.runtime.engines import checked_providers, default_engine_cache

        cache = self.cache_dir if self.cache_dir is not None else default_engine_cache()
        if self.target is not None:
            return checked_providers(self.target.ort_providers(input_shapes, cache, graph), cache)
        return checked_providers(list(self.providers), cache)


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


class Quant:
    """How one graph port is fed or read: its dtype, and (scale, zero point) when it is quantized."""

    def __init__(self, dtype, scale: float = 0.0, zero_point: int = 0):
        self.dtype = np.dtype(dtype)
        self.scale, self.zero_point = float(scale), int(zero_point)

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and self.dtype.kind in "iu" and self.dtype.itemsize == 1

    def encode(self, a: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return np.ascontiguousarray(a, dtype=self.dtype)
        info = np.iinfo(self.dtype)
        q = np.rint(a / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def decode(self, a: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return a
        return ((a.astype(np.float32) - self.zero_point) * np.float32(self.scale)).astype(np.float32)


def litert_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:  # unmaintained since 2.14 and broken under numpy 2; only a fallback
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise BadInput("this bundle's graphs are TFLite: install a LiteRT interpreter "
                           "(pip install 'm3edge[tflite]')") from None
    return Interpreter


def _port_order(name: str) -> int:
    """litert-torch names signature ports args_0.. / output_0..: their order is the module's."""
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class LiteRTGraph:
    """One static signature of a .tflite file in a LiteRT interpreter."""

    def __init__(self, src: GraphFile | str | Path, cfg: SessionConfig = SessionConfig(), signature: str | None = None,
                 io: dict | None = None):
        Interpreter = litert_interpreter()
        model = {"model_content": src.model} if isinstance(src, GraphFile) else {"model_path": str(src)}
        path = getattr(src, "name", src)
        try:
            self.interpreter = Interpreter(**model, num_threads=cfg.threads)
            self.runner = self.interpreter.get_signature_runner(signature)
            ins, outs = self.runner.get_input_details(), self.runner.get_output_details()
        except (ValueError, RuntimeError) as e:
            raise BadInput(f"{path}: LiteRT cannot load signature {signature!r} ({str(e).splitlines()[0]})") from None
        self.input_names = sorted(ins, key=_port_order)
        self.output_names = sorted(outs, key=_port_order)
        self.inputs = [Quant(ins[n]["dtype"], *ins[n]["quantization"]) for n in self.input_names]
        self.outputs = [Quant(outs[n]["dtype"], *outs[n]["quantization"]) for n in self.output_names]
        self.input_shapes = [list(ins[n]["shape"]) for n in self.input_names]
        self.output_shapes = [list(outs[n]["shape"]) for n in self.output_names]
        if io is not None:
            self._check_io(path, io)

    def _check_io(self, path, io: dict) -> None:
        """The manifest's scales must be the file's: a mismatch means the bundle was edited or mixed up."""
        for kind, ports, quants in (("input", io.get("inputs", []), self.inputs),
                                    ("output", io.get("outputs", []), self.outputs)):
            if len(ports) != len(quants):
                raise BadInput(f"{path}: {len(quants)} {kind}s in the file, {len(ports)} in the manifest")
            for port, q in zip(ports, quants):
                want = (port.get("scale") or 0.0, port.get("zero_point") or 0)
                if q.quantized != bool(want[0]) or (q.quantized and (abs(want[0] - q.scale) > 1e-9 * max(1.0, q.scale)
                                                                or want[1] != q.zero_point)):
                    has = f"scale {q.scale:g}, zero point {q.zero_point}" if q.quantized else "no quantization"
                    says = f"scale {want[0]:g}, zero point {want[1]}" if want[0] else "no quantization"
                    raise BadInput(f"{path}: {kind} {port['name']!r} has {has} in the file; the manifest says {says}")

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        out = self.runner(**{n: q.encode(a) for n, q, a in zip(self.input_names, self.inputs, inputs)})
        return [q.decode(out[n]) for n, q in zip(self.output_names, self.outputs)]


def _ort(src, entry: dict, cfg: SessionConfig):
    return OrtGraph(src, cfg, {i["name"]: i["shape"] for i in entry["inputs"]})


def _litert(src, entry: dict, cfg: SessionConfig):
    return LiteRTGraph(src, cfg, entry.get("signature"), entry)


BACKENDS = {"onnxruntime": _ort, "tflite": _litert}


def open_graph(src: GraphFile, entry: dict, cfg: SessionConfig):
    """The graph a manifest entry describes, in the backend it names."""
    backend = entry.get("backend", "onnxruntime")
    if backend not in BACKENDS:
        raise BadInput(f"{entry['path']}: backend {backend!r} is not one this m3edge runs ({', '.join(BACKENDS)})")
    return BACKENDS[backend](src, entry, cfg)
