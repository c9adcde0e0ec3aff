"""Where a LiteRT export's time goes: ``m3edge export`` for a tflite profile with every phase timed.

    python -m m3edge.bench litert-profile [--checkpoint checkpoints/small] [--target rpi5-tflite]
                                          [-o bench/results-litert-profile.json]

The export runs as a user runs it (``export_bundle``, the same modules, calibration and validation); wrappers
only time the phases: per module, litert-torch's own progress tasks (``torch.export`` of each signature, the FX
passes, lowering each signature to MLIR, merging, the LiteRT converter passes), the PT2E quantization
(``torch.export`` with a dynamic row dimension, observers, calibration, ``convert_pt2e``), writing the
flatbuffer, reading its ports back, and the per-graph validation; then the end-to-end parity check. The JSON
sums each phase over modules, so the lever is read from the data, not guessed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from m3edge.bench.common import ROOT, machine, peak_rss_mb


class Phases:
    """Seconds per (module, phase); a phase inside another is also counted in its parent."""

    def __init__(self):
        self.module = "(setup)"
        self.seconds: dict = defaultdict(float)
        self.calls: dict = defaultdict(int)

    @contextlib.contextmanager
    def timed(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[self.module, phase] += time.perf_counter() - t
            self.calls[self.module, phase] += 1

    def wrap(self, owner, name: str, phase: str, module_from=None):
        fn = getattr(owner, name)

        def wrapped(*args, **kwargs):
            if module_from is not None:
                self.module = module_from(*args, **kwargs)
            with self.timed(phase):
                return fn(*args, **kwargs)

        setattr(owner, name, wrapped)


def _task_name(name: str) -> str:
    """litert-torch names tasks per signature ("Torch Export: b16"): one phase over all signatures."""
    return "litert: " + re.sub(r":\s*\S+$", "", name)


def ph_calls(ph: Phases, phase: str) -> int:
    return sum(c for (_, q), c in ph.calls.items() if q == phase)


def profile(checkpoint: Path | None, target_name: str, data_dir: Path, parity_tokens: int = 2048,
            config: Path | None = None) -> dict:
    """The profile of one export: of a checkpoint, or of a seeded random init of a model config (a slice of a
    model too big to convert whole, e.g. the seed with 1 layer of 4 experts: its per-module times scale)."""
    import litert_torch.progress as lt_progress

    from m3edge import checkpoint as ckpt
    from m3edge import targets
    from m3edge.backends.litert import export as lexport, tflite
    from m3edge.export import pipeline
    from m3edge.export.pipeline import ExportOptions, export_bundle

    ph = Phases()
    lt_progress.config.show_progress = True  # its tasks run only when shown; the console is muted below
    lt_progress.console.print = lambda *a, **k: None
    task = lt_progress.task

    @contextlib.contextmanager
    def timed_task(name: str):
        with ph.timed(_task_name(name)), task(name):
            yield

    lt_progress.task = timed_task
    spec_label = lambda spec, *a, **k: f"{spec.role}:{spec.label}"  # noqa: E731
    ph.wrap(lexport, "build_tflite", "module total (convert + write + ports)", module_from=spec_label)
    ph.wrap(tflite, "convert", "convert (litert-torch, quantization included)")
    ph.wrap(tflite, "_quantized_program", "pt2e: export + observers + calibration + convert_pt2e")
    ph.wrap(tflite, "port_quant", "read ports back (interpreter per signature)")
    ph.wrap(lexport, "_calibration_rows", "calibration rows")
    ph.wrap(pipeline, "stage_check", "per-graph validation against torch")
    ph.wrap(pipeline, "end_to_end", "end-to-end parity", module_from=lambda *a, **k: "(end to end)")
    target = targets.load(target_name)
    agent, source = ckpt.build_agent(str(checkpoint) if checkpoint else None, None, config, 0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="m3edge-litert-") as tmp:
        export_bundle(agent, source, target, Path(tmp) / "bundle", data_dir, True,
                      ExportOptions(parity_tokens=parity_tokens, allow_accuracy_drop=True))
    total = time.perf_counter() - t0
    by_phase: dict = defaultdict(float)
    for (module, phase), s in ph.seconds.items():
        by_phase[phase] += s
    modules = sorted({m for m, _ in ph.seconds if not m.startswith("(")})
    per_module = {m: ph.seconds[m, "module total (convert + write + ports)"] for m in modules}
    per_kind: dict = defaultdict(list)
    for m, sec in per_module.items():
        per_kind[m.split(":")[0]].append(sec)
    return {"machine": machine(), "checkpoint": str(checkpoint or config), "model_config": agent.cfg.to_dict(),
            "target": target.name, "total_s": total,
            "module_s_by_kind": {k: {"n": len(v), "mean": sum(v) / len(v)} for k, v in per_kind.items()},
            "modules": len(modules) or ph_calls(ph, "convert (litert-torch, quantization included)"),
            "peak_rss_mb": peak_rss_mb(),
            "phases_s": dict(sorted(by_phase.items(), key=lambda kv: -kv[1])),
            "phase_calls": {p: sum(c for (m, q), c in ph.calls.items() if q == p) for p in by_phase},
            "slowest_modules_s": dict(sorted(per_module.items(), key=lambda kv: -kv[1])[:8]),
            "module_s": {"median": sorted(per_module.values())[len(per_module) // 2] if per_module else None,
                         "sum": sum(per_module.values())}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m m3edge.bench litert-profile", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "small")
    ap.add_argument("--config", type=Path, help="a model config JSON to random-init instead of --checkpoint")
    ap.add_argument("--target", default="rpi5-tflite")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "calibration_data")
    ap.add_argument("--parity-tokens", type=int, default=2048)
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "bench" / "results-litert-profile.json")
    a = ap.parse_args(argv)
    res = profile(None if a.config else a.checkpoint, a.target, a.data_dir, a.parity_tokens, a.config)
    res["command"] = "python -m m3edge.bench litert-profile " + " ".join(argv if argv is not None else sys.argv[2:])
    a.output.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("total_s", "modules", "phases_s")}, indent=1))
    return 0
