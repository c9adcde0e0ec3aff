"""INT8 by onnxruntime's static quantization, fed with routing-aware calibration rows.

QDQ format, per-channel weights. Only MatMul and Gemm are quantized: they
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
fused every Gemm of the episodic experts into QGemm (with output Q/DQ it kept 6 of 7 as float Gemm over
dequantized weights; since GEMM_AS_MATMUL below they run as MatMulIntegerToFloat). So ARM drops output Q/DQ
everywhere. x86 keeps onnxruntime's default placement (not measured).

Every bucket variant of a module is calibrated on the same rows (tiled to a multiple of the largest
bucket), so the variants get identical scales and still share one weights file.
"""

from __future__ import annotations

import contextlib
import io
import logging
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


# DEDICATED (and ``dedicated_pairs`` for a DQ a MatMul shares with a residual Add): an activation read by several
# Gemms (the episodic expert's six gate Gemms, two in the encoder) gets one Q/DQ pair per Gemm. With one shared
# pair, onnxruntime's x86 CPU provider keeps that activation int8 (its S8 -> U8 rewrite takes single-consumer
# pairs), and MLAS on AVX2 cannot prepack an S8S8 QGemm: each ran on the
# unpacked path, 0.8-1.5 ms for a 1024 -> 768 gate against 0.12 ms prepacked (onnxruntime profile, d_model 1024),
# so an ARM INT8 episodic expert ran 2.3x *slower* than fp32 on this x86 host (142 ms vs 61 ms at load 20;
# 5.2 ms with dedicated pairs). The runtime turns off onnxruntime's common-subexpression elimination, which
# would merge the pairs back (m3edge/backends/onnxruntime/runtime.py). On ARM64 MLAS packs S8S8 itself; the extra QuantizeLinear
# per Gemm costs about a microsecond at batch 1.
# GEMM_AS_MATMUL: every Gemm with a constant weight is quantized as MatMul + Add. onnxruntime 1.32 runs a QDQ
# Gemm as QGemm, a QDQ MatMul as MatMulIntegerToFloat; at batch 1 on this x86 host the seed's layer-0 experts
# spent 493 us per call in QGemm against 224 us in MatMulIntegerToFloat for the same int8 bytes (onnxruntime
# profile, 24 experts cycled so weights come from DRAM; fp32 Gemm 764 us). The runtime turns off
# MatMulAddFusion, which would fold MatMul + Add back into a Gemm before the QDQ fusions see it.
# Q/DQ on the inputs and weights of MatMul/Gemm only; their results stay float (measured above).
FLOAT_OUTPUTS = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}

QUANT_TYPES = {
    "tensorrt": QuantTypes("QInt8", "QInt8", {"ActivationSymmetric": True, "WeightSymmetric": True, **FLOAT_OUTPUTS}),
    # One Q/DQ pair per consuming Gemm (see DEDICATED below).
    "arm": QuantTypes("QInt8", "QInt8", {**FLOAT_OUTPUTS, "DedicatedQDQPair": True}),
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
             per_channel: bool = True, ranges: str | Path | None = None) -> onnx.ModelProto:
    """The QDQ graph of ``model`` calibrated on ``feeds``. ``ranges``: onnxruntime's calibration cache (a JSON
    file): written by the first call that names it, read by the next ones instead of calibrating again, so
    the bucket variants of one module are calibrated once (their rows are the same, tiled to every bucket:
    minmax ranges are equal by construction, and the percentile bundles of small and the seed came out
    byte-identical to per-bucket calibration)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

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
            contextlib.redirect_stdout(io.StringIO()), _filtered(logging.getLogger(), PRE_PROCESS_ADVICE):
        warnings.simplefilter("ignore")
        src, out = Path(d, "in.onnx"), Path(d, "q.onnx")
        onnx.save(gemms_as_matmuls(model), src)  # GEMM_AS_MATMUL
        # No quant_pre_process: with graph optimisation off (it would fold bucket-sized constants into
        # initializers that differ per bucket and could no longer be shared) and symbolic shapes off, it ran
        # only ONNX shape inference, which quantize_static repeats, and added its metadata mark; without it the
        # graphs are the same and the seed's INT8 export took 145 s instead of 185 (docs/export.md).
        quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        reduce_range=types.reduce_range, activation_type=getattr(QuantType, types.activation),
                        weight_type=getattr(QuantType, types.weight), op_types_to_quantize=["MatMul", "Gemm"],
                        calibrate_method=calib, calibration_cache_path=None if ranges is None else str(ranges),
                        extra_options={k: list(v) if isinstance(v, list) else v for k, v in types.extra.items()})
        q = dedicated_pairs(onnx.load(str(out)))
    q.producer_name = "m3edge"
    return q


def dedicated_pairs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give each weighted op (MatMul) its own Q -> DQ pair on its activation input when that pair's output
    is also read elsewhere (a residual Add reads the same DQ as the next MatMul; the router's normalized input
    is also its output). onnxruntime's x86 provider rewrites S8 activations to U8 only for a Q with one
    consumer; a shared pair leaves the MatMul float, over weights dequantized on every call (the seed's semantic
    expert: 138 us of DequantizeLinear per call)."""
    from onnx import helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {o.name: 1 for o in g.output}  # a graph output is read by the caller
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    out = []
    for n in g.node:
        dq = producer.get(n.input[0]) if n.op_type == "MatMul" and n.input else None
        qn = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        shared = qn is not None and (readers[dq.output[0]] > 1 or readers[qn.output[0]] > 1)
        if shared and qn.op_type == "QuantizeLinear":
            tag = f"{n.name or n.output[0]}_dedicated"
            q2 = helper.make_node("QuantizeLinear", list(qn.input), [tag + "_q"], name=tag + "_Q")
            dq2 = helper.make_node("DequantizeLinear", [tag + "_q", *dq.input[1:]], [tag + "_dq"], name=tag + "_DQ")
            q2.attribute.extend(qn.attribute)
            dq2.attribute.extend(dq.attribute)
            out += [q2, dq2]
            n.input[0] = tag + "_dq"
        out.append(n)
    del g.node[:]
    g.node.extend(out)
    return model


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, as onnxruntime's qdq_loss_debug computes it."""
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)


# --- Weight-only precisions: onnxruntime's MatMulNBits -----------------------------------------------------
#
# ``int4`` and ``int8-weight-only`` store each MatMul/Gemm weight as blocks of ``block_size`` values along K,
# each block with its own float scale (and a uint8 zero point unless symmetric), in MatMulNBits' layout:
# B uint8 [N, K/block, block*bits/8], scales float [N, K/block], zero points uint8 [N, ceil(K/block*bits/8)].
# 4-bit scales are stored as float16 behind a Cast (as GGUF's Q4_0 stores its block scales): onnxruntime folds
# the Cast at session creation, so MatMulNBits still sees constant fp32 scales and prepacks them; a bundle saves
# 1/8 of a bit per weight on disk and in the download, at no measured accuracy cost (docs/export.md).
# Activations stay float (no calibration): decode at batch 1 is bound by reading weights, which this shrinks
# 4x (8-bit) or 8x (4-bit) against fp32. All three are ordinary initializers, so ``write_shared`` puts them
# in the module's weights file like any other weights, and ``runtime/template.py`` can feed them as inputs
# (uint8 and float are types it feeds). Settings are per execution context, measured (docs/export.md).

WEIGHT_ONLY_BITS = {"int4": 4, "int8-weight-only": 8}


@dataclass(frozen=True)
class WeightOnly:
    bits: int
    block_size: int = 32  # values along K sharing one scale; a power of two >= 16
    symmetric: bool = False  # no zero points: one byte per block fewer, a little less accurate
    # MatMulNBits' compute type: 0 = unset (fp32 over dequantized blocks), 4 = int8 activations quantized per
    # block at run time (MLAS's CompInt8 kernels: VNNI/AVX2 on x86, dot-product instructions on ARM64).
    accuracy_level: int = 4
    scale_dtype: str = "float32"  # how scales are stored: "float32", or "float16" behind a Cast to fp32


# Per (precision, context). Chosen on the small reference and the 1-layer seed (docs/export.md, "Weight-only
# precisions"): block 32 asymmetric is the most accurate measured setting, and accuracy_level 4 is the fast one.
# float16 scales cost 4-bit nothing measurable and save 1/8 bit a weight; against 8-bit's finer steps their
# rounding is a quarter of the quantization error, for 1/16 of the bytes, so 8-bit keeps float32.
WEIGHT_ONLY = {
    ("int4", "arm"): WeightOnly(4, 32, False, 4, "float16"),
    ("int4", "x86"): WeightOnly(4, 32, False, 4, "float16"),
    ("int4", "tensorrt"): WeightOnly(4, 32, False, 4, "float16"),
    ("int8-weight-only", "arm"): WeightOnly(8, 32, False, 4),
    ("int8-weight-only", "x86"): WeightOnly(8, 32, False, 4),
    ("int8-weight-only", "tensorrt"): WeightOnly(8, 32, False, 4),
}


def weight_only_settings(precision: str, target) -> WeightOnly:
    return WEIGHT_ONLY[(precision, context_of(target))]


def manifest_settings(s: WeightOnly) -> dict:
    """The settings as the manifest records them: ``scale_dtype`` only where it is not float32, the storage
    every bundle had before it, so such bundles stay as they were (and readable by runtimes that predate it)."""
    return {k: v for k, v in vars(s).items() if k != "scale_dtype" or v != "float32"}


def gemms_as_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """Gemm(A, B, C) with a constant B becomes MatMul(A, B') + C, B' = B or its transpose (as onnxruntime's
    ``MatMulNBitsQuantizer`` only takes MatMul; torch exports every 2-D ``nn.Linear`` as Gemm). Gemms with
    alpha/beta other than 1 or a transposed A are left alone, and stay fp32."""
    from onnx import helper, numpy_helper as nh

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(n)
            continue
        w = nh.to_array(inits[n.input[1]])
        if attrs.get("transB", 0):
            w = np.ascontiguousarray(w.T)
        name = n.input[1] + "_kn"
        g.initializer.append(nh.from_array(w, name))
        has_bias = len(n.input) > 2 and n.input[2]
        mm_out = n.output[0] + "_mm" if has_bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], name], [mm_out], name=(n.name or name) + "_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=(n.name or name) + "_bias"))
    used = {i for n in nodes for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.node[:], g.initializer[:]
    g.node.extend(nodes)
    g.initializer.extend(keep)
    return model


# quantize_static logs this advice (twice) for a model without quant_pre_process's mark; we skip it on purpose.
PRE_PROCESS_ADVICE = ("Please consider to run pre-processing", "Please consider pre-processing")


@contextlib.contextmanager
def _filtered(logger, prefixes: tuple):
    """Drop the records of ``logger`` whose message starts with one of ``prefixes``; keep all others."""
    def f(record):
        return not record.getMessage().startswith(prefixes)

    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


@contextlib.contextmanager
def _level(logger, level):
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def quantize_weight_only(model: onnx.ModelProto, precision: str, target, settings: WeightOnly | None = None
                         ) -> onnx.ModelProto:
    """Every MatMul/Gemm with a constant 2-D weight as MatMulNBits (``precision`` in WEIGHT_ONLY_BITS)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if precision not in WEIGHT_ONLY_BITS:
        raise ValueError(f"unknown weight-only precision {precision!r}")
    s = settings or weight_only_settings(precision, target)
    m = gemms_as_matmuls(model)
    # Node names make the quantizer's tensor names; the exporter leaves some empty.
    for i, n in enumerate(m.graph.node):
        n.name = n.name or f"n{i}"
    # The quantizer logs every node at INFO on the root handler; stderr belongs to the progress bar and errors.
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _level(log, logging.WARNING):
        warnings.simplefilter("ignore")
        qz = MatMulNBitsQuantizer(m, bits=s.bits, block_size=s.block_size, is_symmetric=s.symmetric,
                                  accuracy_level=s.accuracy_level or None, op_types_to_quantize=("MatMul",))
        qz.process()
    out = qz.model.model
    out.producer_name = "m3edge"
    if s.scale_dtype == "float16":
        half_scales(out)
    elif s.scale_dtype != "float32":
        raise ValueError(f"unknown scale dtype {s.scale_dtype!r} (float16 or float32)")
    return out


FP16_TINY = float(np.finfo(np.float16).tiny)  # below the smallest normal, a float16 scale loses precision


def half_scales(model: onnx.ModelProto) -> int:
    """Store each MatMulNBits' fp32 scales as float16 feeding a Cast back to fp32 (in place); returns how many.
    A tensor any of whose non-zero scales falls outside float16's normal range stays fp32."""
    from onnx import helper, numpy_helper as nh

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    casts, done = [], set()
    for n in g.node:
        if n.op_type != "MatMulNBits" or n.input[2] in done or n.input[2] not in inits:
            continue
        t = inits[n.input[2]]
        a = nh.to_array(t)
        nz = np.abs(a[a != 0])
        if a.dtype != np.float32 or (nz.size and (nz.min() < FP16_TINY or nz.max() > np.finfo(np.float16).max)):
            continue
        half = nh.from_array(a.astype(np.float16), t.name + "_fp16")
        g.initializer.remove(t)
        g.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [t.name], to=onnx.TensorProto.FLOAT, name=t.name + "_cast"))
        done.add(t.name)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return len(casts)


def matmul_nbits(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "MatMulNBits" for n in model.graph.node)
