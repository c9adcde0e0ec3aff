"""What the full suite measures, built as a user builds it: the checkpoint, the monolithic graph, bundles.

Every builder runs in its own process (``python -m m3edge.bench build ...`` or ``m3edge export``), so its wall
time and peak RSS are the build's own, recorded beside the artefact."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from m3edge.bench.common import ROOT

if TYPE_CHECKING:
    from m3edge.bench.suite import FullConfig, ModelPlan


class Skipped(Exception):
    """An artefact or a row this machine cannot produce; the reason goes into the report."""


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() \
        else Path(path).stat().st_size


def _run_measured(module: str, *args, timeout: int = 7200) -> dict:
    """``python -m MODULE ARGS`` in a fresh process; its wall time and peak RSS (the child's own VmHWM, which
    exec resets: ru_maxrss of a child would carry the parent's size over). Skipped with its last error line
    if it fails."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    try:
        r = subprocess.run([sys.executable, "-m", "m3edge.bench.measured", str(result), module, *map(str, args)],
                           capture_output=True, text=True, timeout=timeout)
        got = json.loads(result.read_text()) if result.stat().st_size else {}
    finally:
        result.unlink(missing_ok=True)
    if r.returncode != 0:
        what = " ".join(map(str, args[:1])) or module
        raise Skipped(f"{what} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return got


def _cli(*args) -> dict:
    """``m3edge ARGS`` as a user runs it, measured."""
    return _run_measured("m3edge.cli", *args)


def _profile(ctx: dict, name: str) -> str:
    """The profile to export for: the built-in one, or a copy with the plan's buckets (a user profile file)."""
    from m3edge import targets

    plan = ctx["plan"]
    if plan.buckets is None:
        return name
    t = targets.load(name)
    d = t.to_dict() | {"name": f"{t.name}-bench", "aliases": [], "token_buckets": list(plan.buckets[0]),
                       "capacity_buckets": list(plan.buckets[1])}
    p = ctx["dir"] / f"{t.name}-bench.json"
    p.write_text(json.dumps(d, indent=1))
    return str(p)


def _checkpoint(ctx: dict) -> Path:
    plan = ctx["plan"]
    if plan.checkpoint:
        p = Path(plan.checkpoint)
        return p if p.is_absolute() or p.exists() else ROOT / p
    import dataclasses

    from m3edge.config import preset

    out = ctx["dir"] / "checkpoint"
    cfg = dataclasses.replace(preset(plan.preset), **plan.overrides)
    if (out / "config.json").is_file() and json.loads((out / "config.json").read_text()) == cfg.to_dict():
        return out  # random init is seeded: the same config gives the same weights
    (ctx["dir"] / "config.json").write_text(cfg.to_json())
    ctx["build"] = _run_measured("m3edge.bench", "build", "checkpoint", ctx["dir"] / "config.json", out,
                                 json.dumps({"preset": plan.preset, "overrides": plan.overrides, "seed": 0}))
    return out


def _weights_sha(checkpoint_dir) -> str | None:
    from m3edge import checkpoint

    try:
        return checkpoint.read_meta(checkpoint_dir)[1]["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _monolithic(ctx: dict) -> Path:
    out = ctx["dir"] / "monolithic" / "agent.onnx"
    parity_file = ctx["dir"] / "monolithic" / "parity.json"
    done = json.loads(parity_file.read_text()) if out.is_file() and parity_file.is_file() \
        and parity_file.stat().st_mtime >= out.stat().st_mtime else {}
    if done and done.get("weights_sha256") == _weights_sha(ctx["artefacts"]["checkpoint"]):
        # exported and checked by an earlier run of this work dir, from these weights (a retrained reference
        # gets a new graph)
        ctx["report"]["monolithic_parity"] = done
        return out
    out.unlink(missing_ok=True)
    ctx["build"] = _run_measured("m3edge.bench", "build", "monolithic", ctx["artefacts"]["checkpoint"], out,
                                 parity_file, ctx["data_dir"], ctx["plan"].parity_tokens)
    ctx["report"]["monolithic_parity"] = json.loads(parity_file.read_text())
    return out


def build_checkpoint(config_file: Path, out: Path, meta: dict) -> None:
    """A seeded random-init checkpoint of a config (what ``m3edge export --preset`` would build)."""
    from m3edge import checkpoint

    agent, _ = checkpoint.build_agent(config_file=config_file, seed=0)
    checkpoint.save(agent, out, meta)


def build_monolithic(checkpoint_dir: Path, out: Path, parity_file: Path, data_dir: Path, tokens: int) -> None:
    """The whole step as one onnx graph (export/monolithic.py) and its parity against torch."""
    from m3edge import checkpoint
    from m3edge.data import load_split
    from m3edge.export.monolithic import export_monolithic, parity

    agent = checkpoint.load(checkpoint_dir)
    if not out.is_file():
        export_monolithic(agent, out)
    report = parity(agent, out, load_split(data_dir, "eval"), n_tokens=tokens)
    parity_file.write_text(json.dumps(report | {"weights_sha256": _weights_sha(checkpoint_dir)}))


def main(argv: list[str]) -> int:
    """``python -m m3edge.bench build checkpoint CONFIG OUT META_JSON | monolithic CKPT OUT PARITY DATA TOKENS``"""
    kind, *rest = argv
    if kind == "checkpoint":
        build_checkpoint(Path(rest[0]), Path(rest[1]), json.loads(rest[2]))
    elif kind == "monolithic":
        build_monolithic(Path(rest[0]), Path(rest[1]), Path(rest[2]), Path(rest[3]), int(rest[4]))
    else:
        print(f"unknown build {kind!r}", file=sys.stderr)
        return 2
    return 0


def _current(bundle_dir: Path, checkpoint_dir) -> bool:
    """Whether a bundle left by an earlier run may be reused: built in this bundle format from these weights.
    Anything else is rebuilt, not measured as if it were this checkpoint's export."""
    from m3edge import bundle

    sha = _weights_sha(checkpoint_dir)
    try:
        m = json.loads((bundle_dir / bundle.MANIFEST).read_text())
        return sha is not None and m.get("schema_version") == bundle.SCHEMA_VERSION \
            and m["source"].get("weights_sha256") == sha
    except (OSError, ValueError, KeyError, TypeError):
        return False


ANY_LITERT = "<any LiteRT profile>"  # a BundleSpec target resolved by litert_target()
INT8_X86 = "int8 (host-cpu)"  # the row of an INT8 bundle exported for this (x86) machine


@dataclass(frozen=True)
class BundleSpec:
    """One bundle the full suite exports and measures: data, so a precision is a line here, not code."""

    key: str  # artefact key; its row's accuracy is reported under key minus "bundle-"
    target: str  # profile name, or ANY_LITERT: the first LiteRT profile this machine can run
    precision: str = "auto"  # m3edge export --precision
    label: str = ""  # the row's precision column (default: ``precision``)
    engine: str = "m3edge-runtime"

    @property
    def row_precision(self) -> str:
        return self.label or self.precision


# fp32 on the host, the Pi's INT8 and weight-only precisions, the Jetson's INT8 router + FP16 rest, LiteRT INT8.
# A precision the export does not build (yet) is skipped with that reason: its row appears when it lands.
BUNDLES = (BundleSpec("bundle-fp32", "host-cpu", label="fp32"),
           BundleSpec("bundle-int8", "rpi5", label="int8"),
           # The same precision laid out for this machine (U8 activations) beside the Pi's (S8): measured no
           # faster on x86 (240 against 256 bytes/s on the seed), so the ARM layout is not what limits INT8 here.
           BundleSpec("bundle-int8-x86", "host-cpu", "int8", label=INT8_X86),
           BundleSpec("bundle-int8-weight-only", "rpi5", "int8-weight-only"),
           BundleSpec("bundle-int4", "rpi5", "int4"),
           BundleSpec("bundle-jetson", "jetson", label="fp16+int8 router"),
           BundleSpec("bundle-litert", ANY_LITERT, label="int8", engine="m3edge-runtime-litert"))


def known_precisions(backend: str) -> tuple:
    """The precisions this checkout's export builds for a backend: what the backend declares."""
    from m3edge import backends

    return tuple(backends.capabilities(backend).precisions)


def _bundle(spec: BundleSpec):
    """``m3edge export`` for a target, as a user runs it. Quantized bundles pass --allow-accuracy-drop: this
    measures speed; the accuracy the export measured is recorded next to the artefact either way."""
    def build(ctx: dict) -> Path:
        from m3edge import targets

        name = litert_target() if spec.target == ANY_LITERT else spec.target
        t = targets.load(name)
        wanted = set(t.precision.values()) if spec.precision == "auto" else {spec.precision}
        unknown = sorted(wanted - set(known_precisions(t.backend)))
        if unknown:
            raise Skipped(f"this export does not build {', '.join(unknown)} for {t.backend}; the row appears once it does")
        out = ctx["dir"] / spec.key
        if not _current(out, ctx["artefacts"]["checkpoint"]):  # missing, or stale: --force replaces it
            ctx["build"] = _cli("export", "--target", _profile(ctx, name), "--checkpoint", ctx["artefacts"]["checkpoint"],
                                "-o", out, "--force", "--allow-accuracy-drop", "--precision", spec.precision)
        acc = out / "reports" / "accuracy.json"
        if acc.is_file():
            a = json.loads(acc.read_text())
            ctx["report"].setdefault("accuracy", {})[ctx["row_key"]] = {
                k: a.get(k) for k in ("passed", "top1_agreement", "routing_agreement", "bits_per_byte_increase")}
        return out
    return build


def litert_target() -> str:
    """The first profile whose backend is tflite, when this machine can run it; else Skipped with the reason."""
    from m3edge import targets

    from m3edge import backends

    litert = backends.get("litert")  # the registry's LiteRT backend, under whatever name profiles give it
    names = [t.name for t in targets.all_targets() if litert.runs(t.backend)]
    if not names:
        raise Skipped("no target profile with a LiteRT (tflite) backend (m3edge targets lists none)")
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError as e:
        raise Skipped(f"ai_edge_litert does not import ({e}); pip install 'm3edge[tflite]'")
    return names[0]


def artefact_builders(bundles=BUNDLES) -> dict:
    return {"checkpoint": _checkpoint, "monolithic": _monolithic} | {b.key: _bundle(b) for b in bundles}


def build_artefacts(plan: ModelPlan, cfg: FullConfig, report: dict, progress=None) -> dict:
    """Every artefact a row needs, built in order; one that cannot be built is ``skipped`` with its reason.
    ``cfg.rebuild`` (what ``make bench`` does) starts from an empty folder; otherwise builders reuse what is
    there (bundles by their manifest, the random-init checkpoint by its config)."""
    d = Path(cfg.work_dir) / plan.name
    if cfg.rebuild and d.exists():
        import shutil

        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    ctx = {"plan": plan, "cfg": cfg, "dir": d, "artefacts": {}, "report": report, "data_dir": cfg.data_dir}
    report["artefacts"] = {}
    for key, build in artefact_builders(cfg.bundles).items():
        ctx["row_key"] = key.removeprefix("bundle-")
        ctx["build"] = None  # set by a builder that ran a measured process; None: reused from an earlier run
        t = time.perf_counter()
        try:
            if key in cfg.skip:
                raise Skipped("not requested in this run's settings")
            if key in plan.skip:
                raise Skipped(plan.skip[key])
            path = build(ctx)
        except Skipped as e:
            report["artefacts"][key] = {"skipped": str(e)}
            if progress:
                progress(f"{plan.name}: {key} skipped: {e}")
            continue
        ctx["artefacts"][key] = path
        report["artefacts"][key] = {"path": str(path), "bytes": _dir_bytes(path), "build_s": time.perf_counter() - t}
        record = d / "builds" / f"{key}.json"  # the build's own figures, kept for a run that reuses it
        if ctx["build"]:
            record.parent.mkdir(exist_ok=True)
            record.write_text(json.dumps(ctx["build"]))
        elif record.is_file():
            ctx["build"] = json.loads(record.read_text()) | {"reused": True}
        if ctx["build"]:  # the build process's own wall time and peak RSS
            report["artefacts"][key] |= {"build_wall_s": ctx["build"]["wall_s"],
                                         "build_peak_rss_mb": ctx["build"]["peak_rss_mb"],
                                         "build_reused": bool(ctx["build"].get("reused"))}
        if progress:
            progress(f"{plan.name}: {key} ready ({report['artefacts'][key]['bytes'] / 1e6:.1f} MB, "
                     f"{report['artefacts'][key]['build_s']:.0f} s)")
    return ctx["artefacts"]
