"""The bundle: what export writes and the runtime reads. Stdlib only.

    bundle/manifest.json   schema, versions, model config, resolved target, routing, graphs, files
    bundle/graphs/...      one ONNX file per (graph, bucket); weights shared by a module's buckets (and by
                           a layer's expert bank, which reads its experts' weights files)
    bundle/reports/...     parity.json (and, later, calibration.json, accuracy.json)

Paths are relative and must stay inside the bundle. ``open_bundle`` checks every file's sha256 before
anything is loaded and refuses the bundle on the first mismatch, naming the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from m3edge.atomic import atomic_dir
from m3edge.errors import BadInput

SCHEMA_VERSION = 2  # 2: expert banks (role "bank", a list of weights files)
READS = (1, 2)  # a version 1 bundle is a version 2 bundle without banks
FORMAT = "m3edge-bundle"
MANIFEST = "manifest.json"
ENGINE_CACHE = "trt_engines"  # TensorRT writes its engines here on the device; not part of the bundle
ROLES = ("encoder", "memory", "alignment", "router", "expert", "bank", "head")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(root: Path, rel: str) -> dict:
    p = root / rel
    return {"path": rel, "sha256": sha256_file(p), "bytes": p.stat().st_size}


def dumps(obj) -> str:
    """The one JSON encoding for bundle files: sorted keys, so equal inputs give equal bytes."""
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


def safe_path(root: Path, rel: str) -> Path:
    """Resolve a manifest path, refusing absolute paths and anything that escapes the bundle."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not rel:
        raise BadInput(f"{root / MANIFEST}: path {rel!r} leaves the bundle")
    p = (root / pure).resolve()
    if root.resolve() not in p.parents:
        raise BadInput(f"{root / MANIFEST}: path {rel!r} leaves the bundle")
    return p


@dataclass
class Bundle:
    root: Path
    manifest: dict

    def __post_init__(self):
        self._index = {(g["role"], g["bucket"], g["layer"], g["expert"]): g for g in self.manifest["graphs"]}
        self._files = {f["path"]: f for f in self.manifest["files"]}

    def verified(self, rel: str) -> Path:
        """The path of a listed file, its sha256 checked now: files are read long after open (cache
        misses), and what is on disk then is what runs."""
        p = self.path(rel)
        f = self._files.get(rel)
        if f is None:
            raise BadInput(f"{p}: not listed in the manifest")
        try:
            ok = p.stat().st_size == f["bytes"] and sha256_file(p) == f["sha256"]
        except OSError:
            ok = False
        if not ok:
            raise BadInput(f"{p}: sha256 does not match the manifest (changed since the bundle was opened)")
        return p

    @property
    def graphs(self) -> list[dict]:
        return self.manifest["graphs"]

    def path(self, rel: str) -> Path:
        return safe_path(self.root, rel)

    def find(self, role: str, bucket: int, layer: int | None = None, expert: int | None = None) -> dict:
        return self._index[(role, bucket, layer, expert)]

    def report(self, name: str) -> dict | None:
        p = self.root / "reports" / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else None


def _listed_weights(g: dict, listed: set) -> bool:
    """A graph's weights: none or one listed file; a bank's, a list of listed files (its experts')."""
    weights = g.get("weights")
    if g["role"] == "bank":
        return isinstance(weights, list) and bool(weights) and all(isinstance(w, str) and w in listed for w in weights)
    return weights is None or (isinstance(weights, str) and weights in listed)


def weights_files(entry: dict) -> list[str]:
    w = entry.get("weights")
    return list(w) if isinstance(w, list) else [w] if w else []


def entry_files(entries) -> set[str]:
    """Every file some graph entries read, once each: ONNX buckets share a weights file, TFLite buckets are
    signatures of one file, a bank reads its experts' weights files."""
    return {f for e in entries for f in (e["path"], *weights_files(e))}


def _check_entries(m: dict, mpath: Path) -> None:
    """Types of every file and graph entry, and every graph the model and buckets imply."""
    from m3edge.config import ModelConfig

    def bad(msg):
        raise BadInput(f"{mpath}: {msg}")

    for f in m["files"]:
        if not (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("bytes"), int)
                and isinstance(f.get("sha256"), str) and len(f["sha256"]) == 64):
            bad(f"malformed files entry {json.dumps(f)[:80]}")
        safe_path(mpath.parent, f["path"])
    listed = {f["path"] for f in m["files"]}
    have = set()
    for g in m["graphs"]:
        if not (isinstance(g, dict) and g.get("role") in ROLES and isinstance(g.get("bucket"), int)
                and isinstance(g.get("path"), str) and g["path"] in listed and _listed_weights(g, listed)
                and all(isinstance(g.get(k), (int, type(None))) for k in ("layer", "expert"))):
            bad(f"malformed or unlisted graph entry {json.dumps(g)[:80]}")
        have.add((g["role"], g["bucket"], g["layer"], g["expert"]))
    cfg = ModelConfig.from_dict(m["model_config"], f"{mpath} model_config")
    r = m["routing"]
    need = {(role, b, None, None) for role in ("encoder", "memory", "alignment", "head") for b in r["token_buckets"]}
    need |= {("router", b, layer, None) for layer in range(cfg.n_layers) for b in r["token_buckets"]}
    need |= {("expert", b, layer, e) for layer in range(cfg.n_layers) for e in range(cfg.n_experts)
             for b in r["capacity_buckets"]}
    for g in m["graphs"]:
        if g["role"] == "bank" and (g["layer"] not in range(cfg.n_layers) or len(g["weights"]) != cfg.n_experts):
            bad(f"bank {g['path']} does not fit the model ({cfg.n_layers} layers of {cfg.n_experts} experts)")
    missing = sorted(need - have, key=str)
    if missing:
        role, bucket, layer, expert = missing[0]
        bad(f"incomplete bundle: no {role} graph for layer {layer}, expert {expert}, bucket {bucket}")


def read_manifest(root: str | Path) -> dict:
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: bundle directory not found")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BadInput(f"{mpath}: missing (not an m3edge bundle)")
    try:
        m = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BadInput(f"{mpath}: not an {FORMAT} manifest")
    if m.get("schema_version") not in READS:
        raise BadInput(f"{mpath}: schema_version {m.get('schema_version')!r}, this m3edge reads "
                       f"{' and '.join(map(str, READS))}")
    for key in ("graphs", "files", "model_config", "target", "routing"):
        if key not in m:
            raise BadInput(f"{mpath}: missing key {key!r}")
    try:
        _check_entries(m, mpath)
    except (KeyError, TypeError) as e:
        raise BadInput(f"{mpath}: malformed manifest ({type(e).__name__}: {e})") from None
    return m


def open_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Read the manifest and (by default) check every listed file's size and sha256."""
    root = Path(root)
    m = read_manifest(root)
    if verify:
        for f in m["files"]:
            p = safe_path(root, f["path"])
            if not p.is_file():
                raise BadInput(f"{p}: listed in the manifest but missing")
            if p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
                raise BadInput(f"{p}: sha256 does not match the manifest (corrupt or modified)")
        # A file nobody listed could still be read (an ONNX file names its external data itself): refuse it.
        listed = {f["path"] for f in m["files"]} | {MANIFEST}
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and rel not in listed and not rel.startswith(ENGINE_CACHE + "/"):
                raise BadInput(f"{p}: not listed in the manifest (an m3edge bundle holds only listed files)")
    return Bundle(root, m)


def is_bundle(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def staging(out: Path, force: bool):
    """A temporary folder beside ``out``, renamed into place on success (see ``m3edge.atomic``)."""
    return atomic_dir(out, force, is_bundle, "m3edge bundle")
