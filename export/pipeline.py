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
import torch

import m3edge
from m3edge import bundle as bfmt
from m3edge.manifest import ROLES
from m3edge.data import load_split
from m3edge.errors import BadInput, CheckFailed
from m3edge.export.capture import capture, next_token_counts
from m3edge.export.graphs import split
from m3edge import backends
from m3edge.backends import SessionConfig, open_graph
from m3edge.export import quantize as q
from m3edge.export.inspectable import provenance
from m3edge.export.parity import Gates, end_to_end
from m3edge.manifest import Manifest
from m3edge.export.validate import GraphCheck, ValidationError, by_module, compare, summarise
from m3edge.runtime.executor import BundleExecutor

PRECISIONS = ("auto", "fp32", "fp16", "int8", *q.WEIGHT_ONLY_BITS)
# Roles built from other graphs rather than from a torch module: a bank is its layer's expert graphs merged
# (by backends whose capabilities declare shared weights).
DERIVED_ROLES = ("bank",)


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
    # What the backend builds (its declared precisions); a profile's request outside it is built at fp32 and said so.
    built = backends.capabilities(target.backend).precisions
    if requested != "auto" and requested not in built:
        raise BadInput(f"--precision {requested}: the {target.backend} backend builds {', '.join(built)}")
    # The reader mixes two probability distributions with a gate of 300 parameters: always fp32 (quantizing it
    # saves nothing and moves every probability it outputs).
    if requested != "auto":
        return {role: requested for role in ROLES if role not in DERIVED_ROLES} | {"reader": "fp32"}, []
    # The memory encoder has no profile entry: it runs beside the encoder, at its precision.
    wanted = dict(target.precision) | {"memory": target.precision["encoder"], "reader": "fp32"}
    chosen = {role: p if p in built else "fp32" for role, p in wanted.items()}
    notes = [f"{role}: profile asks for {p}, exported as fp32 ({target.backend} builds {', '.join(built)})"
             for role, p in sorted(wanted.items()) if p not in built]
    return chosen, notes


def versions(backend: str) -> dict:
    v = {"m3edge": m3edge.__version__, "torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
         "onnxruntime": onnxruntime.__version__}
    return v | backends.export(backend).versions()


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


# A bank runs every expert of its layer, the idle ones too, so it streams all their weights. It pays where
# an expert's weights cost less to read than an onnxruntime call's fixed cost (~20 us here, about 200 kB
# at a Pi's ~10 GB/s): experts up to 64k parameters (the small reference's are 12k-50k; seed's 12.6M).
BANK_MAX_PARAMS = 64 * 1024


def bank_rows(agent, target, opts: ExportOptions) -> int | None:
    """Rows per expert in this export's banks, or None for no banks: none where the profile turns them off,
    where the backend cannot share the experts' weights, where experts are too big to pay, or where the
    profile's expert cache holds fewer than all of a layer's experts (the runtime would never use the bank:
    it holds them all)."""
    if (not opts.bank_rows or not target.expert_banks or not backends.capabilities(target.backend).shared_weights
            or target.expert_cache_size < agent.cfg.n_experts):
        return None
    biggest = max(sum(p.numel() for p in e.parameters()) for layer in agent.layers for e in layer.experts)
    if biggest > BANK_MAX_PARAMS:
        return None
    return next((b for b in target.capacity_buckets if b >= opts.bank_rows), None)


def typed(manifest: dict, root: Path) -> str:
    """The manifest as written: through its typed form (m3edge/manifest.py), so a field export gets wrong fails
    here, naming it, and what is written is what the runtime's validation reads back."""
    return bfmt.dumps(Manifest.from_dict(manifest, root / bfmt.MANIFEST).to_dict())


def stage_check(root: Path, entry: dict, spec, cal, session, opts: ExportOptions) -> GraphCheck:
    """Stage 2 for one graph: structure and static shapes, then the backend against torch on real inputs."""
    src = bfmt.graph_file(entry, lambda rel: (root / rel).read_bytes())
    path, bucket, precision = root / entry["path"], entry["bucket"], entry["precision"]
    check = GraphCheck(spec.label, spec.role, spec.layer, spec.expert, bucket, entry["path"], None,
                       opts.gates.graph_atol, "ok", precision=precision)
    expected_in = {p.name: spec.shape(p, bucket) for p in spec.inputs}
    expected_out = {p.name: spec.shape(p, bucket) for p in spec.outputs}
    try:
        backend = backends.export(entry["backend"])
        backend.check_file(src, expected_in, expected_out)
        graph = open_graph(src, entry, session)
        backend.check_loaded(graph, path.name, entry, expected_in, expected_out)
        inputs = cal.for_bucket(spec.role, spec.layer, spec.expert, bucket)
        check.max_abs_diff, check.sqnr_db, excess = compare(graph, spec.checked_against, inputs, opts.gates.graph_rtol)
        # The atol gate (with optimum's rtol) is for fp32 graphs; a reduced-precision graph is judged end to end,
        # SQNR reported.
        if precision == "fp32" and excess > opts.gates.graph_atol:
            check.status, check.message = "ValueMismatchError", (
                f"max |diff| {check.max_abs_diff:.2e} (beyond atol {opts.gates.graph_atol:g} + rtol "
                f"{opts.gates.graph_rtol:g} |torch|)")
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
    backend = backends.export(target.backend)
    calibration = backend.calibrator(target, opts) | {"graphs": {}, "fallback": []}
    weight_only = {p: q.manifest_settings(q.weight_only_settings(p, target)) for p in sorted(set(precision.values()))
                   if p in q.WEIGHT_ONLY_BITS}
    with bfmt.staging(Path(out), force) as tmp:
        checks, entries, files, built_modules = [], [], {}, {}
        fp32_weights = 0  # one bucket per module: what an fp32 bundle would store
        for spec in specs:
            build = backend.build_bank if spec.role in DERIVED_ROLES else backend.build
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
        (tmp / bfmt.MANIFEST).write_text(typed(manifest, tmp))
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
        (tmp / bfmt.MANIFEST).write_text(typed(manifest, tmp))
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
