"""torch module -> one .tflite per module with one static signature per bucket, through litert-torch
(no TensorFlow). Runs under ``ai_edge_litert`` on the device.

One file per module, not per bucket: litert-torch converts several signatures of one program into one
flatbuffer that stores the weights once, as the ONNX path's shared weights file does.

INT8 is litert-torch's PT2E path: ``torch.export`` with a dynamic row dimension, the PT2EQuantizer's
symmetric per-channel config, observers fed with the same routing-aware calibration rows as the ONNX path,
``convert_pt2e``; then every bucket becomes a static signature of that one quantized program, so all
buckets share weights and activation scales. Ports the quantizer made int8 keep their scale and zero
point in the manifest; the runtime (de)quantizes them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

MAX_ROWS = 1 << 16  # the dynamic row dimension's bound while quantizing; signatures are static


class ConversionError(RuntimeError):
    """litert-torch could not convert (or quantize) a module."""


@contextlib.contextmanager
def _stderr_closed():
    """Importing litert-torch makes absl, oneDNN and torchao write banners to fd 2 from C++."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _litert_torch():
    try:
        with _stderr_closed():
            import litert_torch
    except ImportError:
        from m3edge.errors import BadInput

        raise BadInput("TFLite export needs litert-torch: pip install 'm3edge[tflite-export]'") from None
    return litert_torch


@contextlib.contextmanager
def _quiet():
    """litert-torch and the MLIR converter print progress bars and banners; --json owns stdout. The root
    logger's level is put back afterwards, so the caller's warnings are not hidden for good."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # The MLIR converter logs every op count to fd 2 from C++; its errors still arrive as exceptions.
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _stderr_closed():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _signatures(module, examples: dict[int, tuple]):
    litert_torch = _litert_torch()
    conv = None
    for bucket, args in examples.items():
        name = signature_name(bucket)
        conv = litert_torch.signature(name, module, args) if conv is None else conv.signature(name, module, args)
    return conv


def signature_name(bucket: int) -> str:
    return f"b{bucket}"


def _quantized_program(module, example: tuple, rows: list[np.ndarray], batch: int):
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

    dims = tuple({0: torch.export.Dim("rows", min=1, max=MAX_ROWS)} for _ in example)
    program = torch.export.export(module, example, dynamic_shapes=dims).module()
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    program = quantize_pt2e.prepare_pt2e(program, quantizer)
    with torch.no_grad():
        for i in range(0, len(rows[0]), batch):
            program(*(torch.from_numpy(a[i:i + batch]) for a in rows))
    program = quantize_pt2e.convert_pt2e(program, fold_quantize=False)
    return move_exported_model_to_eval(program), quantizer


def convert(module, examples: dict[int, tuple], precision: str, rows: list[np.ndarray] | None = None) -> bytes:
    """The .tflite bytes of ``module`` with a signature ``b<bucket>`` per example. ``rows`` calibrate INT8."""
    _litert_torch()
    from litert_torch.quantize.quant_config import QuantConfig

    module = module.eval()
    try:
        with _quiet():
            if precision == "int8":
                largest = max(examples)
                program, quantizer = _quantized_program(module, examples[largest], rows, largest)
                model = _signatures(program, examples).convert(quant_config=QuantConfig(pt2e_quantizer=quantizer))
            elif precision == "fp32":
                model = _signatures(module, examples).convert()
            else:
                raise ConversionError(f"TFLite export builds fp32 and int8, not {precision}")
            return bytes(model.model_content())
    except ConversionError:
        raise
    except Exception as e:  # litert-torch and the MLIR converter raise many types; keep the first line
        first = (str(e).strip().splitlines() or ["no message"])[0]  # torch.export raises bare AssertionErrors
        raise ConversionError(f"{type(e).__name__}: {first[:300]}") from None


def port_quant(path: Path, signature: str) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of one signature, each {dtype, scale, zero_point}, in the module's port order."""
    from m3edge.backends.litert.runtime import LiteRTGraph

    g = LiteRTGraph(path, signature=signature)

    def ports(quants):
        return [{"tflite_dtype": q.dtype.name, "scale": q.scale if q.quantized else None,
                 "zero_point": q.zero_point if q.quantized else None} for q in quants]
    return ports(g.inputs), ports(g.outputs)
