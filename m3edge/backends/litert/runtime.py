"""The LiteRT backend's runtime side: one static signature of a .tflite file in a LiteRT interpreter.

``ai_edge_litert``, then the unmaintained ``tflite_runtime`` as a fallback import. A bundle's TFLite file holds
one static signature per bucket. Inputs and outputs that the converter made int8 are quantized and dequantized
here with the scale and zero point the manifest records, so callers always see float32 (and the int inputs
they passed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m3edge.backends.base import RuntimeBackend
from m3edge.backends.registry import runtime_side
from m3edge.backends.session import SessionConfig
from m3edge.bundle import GraphFile
from m3edge.errors import BadInput


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


@runtime_side("tflite")
class LiteRT(RuntimeBackend):
    def open(self, src, entry: dict, cfg: SessionConfig) -> LiteRTGraph:
        return LiteRTGraph(src, cfg, entry.get("signature"), entry)
