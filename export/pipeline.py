"""``m3edge export``: split -> export every graph at every bucket -> validate -> compose end to end ->
write the bundle atomically. Stages run in that order; the bundle appears only when all passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime
from onnx import numpy_helper
import torch

import m3edge
from m3edge import bundle as bfmt
from m3edge.data import load_split
from m3edge.errors import BadInput, CheckFailed
from m3edge.export.capture import capture, next_token_counts
from m3edge.export.graphs import split
from m3edge.export import bank
from m3edge.export import quantize as q
from m3edge.export.inspectable import name_graph, provenance, stamp
from m3edge.export.onnx_export import compact, export_module, write_graph, write_shared
from m3edge.export.parity import Gates, end_to_end
from m3edge.export import tflite
from m3edge.export.fp16 import to_fp16
from m3edge.export.validate import (GraphCheck, ValidationError, by_module, check_signature_shapes, check_structure,
                                    compare, summarise)
from m3edge.runtime.executor import BundleExecutor
from m3edge.runtime.graph import SessionConfig, open_graph

PRECISIONS = ("auto", "fp32", "fp16", "int8", *q.WEIGHT_ONLY_BITS)
# What each backend builds; a profile's request outside it is built at fp32 and said so. Weight-only
# precisions are onnxruntime's MatMulNBits; litert-torch has no weight-only export path (docs/export.md).
BUILT = {"onnxruntime": ("fp32", "fp16", "int8", *q.WEIGHT_ONLY_BITS), "tflite": ("fp32", "int8")}


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "auto"
    calibration_tokens: int = 512
    calibration_method: str = "percentile"
    parity_tokens: int = 2048
    allow_accuracy_drop: bool = False
    gates: Gates = field(default_factory=Gates)
    bank_rows: int = 4  # a bank per layer at the smallest capacity bucket holding this many rows; 0: none
    compact_names: bool = False  # positional tensor names (onnx_export.compact): smaller graph files, unreadable
    # metadata_props every ONNX graph of this export carries (inspectable.provenance); export_bundle fills it.
    graph_metadata: tuple[tuple[str, str], ...] = ()


class ExportFailed(CheckFailed):
    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def resolve_precision(target, requested: str) -> tuple[dict, list[str]]:
    """Per-role precision for this export, and notes on what the profile asked for that differs."""
    if requested not in PRECISIONS:
        raise BadInput(f"--precision {requested!r} is not supported (choose from {', '.join(PRECISIONS)})")
    built = BUILT[target.backend]
    if requested != "auto" and requested not in built:
        raise BadInput(f"--precision {requested}: the {target.backend} backend builds {', '.join(built)}")
    # The reader mixes two probability distributions with a gate of 300 parameters: always fp32 (quantizing it
    # saves nothing and moves every probability it outputs).
    if requested != "auto":
        return {role: requested for role in bfmt.ROLES if role not in ROLE_BUILDERS} | {"reader": "fp32"}, []
    # The memory encoder has no profile entry: it runs beside the encoder, at its precision.
    wanted = dict(target.precision) | {"memory": target.precision["encoder"], "reader": "fp32"}
    chosen = {role: p if p in built else "fp32" for role, p in wanted.items()}
    notes = [f"{role}: profile asks for {p}, exported as fp32 ({target.backend} builds {', '.join(built)})"
             for role, p in sorted(wanted.items()) if p not in built]
    return chosen, notes


def versions(backend: str = "onnxruntime") -> dict:
    v = {"m3edge": m3edge.__version__, "torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
         "onnxruntime": onnxruntime.__version__}
    if backend == "tflite":
        from importlib.metadata import version

        v |= {"litert-torch": version("litert-torch"), "ai-edge-litert": version("ai-edge-litert")}
    return v


def _io(spec, ports, bucket, quant=None):
    quant = quant or [{}] * len(ports)
    return [{"name": p.name, "shape": spec.shape(p, bucket), "dtype": p.dtype, "scale": q.get("scale"),
             "zero_point": q.get("zero_point")} for p, q in zip(ports, quant)]


@dataclass
class Built:
    """What one module became: files written and, per bucket, its graph entry's backend-specific part."""
    precision: str
    files: list[str]
    graphs: dict[int, dict]  # bucket -> {path, weights, signature, inputs, outputs}
    fp32_bytes: int | None  # weights an fp32 export of this module stores (one bucket); None: not known
    note: str | None = None  # why the built precision differs from the requested one


def _calibration_rows(spec, cal, calibration: dict) -> list[np.ndarray]:
    rows, fallback = cal.calibration_rows(spec.role, spec.layer, spec.expert, q.MIN_EXPERT_ROWS)
    rows = [q.tiled(a, max(spec.buckets)) for a in rows]
    calibration["graphs"][spec.label] = {"rows": int(len(rows[0])), "fallback": fallback}
    if fallback:
        calibration["fallback"].append(spec.label)
    return rows


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
        models = {b: q.quantize(m, [dict(zip(in_names, (a[i:i + b] for a in rows))) for i in range(0, len(rows[0]), b)],
                                target, opts.calibration_method, spec.role in q.PER_CHANNEL)
                  for b, m in models.items()}
    elif precision == "fp16":
        models = {b: to_fp16(m) for b, m in models.items()}
    elif precision in q.WEIGHT_ONLY_BITS:  # no calibration: activations stay float
        models = {b: q.quantize_weight_only(m, precision, target) for b, m in models.items()}
    weights_rel, paths = write_shared({b: finish(m, spec, b, precision, opts) for b, m in models.items()}, root,
                                      spec.stem, spec.kind)
    graphs = {b: {"path": rel, "weights": weights_rel, "inputs": _io(spec, spec.inputs, b),
                  "outputs": _io(spec, spec.outputs, b)} for b, rel in paths.items()}
    return Built(precision, [weights_rel, *sorted(set(paths.values()))], graphs, fp32_bytes)


def build_tflite(spec, precision: str, cal, target, opts: ExportOptions, calibration: dict, root: Path,
                 built: dict) -> Built:
    """One .tflite per module, a signature per bucket. A module litert-torch cannot quantize is kept at
    fp32 and the report says why; one it cannot convert at all fails the export with its error."""
    examples = {b: spec.example(b) for b in spec.buckets}
    # What an fp32 .tflite of this module would hold is only known by converting it: compare bundles with
    # an `--precision fp32` export instead of guessing from parameters the graph may not use.
    fp32_bytes = None
    note = None
    try:
        blob = tflite.convert(spec.module, examples, precision,
                              _calibration_rows(spec, cal, calibration) if precision == "int8" else None)
    except tflite.ConversionError as e:
        if precision == "fp32":
            raise ValidationError(f"{spec.label}: litert-torch cannot convert it ({e})") from None
        note = f"{spec.label}: {precision} conversion failed ({e}); kept fp32"
        precision = "fp32"
        try:
            blob = tflite.convert(spec.module, examples, precision)
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


def build_bank(spec, precision: str, cal, target, opts: ExportOptions, calibration: dict, root: Path,
               built: dict) -> Built:
    """The layer's expert graphs, already written at this bucket, merged into one (export/bank.py). Their
    weights files are the bank's: it stores no weights of its own."""
    (bucket,) = spec.buckets
    experts = [built[("expert", spec.layer, e)].graphs[bucket] for e in range(spec.blocks)]
    models = [onnx.load(str(root / g["path"]), load_external_data=False) for g in experts]
    merged = finish(bank.merge(models, bucket, spec.inputs[0].dims[0]), spec, bucket, precision, opts)
    rel = write_graph(merged, root, f"{spec.kind}.b{bucket}")
    graph = {"path": rel, "weights": [g["weights"] for g in experts],
             "inputs": _io(spec, spec.inputs, bucket), "outputs": _io(spec, spec.outputs, bucket)}
    return Built(precision, [rel], {bucket: graph}, 0)


BUILDERS = {"onnxruntime": build_onnx, "tflite": build_tflite}
# Backends whose graphs can be merged into banks: ONNX external data lets a bank share the experts' weights
# files. A TFLite file embeds its weights, so a bank would be a second copy of every expert.
BANK_BUILDERS = {"onnxruntime": build_bank}
ROLE_BUILDERS = {"bank": BANK_BUILDERS}  # roles built from other graphs rather than from a torch module


# A bank runs every expert of its layer, the idle ones too, so it streams all their weights. It pays where
# an expert's weights cost less to read than an onnxruntime call's fixed cost (~20 us here, about 200 kB
# at a Pi's ~10 GB/s): experts up to 64k parameters (the small reference's are 12k-50k; seed's 12.6M).
BANK_MAX_PARAMS = 64 * 1024


def bank_rows(agent, target, opts: ExportOptions) -> int | None:
    """Rows per expert in this export's banks, or None for no banks: none where the profile turns them off,
    where the backend cannot share the experts' weights, where experts are too big to pay, or where the
    profile's expert cache holds fewer than all of a layer's experts (the runtime would never use the bank:
    it holds them all)."""
    if (not opts.bank_rows or not target.expert_banks or target.backend not in BANK_BUILDERS
            or target.expert_cache_size < agent.cfg.n_experts):
        return None
    biggest = max(sum(p.numel() for p in e.parameters()) for layer in agent.layers for e in layer.experts)
    if biggest > BANK_MAX_PARAMS:
        return None
    return next((b for b in target.capacity_buckets if b >= opts.bank_rows), None)


def calibrator_onnx(target, opts: ExportOptions) -> dict:
    ctx = q.context_of(target)
    return {"calibrator": "onnxruntime quantize_static (QDQ)", "method": opts.calibration_method, "context": ctx,
            "types": vars(q.QUANT_TYPES[ctx]) | {}}


def calibrator_tflite(target, opts: ExportOptions) -> dict:
    # --calibration-method picks onnxruntime's calibrator; the PT2E quantizer keeps its own observers.
    return {"calibrator": "litert-torch PT2E", "method": "the PT2E quantizer's observers",
            "scheme": "symmetric int8, per-channel weights"}


CALIBRATORS = {"onnxruntime": calibrator_onnx, "tflite": calibrator_tflite}  # what reports/calibration.json records


def stage_check(root: Path, entry: dict, spec, cal, session, opts: ExportOptions) -> GraphCheck:
    """Stage 2 for one graph: structure and static shapes, then the backend against torch on real inputs."""
    src = bfmt.graph_file(entry, lambda rel: (root / rel).read_bytes())
    path, bucket, precision = root / entry["path"], entry["bucket"], entry["precision"]
    check = GraphCheck(spec.label, spec.role, spec.layer, spec.expert, bucket, entry["path"], None,
                       opts.gates.graph_atol, "ok", precision=precision)
    expected_in = {p.name: spec.shape(p, bucket) for p in spec.inputs}
    expected_out = {p.name: spec.shape(p, bucket) for p in spec.outputs}
    try:
        if entry["backend"] == "onnxruntime":
            check_structure(src, expected_in, expected_out)
        graph = open_graph(src, entry, session)
        if entry["backend"] == "tflite":
            check_signature_shapes(graph, path.name, entry.get("signature"), expected_in, expected_out)
        inputs = cal.for_bucket(spec.role, spec.layer, spec.expert, bucket)
        check.max_abs_diff, check.sqnr_db = compare(graph, spec.checked_against, inputs)
        # The atol gate is for fp32 graphs; a reduced-precision graph is judged end to end, SQNR reported.
        if precision == "fp32" and check.max_abs_diff > opts.gates.graph_atol:
            check.status, check.message = "ValueMismatchError", f"max |diff| {check.max_abs_diff:.2e}"
    except ValidationError as e:
        check.status, check.message = type(e).__name__, str(e)
    return check


def export_bundle(agent, source: dict, target, out: str | Path, data_dir: Path, force: bool = False,
                  opts: ExportOptions = ExportOptions(), progress: Callable[[str], None] | None = None) -> dict:
    """Write a validated bundle to ``out``; returns the parity report. Raises ExportFailed on a gate.
    ``progress(label)`` is called once per module built and checked, then ``parity.E2E_STEPS`` times during the
    end-to-end check (labels ``end-to-end: ...``)."""
    agent.eval()
    cfg = agent.cfg
    opts = replace(opts, graph_metadata=tuple(sorted(provenance(cfg.to_dict(), source).items())))
    precision, notes = resolve_precision(target, opts.precision)
    rows = bank_rows(agent, target, opts)
    specs = split(agent, target.token_buckets, target.capacity_buckets, rows)
    if rows:  # a bank is its experts' graphs
        precision["bank"] = precision["expert"]
    n_cal = max(opts.calibration_tokens, max(target.token_buckets), max(target.capacity_buckets))
    cal_text = load_split(data_dir, "calibration")
    cal = capture(agent, cal_text, n_cal)
    eval_text = load_split(data_dir, "eval")
    session = SessionConfig(threads=1)
    calibration = CALIBRATORS[target.backend](target, opts) | {"graphs": {}, "fallback": []}
    weight_only = {p: vars(q.weight_only_settings(p, target)) for p in sorted(set(precision.values()))
                   if p in q.WEIGHT_ONLY_BITS}
    with bfmt.staging(Path(out), force) as tmp:
        checks, entries, files, built_modules = [], [], {}, {}
        fp32_weights = 0  # one bucket per module: what an fp32 bundle would store
        for spec in specs:
            build = ROLE_BUILDERS.get(spec.role, BUILDERS)[target.backend]
            built = build(spec, precision[spec.role], cal, target, opts, calibration, tmp, built_modules)
            built_modules[(spec.role, spec.layer, spec.expert)] = built
            fp32_weights = None if None in (fp32_weights, built.fp32_bytes) else fp32_weights + built.fp32_bytes
            if built.note:
                notes.append(built.note)
                calibration.setdefault("kept_fp32", []).append(built.note)
            written = {rel: files.get(rel) or bfmt.file_entry(tmp, rel) for rel in built.files}
            files.update(written)
            for bucket, g in built.graphs.items():
                entry = {"role": spec.role, "kind": spec.kind, "layer": spec.layer, "expert": spec.expert,
                         "memory_type": spec.memory_type, "bucket": bucket, "path": g["path"],
                         "weights": g["weights"], "sha256": written[g["path"]]["sha256"],
                         "bytes": written[g["path"]]["bytes"], "precision": built.precision,
                         "backend": target.backend, "inputs": g["inputs"], "outputs": g["outputs"]}
                if g.get("signature"):
                    entry["signature"] = g["signature"]
                entries.append(entry)
                checks.append(stage_check(tmp, entry, spec, cal, session, opts))
            if progress:
                progress(spec.label)
        manifest = {
            "schema_version": bfmt.SCHEMA_VERSION, "format": bfmt.FORMAT, "versions": versions(target.backend),
            "opset": target.opset, "model_config": cfg.to_dict(), "source": source, "target": target.to_dict(),
            "precision": {"requested": opts.precision, "graphs": precision, "notes": notes}
            | ({"weight_only": weight_only} if weight_only else {}),
            "routing": {"mode": cfg.routing, "top_k": cfg.top_k, "n_experts": cfg.n_experts,
                        "capacity": cfg.expert_capacity, "token_buckets": list(target.token_buckets),
                        "capacity_buckets": list(target.capacity_buckets), "tie_break": "lower expert index"},
            "expert_usage": {"split": "calibration", "tokens": n_cal, "pairs": cal.expert_usage,
                             "next_token": next_token_counts(agent, cal_text, n_cal)},
        }
        manifest["graphs"], manifest["graph_sets"], manifest["files"] = bfmt.pack(
            entries, sorted(files.values(), key=lambda f: f["path"]))
        (tmp / bfmt.MANIFEST).write_text(bfmt.dumps(manifest))
        executor = BundleExecutor(bfmt.open_bundle(tmp, verify=False), session)
        quantized = any(e["precision"] != "fp32" for e in entries)
        gates = opts.gates.for_precisions({e["precision"] for e in entries})  # weight-only: DESIGN.md's own gates
        e2e = end_to_end(agent, executor, eval_text, opts.parity_tokens, gates, quantized,
                         progress and (lambda label: progress(f"end-to-end: {label}")))
        failed = [c for c in checks if not c.passed]
        accepted_drop = quantized and not e2e["passed"] and opts.allow_accuracy_drop
        report = {"passed": not failed and (e2e["passed"] or accepted_drop), "accuracy_drop_allowed": accepted_drop,
                  "gates": {k: v for k, v in vars(gates).items()},
                  "summary": summarise(checks), "end_to_end": e2e, "graphs": by_module(checks)}
        (tmp / "reports").mkdir()
        written = ["reports/parity.json"]
        (tmp / "reports" / "parity.json").write_text(bfmt.dumps(report))
        if quantized:
            weights = sum(f["bytes"] for f in files.values() if f["path"].endswith((".weights", ".tflite")))
            accuracy = {"precision": precision, "calibration_method": calibration["method"],
                        "sqnr_db": {row["graph"]: row["min_sqnr_db"] for row in report["graphs"]},
                        "routing_agreement": e2e["routing_agreement"], "top1_agreement": e2e["top1_agreement"],
                        "bits_per_byte": e2e["bits_per_byte"], "bits_per_byte_increase": e2e["bits_per_byte_increase"],
                        "weights_bytes": weights, "fp32_weights_bytes": fp32_weights,
                        "passed": e2e["passed"], "accuracy_drop_allowed": accepted_drop}
            if weight_only:
                accuracy["weight_only"] = weight_only
            (tmp / "reports" / "accuracy.json").write_text(bfmt.dumps(accuracy))
            written.append("reports/accuracy.json")
        if any(e["precision"] == "int8" for e in entries):  # fp16 needs no calibration
            (tmp / "reports" / "calibration.json").write_text(bfmt.dumps(calibration))
            written.append("reports/calibration.json")
        manifest["files"] = sorted(manifest["files"] + [bfmt.file_entry(tmp, w) for w in written], key=lambda f: f["path"])
        (tmp / bfmt.MANIFEST).write_text(bfmt.dumps(manifest))
        if failed:
            raise ExportFailed(f"{len(failed)} graph(s) failed validation, first: {failed[0].path}: "
                               f"{failed[0].status} {failed[0].message}", report)
        if not e2e["passed"] and not accepted_drop:
            what = (f"bits/byte +{e2e['bits_per_byte_increase']:.2%}, top-1 agreement {e2e['top1_agreement']:.2%}, "
                    f"routing agreement {e2e['routing_agreement']:.2%}" if quantized else
                    f"logits max |diff| {e2e['logits_max_abs_diff']:.2e}")
            raise ExportFailed(f"end-to-end accuracy outside the gates ({what})"
                               + ("; --allow-accuracy-drop accepts it" if quantized else ""), report)
    return report
