"""Validation after export, in the manner of optimum's exporters: structural checks, then values.

Each graph file: the onnx checker with full shape inference (a TFLite signature: its port shapes), static
input/output shapes equal to the spec, then the runtime's backend against the torch module on real inputs with a max-abs-diff tolerance. Failures
are typed, and every result goes into the parity report whether it passed or not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from m3edge.errors import CheckFailed


class ValidationError(CheckFailed):
    """A graph failed validation."""


class GraphCheckError(ValidationError):
    """The onnx checker or shape inference rejected the graph."""


class ShapeMismatchError(ValidationError):
    """A graph's inputs or outputs are not the static shapes the spec requires."""


class ValueMismatchError(ValidationError):
    """onnxruntime and torch disagree by more than the tolerance."""


@dataclass
class GraphCheck:
    graph: str
    role: str
    layer: int | None
    expert: int | None
    bucket: int
    path: str
    max_abs_diff: float | None
    atol: float
    status: str  # "ok" or the ValidationError subclass name
    message: str = ""
    precision: str = "fp32"
    sqnr_db: float | None = None

    @property
    def passed(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)


def static_shape(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def check_structure(src, expected_in: dict[str, list[int]], expected_out: dict[str, list[int]]) -> None:
    """``src``: a bundle GraphFile, the graph with its weights in memory."""
    from m3edge.backends.onnxruntime.onnx_export import attach

    path = Path(src.name)
    try:
        model = attach(onnx.load_model_from_string(src.model), src.data)
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:  # the checker raises several exception types; keep its message
        raise GraphCheckError(f"{path.name}: {str(e).splitlines()[0]}") from None
    for kind, values, expected in (("input", inferred.graph.input, expected_in),
                                   ("output", inferred.graph.output, expected_out)):
        got = {v.name: static_shape(v) for v in values if v.name in expected or kind == "output"}
        for name, shape in expected.items():
            if got.get(name) != shape:
                raise ShapeMismatchError(f"{path.name}: {kind} {name!r} has shape {got.get(name)}, expected {shape}")


def check_signature_shapes(graph, name: str, signature: str | None, expected_in: dict[str, list[int]],
                           expected_out: dict[str, list[int]]) -> None:
    """A TFLite signature's ports, in the module's order, must have the spec's static shapes."""
    for kind, got, expected in (("input", graph.input_shapes, expected_in), ("output", graph.output_shapes, expected_out)):
        if len(got) != len(expected):
            raise ShapeMismatchError(f"{name} [{signature}]: {len(got)} {kind}s, expected {len(expected)}")
        for shape, (port, want) in zip(got, expected.items()):
            if list(shape) != want:
                raise ShapeMismatchError(f"{name} [{signature}]: {kind} {port!r} has shape {list(shape)}, expected {want}")


@torch.no_grad()
def max_abs_diff(graph, module, inputs: tuple[np.ndarray, ...]) -> float:
    return compare(graph, module, inputs)[0]


@torch.no_grad()
def compare(graph, module, inputs: tuple[np.ndarray, ...], rtol: float = 0.0) -> tuple[float, float, float]:
    """(max abs diff, SQNR in dB over all outputs, max of |diff| - rtol |torch|: what an atol gate with
    numpy.allclose's rtol judges) of the graph against the torch module."""
    from m3edge.export.quantize import sqnr_db

    got = graph.run(*inputs)
    ref = module(*(torch.from_numpy(a) for a in inputs))
    ref = ref if isinstance(ref, tuple) else (ref,)
    if len(got) != len(ref):
        raise ShapeMismatchError(f"graph returned {len(got)} outputs, torch {len(ref)}")
    worst = excess = 0.0
    for g, r in zip(got, ref):
        r = r.numpy()
        if g.shape != r.shape:
            raise ShapeMismatchError(f"output shape {list(g.shape)} != torch {list(r.shape)}")
        d = np.abs(g.astype(np.float64) - r.astype(np.float64))
        worst = max(worst, float(np.max(d)))
        excess = max(excess, float(np.max(d - rtol * np.abs(r.astype(np.float64)))))
    flat = lambda xs: np.concatenate([np.ravel(x) for x in xs])  # noqa: E731
    return worst, sqnr_db(flat([r.numpy() for r in ref]), flat(got)), excess


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.4g}")  # a report's precision; gates judge the exact value


def by_module(checks: list[GraphCheck]) -> list[dict]:
    """The parity report's rows: one per module, its buckets' results side by side (a bundle has hundreds
    of (module, bucket) graphs; one object each was most of the report's bytes)."""
    rows: dict[str, dict] = {}
    for c in checks:
        r = rows.setdefault(c.graph, {"graph": c.graph, "role": c.role, "precision": c.precision, "status": "ok",
                                      "buckets": [], "max_abs_diff": [], "sqnr_db": []})
        r["buckets"].append(c.bucket)
        r["max_abs_diff"].append(_round(c.max_abs_diff))
        r["sqnr_db"].append(_round(c.sqnr_db))
        if not c.passed and r["status"] == "ok":
            r |= {"status": c.status, "message": f"b{c.bucket}: {c.message}"}
    for r in rows.values():
        sq = [x for x in r["sqnr_db"] if x is not None]
        r["min_sqnr_db"] = min(sq) if sq else None
    return list(rows.values())


def summarise(checks: list[GraphCheck]) -> list[dict]:
    """One row per role: graphs, failures, the worst diff and where it is."""
    rows = []
    from m3edge.manifest import ROLES

    for role in ROLES:
        mine = [c for c in checks if c.role == role]
        if not mine:
            continue
        worst = max(mine, key=lambda c: -1 if c.max_abs_diff is None else c.max_abs_diff)
        sq = [c.sqnr_db for c in mine if c.sqnr_db is not None]
        rows.append({"role": role, "graphs": len(mine), "failed": sum(not c.passed for c in mine),
                     "max_abs_diff": worst.max_abs_diff, "worst": f"{worst.graph}.b{worst.bucket}",
                     "atol": worst.atol, "precision": "/".join(sorted({c.precision for c in mine})),
                     "min_sqnr_db": min(sq) if sq else None})
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'role':<10} {'prec':<5} {'graphs':>6} {'failed':>6} {'max |diff|':>11} {'min SQNR dB':>11}  worst"
    lines = [head, "-" * len(head)]
    for r in rows:
        diff = "n/a" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
        sq = "n/a" if r.get("min_sqnr_db") is None else f"{r['min_sqnr_db']:.1f}"
        lines.append(f"{r['role']:<10} {r.get('precision', 'fp32'):<5} {r['graphs']:>6} {r['failed']:>6} {diff:>11} "
                     f"{sq:>11}  {r['worst']}")
    return "\n".join(lines)
