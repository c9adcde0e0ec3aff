"""The LiteRT backend's export side: one .tflite per module with a signature per bucket (litert-torch),
INT8 through its PT2E quantizer."""

from __future__ import annotations

from pathlib import Path

from m3edge.backends.base import ExportBackend
from m3edge.backends.litert import tflite
from m3edge.backends.registry import export_side
from m3edge.export.pipeline import Built, ExportOptions, _calibration_rows, _io
from m3edge.export.validate import ValidationError, check_signature_shapes
from m3edge.export.views import constant_slices


def build_tflite(spec, precision: str, cal, target, opts: ExportOptions, calibration: dict, root: Path,
                 built: dict) -> Built:
    """One .tflite per module, a signature per bucket. A module litert-torch cannot quantize is kept at
    fp32 and the report says why; one it cannot convert at all fails the export with its error."""
    examples = {b: spec.example(b) for b in spec.buckets}
    module = constant_slices(spec.module)  # the MLIR passes fold a parameter slice slowly (export/views.py)
    # What an fp32 .tflite of this module would hold is only known by converting it: compare bundles with
    # an `--precision fp32` export instead of guessing from parameters the graph may not use.
    fp32_bytes = None
    note = None
    try:
        blob = tflite.convert(module, examples, precision,
                              _calibration_rows(spec, cal, calibration) if precision == "int8" else None)
    except tflite.ConversionError as e:
        if precision == "fp32":
            raise ValidationError(f"{spec.label}: litert-torch cannot convert it ({e})") from None
        note = f"{spec.label}: {precision} conversion failed ({e}); kept fp32"
        precision = "fp32"
        try:
            blob = tflite.convert(module, examples, precision)
        except tflite.ConversionError as e2:
            raise ValidationError(f"{spec.label}: litert-torch cannot convert it ({e2})") from None
    rel = f"graphs/{spec.stem}.tflite"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(blob)
    graphs = {}
    for b in spec.buckets:
        ins, outs = tflite.port_quant(root / rel, tflite.signature_name(b))
        graphs[b] = {"path": rel, "weights": None, "signature": tflite.signature_name(b),
                     "inputs": _io(spec, spec.inputs, b, ins), "outputs": _io(spec, spec.outputs, b, outs)}
    return Built(precision, [rel], graphs, fp32_bytes, note)


def calibrator_tflite(target, opts: ExportOptions) -> dict:
    # --calibration-method picks onnxruntime's calibrator; the PT2E quantizer keeps its own observers.
    return {"calibrator": "litert-torch PT2E", "method": "the PT2E quantizer's observers",
            "scheme": "symmetric int8, per-channel weights"}


@export_side("tflite")
class LiteRTExport(ExportBackend):
    def build(self, spec, precision, cal, target, opts, calibration, root, built) -> Built:
        return build_tflite(spec, precision, cal, target, opts, calibration, root, built)

    def calibrator(self, target, opts) -> dict:
        return calibrator_tflite(target, opts)

    def versions(self) -> dict:
        from importlib.metadata import version

        return {"litert-torch": version("litert-torch"), "ai-edge-litert": version("ai-edge-litert")}

    def check_loaded(self, graph, name, entry, expected_in, expected_out) -> None:
        check_signature_shapes(graph, name, entry.get("signature"), expected_in, expected_out)
