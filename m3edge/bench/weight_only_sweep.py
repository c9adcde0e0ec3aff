"""Weight-only settings measured on a checkpoint (docs/export.md, "Weight-only precisions").

    python -m m3edge.bench.weight_only_sweep [--checkpoint checkpoints/small] [--target rpi5] [--out runs/weight-only]
                                      [--variants NAME,...] [--parity-tokens 2048]

Each variant is a full ``export_bundle`` of the checkpoint for the target with per-role precisions and one
MatMulNBits setting (block size, symmetric, accuracy_level, scale storage) in place of the context's chosen one
(export/quantize.py WEIGHT_ONLY), judged by the bundle's own end-to-end report against torch fp32; prints
one JSON row per variant (gates, agreement, bits/byte, weight bytes) and writes them to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the source tree

DENSE = ("encoder", "alignment", "router", "head")


def variant(precision: str, block: int, symmetric: bool, level: int, experts: str | None = None,
            scales: dict | None = None) -> dict:
    """``scales``: bits -> how scales are stored, where it differs from the context's chosen setting."""
    roles = {r: precision for r in DENSE} | {"expert": experts or precision}
    return {"roles": roles, "block_size": block, "symmetric": symmetric, "accuracy_level": level,
            "scales": scales or {}}


VARIANTS = {
    "int4-b32-asym-al4": variant("int4", 32, False, 4),
    "int4-b32-asym-al4-f32scales": variant("int4", 32, False, 4, scales={4: "float32"}),
    "int4-b32-asym-al0": variant("int4", 32, False, 0),
    "int4-b32-sym-al4": variant("int4", 32, True, 4),
    "int4-b16-asym-al4": variant("int4", 16, False, 4),
    "int4-b64-asym-al4": variant("int4", 64, False, 4),
    "int4-b128-asym-al4": variant("int4", 128, False, 4),
    "int8wo-b32-asym-al4": variant("int8-weight-only", 32, False, 4),
    "int8wo-b32-asym-al4-f16scales": variant("int8-weight-only", 32, False, 4, scales={8: "float16"}),
    "int8wo-b32-sym-al4": variant("int8-weight-only", 32, True, 4),
    "int8wo-b128-asym-al4": variant("int8-weight-only", 128, False, 4),
    "int8wo-b32-asym-al0": variant("int8-weight-only", 32, False, 0),
    "int4-experts-int8wo-rest-b32-al4": variant("int8-weight-only", 32, False, 4, experts="int4"),
    "int4-experts-int8wo-rest-b32-al4-f32scales": variant("int8-weight-only", 32, False, 4, experts="int4",
                                                          scales={4: "float32"}),
    "int4-experts-int8-rest": {"roles": {r: "int8" for r in DENSE} | {"expert": "int4"}, "block_size": 32,
                               "symmetric": False, "accuracy_level": 4, "scales": {}},
}


def run(name: str, v: dict, checkpoint: Path, target_name: str, out: Path, parity_tokens: int) -> dict:
    from m3edge import checkpoint as ckpt, targets
    from m3edge.export import quantize as q
    from m3edge.export.pipeline import ExportFailed, ExportOptions, export_bundle

    base = targets.load(target_name)
    target = targets.Target.from_dict(base.to_dict() | {"precision": v["roles"]})
    ctx = q.context_of(target)
    chosen = {p: q.WEIGHT_ONLY[(p, ctx)] for p in q.WEIGHT_ONLY_BITS}
    scale_dtype = {str(bits): v["scales"].get(bits, chosen[p].scale_dtype) for p, bits in q.WEIGHT_ONLY_BITS.items()}
    for p, bits in q.WEIGHT_ONLY_BITS.items():
        q.WEIGHT_ONLY[(p, ctx)] = q.WeightOnly(bits, v["block_size"], v["symmetric"], v["accuracy_level"],
                                                 scale_dtype[str(bits)])
    agent, source = ckpt.build_agent(str(checkpoint))
    t0 = time.time()
    try:
        report = export_bundle(agent, source, target, out / name, ROOT / "calibration_data", force=True,
                               opts=ExportOptions(parity_tokens=parity_tokens, allow_accuracy_drop=True))
    except ExportFailed as e:
        report = e.report
    finally:  # the next variant (and anything else in this process) starts from the chosen settings
        q.WEIGHT_ONLY.update({(p, ctx): s for p, s in chosen.items()})
    e2e = report["end_to_end"]
    acc_path = out / name / "reports" / "accuracy.json"
    acc = json.loads(acc_path.read_text()) if acc_path.is_file() else {}
    return {"variant": name,
            **{k: v[k] for k in ("roles", "block_size", "symmetric", "accuracy_level")}, "scale_dtype": scale_dtype,
            "passed": e2e["passed"], "bits_per_byte_increase": e2e["bits_per_byte_increase"],
            "top1_agreement": e2e["top1_agreement"], "routing_agreement": e2e["routing_agreement"],
            "weights_bytes": acc.get("weights_bytes"), "fp32_weights_bytes": acc.get("fp32_weights_bytes"),
            "gates": report["gates"], "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "small"))
    ap.add_argument("--target", default="rpi5")
    ap.add_argument("--out", default=str(ROOT / "runs" / "weight-only"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--parity-tokens", type=int, default=2048)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.variants.split(","):
        if name not in VARIANTS:
            sys.exit(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})")
        rows.append(run(name, VARIANTS[name], Path(a.checkpoint), a.target, out, a.parity_tokens))
        print(json.dumps(rows[-1]), flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
