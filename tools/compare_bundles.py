"""Export every target profile at two commits and compare every bundle file's sha256 (issue 18's done-when).

    python tools/compare_bundles.py --base f2c2f18 [--work runs/compare] [--only host-cpu,rpi5]

The base commit gets its own checkout (``git worktree add --detach``) and its own ``make install``, so each side
runs its own code with the same packages (the pip cache and the local torch file). Where a report quotes a source
path (litert-torch's error when a module is kept fp32), the two checkouts' paths are the only difference; the
script says so (``path_only``) and counts that bundle apart. Each side exports, for every
profile in this checkout's ``targets/*.json``, ``--preset tiny --seed 0``, plus ``--checkpoint checkpoints/small``
for host-cpu and rpi5. Both sides read the same absolute checkpoint and data paths: a manifest records the
checkpoint's resolved path. A side's bundles already on disk are reused (``--fresh`` re-exports them), so the
slow base side can run early and HEAD's later. Exit 0 when every bundle is byte-identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_PROFILES = ("host-cpu", "rpi5")


def sh(cmd: list[str], cwd: Path, log) -> None:
    print("$", " ".join(cmd), file=log, flush=True)
    subprocess.run(cmd, cwd=cwd, check=True, stdout=log, stderr=subprocess.STDOUT)


def checkout(base: str, where: Path, log) -> Path:
    """A checkout of ``base`` with its own venv; made once, reused."""
    if not (where / ".git").exists():
        sh(["git", "worktree", "add", "--detach", str(where), base], ROOT, log)
    if not (where / ".venv" / ".installed").exists():
        sh(["make", "install"], where, log)
    return where


def jobs(targets_dir: Path, only: set[str] | None) -> list[tuple[str, list[str]]]:
    """(bundle name, export arguments) for every profile: tiny everywhere, the small checkpoint where asked."""
    out = []
    for f in sorted(targets_dir.glob("*.json")):
        name = json.loads(f.read_text())["name"]
        if only and name not in only:
            continue
        out.append((f"{name}-tiny", ["--target", name, "--preset", "tiny", "--seed", "0"]))
        if name in CHECKPOINT_PROFILES:
            out.append((f"{name}-small", ["--target", name, "--checkpoint", str(ROOT / "checkpoints" / "small")]))
    return out


def export_side(tree: Path, out: Path, todo, fresh: bool, log) -> dict[str, float | str]:
    seconds: dict[str, float | str] = {}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name, args in todo:
        dest = out / name
        if (dest / "manifest.json").is_file() and not fresh:
            continue
        t0 = time.time()
        # --allow-accuracy-drop: a random-init tiny model can miss an INT8 gate (rpi5-tflite's top-1 agreement);
        # the bundle is still written, and what is compared is its bytes. A bundle that passes its gates is the
        # same with or without the flag (the report records a drop as accepted only where one happened).
        cmd = [str(tree / ".venv" / "bin" / "m3edge"), "export", *args, "--data-dir", str(ROOT / "calibration_data"),
               "-o", str(dest), "--force", "--allow-accuracy-drop"]
        print("$", " ".join(cmd), file=log, flush=True)
        r = subprocess.run(cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT, env=env)
        seconds[name] = round(time.time() - t0, 1) if r.returncode == 0 else f"failed (exit {r.returncode})"
        # The commit this bundle was exported at (the summary names it, not whatever HEAD is when comparing).
        (out / f"{name}.commit").write_text(rev(tree) + "\n")
    return seconds


def rev(tree: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    return out.stdout.strip()


def digests(bundle: Path) -> dict[str, str]:
    return {p.relative_to(bundle).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bundle.rglob("*")) if p.is_file()}


def fields(a, b, at: str = "") -> list[str]:
    """Key paths where two JSON values differ (what changed in a manifest whose sha256 differs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [f for k in sorted(set(a) | set(b)) for f in fields(a.get(k), b.get(k), f"{at}.{k}" if at else k)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [f for i, (x, y) in enumerate(zip(a, b)) for f in fields(x, y, f"{at}[{i}]")]
    return [] if a == b else [at or "(root)"]


def path_only(a: Path, b: Path, differ: list[str], roots: tuple[str, ...]) -> bool:
    """Whether every difference is a checkout's path in text that quotes it (litert-torch's converter errors name
    the source file of the module it failed on, and the report keeps the message), and the manifest's size and
    sha256 of those reports. Two checkouts cannot share a path, so this is the most two of them can agree on."""
    def norm(p: Path) -> str:
        text = p.read_text()
        for r in roots:
            text = text.replace(r, "<checkout>")
        return text

    reports = [p for p in differ if p != "manifest.json"]
    if not all(p.endswith(".json") and norm(a / p) == norm(b / p) for p in reports):
        return False
    if "manifest.json" not in differ:
        return True
    ma, mb = (json.loads(norm(x / "manifest.json")) for x in (a, b))
    for side in (ma, mb):
        for f in side["files"]:
            if f["path"] in reports:
                f["sha256"], f["bytes"] = "<report>", 0
    return ma == mb


def compare(a: Path, b: Path) -> tuple[int, list[str]]:
    da, db = digests(a), digests(b)
    diffs = [f"only in {a.parent.name}: {p}" for p in sorted(set(da) - set(db))]
    diffs += [f"only in {b.parent.name}: {p}" for p in sorted(set(db) - set(da))]
    for p in sorted(set(da) & set(db)):
        if da[p] != db[p]:
            changed = ""
            if p.endswith(".json"):
                changed = " (fields: " + ", ".join(fields(json.loads((a / p).read_text()),
                                                          json.loads((b / p).read_text()))[:8]) + ")"
            diffs.append(f"sha256 differs: {p}{changed}")
    return len(da), diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="f2c2f18", help="the commit to compare against")
    # As long as this checkout's path: litert-torch's error text quotes a module's source path and the report
    # keeps its first 300 characters, so paths of equal length truncate alike and differ only in the path itself.
    default_tree = "/tmp/m3edge-base"
    default_tree += "0" * max(0, len(str(ROOT)) - len(default_tree))
    ap.add_argument("--base-tree", default=default_tree, help="where the base checkout lives")
    ap.add_argument("--work", default=str(ROOT / "runs" / "compare"), help="where both sides' bundles go")
    ap.add_argument("--only", help="comma-separated profile names (default: every profile)")
    ap.add_argument("--side", choices=["base", "head", "both", "none"], default="both", help="export only one side")
    ap.add_argument("--fresh", action="store_true", help="re-export bundles already on disk")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    todo = jobs(ROOT / "targets", set(args.only.split(",")) if args.only else None)
    with open(work / "export.log", "a") as log:
        if args.side in ("base", "both"):
            base = checkout(args.base, Path(args.base_tree), log)
            print("base seconds", export_side(base, work / "base", todo, args.fresh, log), flush=True)
        if args.side in ("head", "both"):
            print("head seconds", export_side(ROOT, work / "head", todo, args.fresh, log), flush=True)
    def commits(side: str) -> str:
        stamps = {(work / side / f"{n}.commit").read_text().strip() if (work / side / f"{n}.commit").is_file() else "?"
                  for n, _ in todo}
        return "/".join(sorted(stamps))
    bad, files, quoted = 0, 0, 0
    for name, _ in todo:
        a, b = work / "base" / name, work / "head" / name
        if not (a / "manifest.json").is_file() or not (b / "manifest.json").is_file():
            print(f"{name}: missing on one side")
            bad += 1
            continue
        n, diffs = compare(a, b)
        files += n
        differ = [d.split(": ", 1)[1].split(" (")[0] for d in diffs if d.startswith("sha256 differs")]
        only_paths = diffs and len(differ) == len(diffs) and path_only(a, b, differ, (args.base_tree, str(ROOT)))
        print(f"{name}: {n} files, " + ("identical" if not diffs else f"{len(diffs)} differ"
                                         + (" only in the checkout's path quoted by a report" if only_paths else "")))
        for d in diffs[:10]:
            print("   ", d)
        bad += bool(diffs) and not only_paths
        quoted += bool(only_paths)
    print(f"{commits('base')} vs {commits('head')}: {len(todo)} bundles, {files} files, "
          + (f"{bad} bundle(s) differ" if bad else "every sha256 identical" if not quoted else
             f"every sha256 identical except {quoted} bundle(s) whose reports quote the checkout's path"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
