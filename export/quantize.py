"""INT8 by onnxruntime's static quantization, fed with routing-aware calibration rows.

QDQ format, per-channel weights, ``quant_pre_process`` first. Only MatMul and Gemm are quantized: they
hold the weights and the compute; LayerNorm, Softmax and the residual adds stay float (measured per graph as
SQNR in the parity report). Experts export as single-token views (``export/views.py``), so no graph holds a
recurrent cell.

Activation and weight types follow onnxruntime's guidance per execution context (a registry, keyed by
what the target profile runs on): ARM S8/S8; x86 U8/S8 with reduce_range (no VNNI assumed);
TensorRT symmetric S8/S8.

Q/DQ placement (TensorRT and ARM) follows TensorRT's explicit-quantization recommendation: Q/DQ on the
inputs and weights of the weighted ops (MatMul/Gemm), their outputs left in float (onnxruntime's TensorRT
BERT example sets ``OpTypesToExcludeOutputQuantization`` to the quantized op types for the same reason). The
MatMul/Gemm still run in INT8; only the extra requantization of their results is dropped. Measured on the
small reference's INT8 router (Jetson profile, eval split, percentile calibration on 512 rows): routing
agreement 94.4% with output Q/DQ, 97.5% without (gate 95%); top-1 agreement 98.5% -> 98.9%. The output Q/DQ
on the final Gemm rounds the logits to 8 bits before top-k; the calibration method (minmax, entropy,
percentile 99.9-99.9999) and more rows (up to 16384) moved agreement by less than 1 point either way.

ARM (rpi5/rpi4 profiles, every graph INT8, eval split, percentile, 512 rows) measured the same placement two
ways. Router only (experts etc. keeping output Q/DQ): routing agreement 94.0% -> 96.3%, top-1 97.0% -> 97.2%
on the gate's 2048 tokens, but on four more 2048-token windows of the eval split (offsets 2048, 4096, 6144,
20000) it gave 95.2 / 94.0 / 94.5 / 96.3% routing, missing the gate twice where the fp32 router passes.
The whole context (every graph): routing 97.1%, top-1 97.4%, bits/byte +0.03%, and 96.3 / 95.8 / 95.4 /
96.8% routing, top-1 >= 97.5% on the other windows; the worst expert SQNR rises from 12.2 to 24.4 dB, the
bundle is 4% smaller (fewer Q/DQ nodes), and onnxruntime 1.32's CPU provider (inspected on the x86 host)
fuses every Gemm of the episodic experts into QGemm (with output Q/DQ it kept 6 of 7 as float Gemm over
dequantized weights). So ARM drops output Q/DQ everywhere. x86 keeps onnxruntime's default placement (not measured).

Every bucket variant of a module is calibrated on the same rows (tiled to a multiple of the largest
bucket), so the variants get identical scales and still share one weights file.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

METHODS = ("minmax", "entropy", "percentile")
# Weight scales per output channel for these roles, one per tensor for experts. Measured on the small
# reference (rpi5, eval split): per-tensor expert weights lose nothing measurable (worst expert SQNR 24.4 dB
# either way; top-1 agreement 97.4% per-channel, 97.6% per-tensor; routing 97.1% both) and drop the per-channel
# weight and bias scales, 11% of a 64-wide expert's INT8 bytes. A per-tensor router is what hurts: routing
# agreement 97.1% -> 95.2% (Jetson 97.5% -> 95.5%), at the 95% gate.
PER_CHANNEL = {"encoder", "memory", "alignment", "router", "head"}
MIN_EXPERT_ROWS = 16  # an expert routed fewer calibration rows than this is calibrated on all of its layer's rows


@dataclass(frozen=True)
class QuantTypes:
    activation: str
    weight: str
    extra: dict = field(default_factory=dict)
    reduce_range: bool = False


# Q/DQ on the inputs and weights of MatMul/Gemm only; their results stay float (measured above).
FLOAT_OUTPUTS = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}

QUANT_TYPES = {
    "tensorrt": QuantTypes("QInt8", "QInt8", {"ActivationSymmetric": True, "WeightSymmetric": True, **FLOAT_OUTPUTS}),
    "arm": QuantTypes("QInt8", "QInt8", dict(FLOAT_OUTPUTS)),
    "x86": QuantTypes("QUInt8", "QInt8", reduce_range=True),
}


def context_of(target) -> str:
    if any(p["name"] == "TensorrtExecutionProvider" for p in target.providers):
        return "tensorrt"
    return "arm" if target.arch == "aarch64" else "x86"


def tiled(rows: np.ndarray, multiple: int) -> np.ndarray:
    n = -(-len(rows) // multiple) * multiple
    reps = -(-n // len(rows))
    return np.concatenate([rows] * reps)[:n]


def quantize(model: onnx.ModelProto, feeds: list[dict], target, method: str = "minmax",
             per_channel: bool = True) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    types = QUANT_TYPES[context_of(target)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    # onnxruntime's histogram calibrators print progress to stdout, which belongs to --json.
    with tempfile.TemporaryDirectory(prefix="m3edge-quant-") as d, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        src, pre, out = Path(d, "in.onnx"), Path(d, "pre.onnx"), Path(d, "q.onnx")
        onnx.save(model, src)
        # No graph optimisation here: it would fold bucket-sized constants (Shape/Expand results) into
        # initializers that differ per bucket and could no longer be shared.
        quant_pre_process(str(src), str(pre), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        reduce_range=types.reduce_range, activation_type=getattr(QuantType, types.activation),
                        weight_type=getattr(QuantType, types.weight), op_types_to_quantize=["MatMul", "Gemm"],
                        calibrate_method=calib,
                        extra_options={k: list(v) if isinstance(v, list) else v for k, v in types.extra.items()})
        q = onnx.load(str(out))
    q.producer_name = "m3edge"
    return q


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, as onnxruntime's qdq_loss_debug computes it."""
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)
