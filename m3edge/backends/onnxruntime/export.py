"""The onnxruntime backend's export side: torch -> a static ONNX graph per bucket sharing one weights file,
fp16, INT8 QDQ (onnxruntime's quantize_static) or weight-only MatMulNBits (int4, int8-weight-only;
export/quantize.py) as the role asks, and expert banks. Every graph is named and stamped (export/inspectable.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx import numpy_helper

from m3edge.backends.base import ExportBackend
from m3edge.backends.onnxruntime import bank
from m3edge.backends.onnxruntime.onnx_export import compact, export_module, write_graph, write_shared
from m3edge.backends.registry import export_side
from m3edge.export import quantize as q
from m3edge.export.fp16 import to_fp16
from m3edge.export.inspectable import name_graph, stamp
from m3edge.export.pipeline import Built, ExportOptions, _calibration_rows, _io
from m3edge.export.validate import check_structure


def finish(model: onnx.ModelProto, spec, bucket: int, precision: str, opts: ExportOptions) -> onnx.ModelProto:
    """A graph as the bundle stores it: named (export/inspectable.py) or compacted, stamped with what every
    module sharing its file has in common (never its layer or expert: see inspectable)."""
    model = compact(model) if opts.compact_names else name_graph(model, f"{spec.kind}.b{bucket}")
    return stamp(model, dict(opts.graph_metadata) | {"role": spec.role, "kind": spec.kind, "bucket": bucket,
                                                      "precision": precision})


def build_onnx(spec, precision: str, cal, target, opts: ExportOptions, calibration: dict, root: Path,
               built: dict) -> Built:
    """A static ONNX graph per bucket, sharing one weights file; fp16- or int8-converted as the role asks."""
    in_names = [p.name for p in spec.inputs]
    out_names = [p.name for p in spec.outputs]
    models = {b: export_module(spec.module, spec.example(b), in_names, out_names, target.opset) for b in spec.buckets}
    fp32_bytes = sum(numpy_helper.to_array(t).nbytes for t in models[spec.buckets[0]].graph.initializer)
    if precision == "int8":
        rows = _calibration_rows(spec, cal, calibration)
        # Calibrated once, at the largest bucket (the fewest calibration runs); the other buckets read its
        # ranges (docs/export.md, INT8: the seed's export 234 -> 185 s, the same bundle).
        with tempfile.TemporaryDirectory(prefix="m3edge-ranges-") as d:
            ranges = Path(d, "ranges.json")
            done = {b: q.quantize(models[b], [dict(zip(in_names, (a[i:i + b] for a in rows)))
                                              for i in range(0, len(rows[0]), b)],
                                  target, opts.calibration_method, spec.role in q.PER_CHANNEL, ranges)
                    for b in sorted(models, reverse=True)}
        models = {b: done[b] for b in models}
    elif precision == "fp16":
        models = {b: to_fp16(m) for b, m in models.items()}
    elif precision in q.WEIGHT_ONLY_BITS:  # no calibration: activations stay float
        models = {b: q.quantize_weight_only(m, precision, target) for b, m in models.items()}
    weights_rel, paths = write_shared({b: finish(m, spec, b, precision, opts) for b, m in models.items()}, root,
                                      spec.stem, spec.kind)
    graphs = {b: {"path": rel, "weights": weights_rel, "inputs": _io(spec, spec.inputs, b),
                  "outputs": _io(spec, spec.outputs, b)} for b, rel in paths.items()}
    return Built(precision, [weights_rel, *sorted(set(paths.values()))], graphs, fp32_bytes)


def build_bank(spec, precision: str, cal, target, opts: ExportOptions, calibration: dict, root: Path,
               built: dict) -> Built:
    """The layer's expert graphs, already written at this bucket, merged into one (backends/onnxruntime/bank.py). Their
    weights files are the bank's: it stores no weights of its own."""
    (bucket,) = spec.buckets
    experts = [built[("expert", spec.layer, e)].graphs[bucket] for e in range(spec.blocks)]
    models = [onnx.load(str(root / g["path"]), load_external_data=False) for g in experts]
    merged = finish(bank.merge(models, bucket, spec.inputs[0].dims[0]), spec, bucket, precision, opts)
    rel = write_graph(merged, root, f"{spec.kind}.b{bucket}")
    graph = {"path": rel, "weights": [g["weights"] for g in experts],
             "inputs": _io(spec, spec.inputs, bucket), "outputs": _io(spec, spec.outputs, bucket)}
    return Built(precision, [rel], {bucket: graph}, 0)


def calibrator_onnx(target, opts: ExportOptions) -> dict:
    ctx = q.context_of(target)
    return {"calibrator": "onnxruntime quantize_static (QDQ)", "method": opts.calibration_method, "context": ctx,
            "types": vars(q.QUANT_TYPES[ctx]) | {}}


@export_side("onnxruntime")
class OnnxRuntimeExport(ExportBackend):
    def build(self, spec, precision, cal, target, opts, calibration, root, built) -> Built:
        return build_onnx(spec, precision, cal, target, opts, calibration, root, built)

    def build_bank(self, spec, precision, cal, target, opts, calibration, root, built) -> Built:
        return build_bank(spec, precision, cal, target, opts, calibration, root, built)

    def calibrator(self, target, opts) -> dict:
        return calibrator_onnx(target, opts)

    def check_file(self, src, expected_in, expected_out) -> None:
        check_structure(src, expected_in, expected_out)
