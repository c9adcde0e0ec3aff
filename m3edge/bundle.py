"""The bundle: what export writes and the runtime reads. Stdlib only.

    bundle/manifest.json   schema, versions, model config, resolved target, routing, graphs, files
    bundle/graphs/<stem>.weights              one per module (layer0/expert_07, encoder, ...): its tensors,
                                              shared by its buckets (and read by its layer's expert bank)
    bundle/graphs/<kind>.b<bucket>.<sha>.onnx one static graph, named by its content: the 64 experts of a
                                              kind share one file per bucket, each runs it on its own weights
    bundle/reports/...     parity.json, calibration.json, accuracy.json

An ONNX graph names its external data ``weights`` (a bank: ``weights.0`` .. one per expert), not a path:
the runtime reads the module's weights file, checks its sha256 and hands those very bytes to onnxruntime
(``add_external_initializers_from_files_in_memory``), so what runs is what was verified, and one graph
file serves every module of the same structure. Schema 2 stored one graph file per (module, bucket),
3.5 kB each in INT8 against a small expert's 20 kB of weights.

On disk, ``graphs`` holds one entry per module with its buckets, and a graph file's ports live with the
file (static shapes are the file's own); ``read_manifest`` expands them to one entry per (module, bucket)
with path, sha256, bytes, inputs and outputs, which is what everything else reads. Schema 2 bundles
(one graph file per module and bucket, each naming its weights file) are refused with a message to
re-export: their graphs cannot be loaded from checked bytes.

Paths are relative and must stay inside the bundle. ``open_bundle`` checks every file's sha256 before
anything is loaded and refuses the bundle on the first mismatch, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from m3edge.atomic import atomic_dir
from m3edge.errors import BadInput
from m3edge.manifest import Manifest

SCHEMA_VERSION = 3  # 2: expert banks (role "bank", a list of weights files); 3: shared graph files
READS = (3,)  # a schema 2 graph names its weights file itself: re-export (the message says so)
FORMAT = "m3edge-bundle"
MANIFEST = "manifest.json"


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
    """The one JSON encoding for bundle files: sorted keys, so equal inputs give equal bytes; a list or
    object of scalars on one line (a 64 x 64 transition table is 64 lines, not 4096)."""
    def enc(o, pad: str) -> str:
        flat = lambda xs: all(not isinstance(x, (dict, list)) for x in xs)  # noqa: E731
        if isinstance(o, dict) and o and not flat(o.values()):
            inner = pad + " "
            return "{\n" + ",\n".join(f"{inner}{json.dumps(k)}: {enc(o[k], inner)}" for k in sorted(o)) + f"\n{pad}}}"
        if isinstance(o, list) and o and not flat(o):
            inner = pad + " "
            return "[\n" + ",\n".join(inner + enc(x, inner) for x in o) + f"\n{pad}]"
        return json.dumps(o, sort_keys=True)

    return enc(obj, "") + "\n"


MODULE_KEYS = ("role", "layer", "expert", "memory_type", "precision", "backend", "weights")
PORT_KEYS = ("inputs", "outputs")


def pack(entries: list[dict], files: list[dict]) -> tuple[list[dict], dict, list[dict]]:
    """Per-(module, bucket) entries -> the manifest's on-disk form (modules, graph sets, files).

    A graph set maps each bucket to its graph; modules of one kind that run the same graph files name one
    set (the 64 experts of a kind: one set, not 64 copies of five paths). A set is named after the
    entries' ``kind``, numbered if another set of that kind differs. A graph file with one signature
    carries its ports in its files record; a .tflite file's signatures keep theirs in the set."""
    modules: dict[tuple, dict] = {}
    buckets: dict[tuple, dict] = {}
    ports: dict[str, dict] = {}
    for e in entries:
        key = (e["role"], e["layer"], e["expert"])
        modules.setdefault(key, {k: e.get(k) for k in MODULE_KEYS} | {"kind": e.get("kind") or e["role"]})
        if e.get("signature"):
            item = {"path": e["path"], "signature": e["signature"]} | {k: e[k] for k in PORT_KEYS}
        else:
            item = e["path"]
            ports[e["path"]] = {k: e[k] for k in PORT_KEYS}
        buckets.setdefault(key, {})[str(e["bucket"])] = item
    sets: dict[str, dict] = {}
    for key, m in modules.items():
        kind = m.pop("kind")
        name = next((n for n, b in sets.items() if n.split("#")[0] == kind and b == buckets[key]), None)
        if name is None:
            name = kind if kind not in sets else f"{kind}#{sum(n.split('#')[0] == kind for n in sets)}"
            sets[name] = buckets[key]
        m["graphs"] = name
    return list(modules.values()), sets, [f | ports.get(f["path"], {}) for f in files]


WEIGHTS = "weights"  # what an ONNX graph of schema 3 calls its external data


def data_files(entry: dict) -> list[tuple[str, str]]:
    """(name the graph's external data goes by, bundle path) for each weights file an entry reads."""
    rels = weights_files(entry)
    if isinstance(entry.get("weights"), list):
        return [(f"{WEIGHTS}.{i}", r) for i, r in enumerate(rels)]
    return [(WEIGHTS, r) for r in rels]


@dataclass
class GraphFile:
    """One graph as a backend loads it: the model's bytes and its external data, by the names it uses."""
    name: str  # the bundle path, for messages
    model: bytes | None  # None: ``name`` is a file path the backend reads itself
    data: dict[str, bytes]
    key: str = ""  # what tells this module's graph from others sharing the file: graph and weights paths


def graph_file(entry: dict, read) -> GraphFile:
    files = data_files(entry)
    return GraphFile(entry["path"], read(entry["path"]), {n: read(rel) for n, rel in files},
                     "+".join([entry["path"], *(rel for _, rel in files)]))


def safe_path(root: Path, rel: str) -> Path:
    """Resolve a manifest path, refusing absolute paths and anything that escapes the bundle."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not rel:
        raise BadInput(f"{root / MANIFEST}: path {rel!r} leaves the bundle")
    p = (root / pure).resolve()
    if root.resolve() not in p.parents:
        raise BadInput(f"{root / MANIFEST}: path {rel!r} leaves the bundle")
    return p


RACY_NS = 2_000_000_000  # a file changed this recently before it was hashed is hashed again on every read


@dataclass
class Bundle:
    """An opened bundle: its folder and its manifest (one entry per graph and bucket); reads are sha256-checked."""

    root: Path
    manifest: dict  # as read, ``graphs`` expanded per (module, bucket)
    spec: Manifest | None = None  # the same, typed and validated; what new code reads

    def __post_init__(self):
        self._index = {(g["role"], g["bucket"], g["layer"], g["expert"]): g for g in self.manifest["graphs"]}
        self._files = {f["path"]: f for f in self.manifest["files"]}
        self._graphs: dict[str, bytes] = {}  # ONNX graph files, shared by many modules: read and checked once
        self._paths: dict[str, Path] = {}
        self._unchanged: dict[str, tuple] = {}  # path -> stat signature of the file when its sha256 matched

    def read(self, rel: str) -> bytes:
        """A listed file's bytes, checked against the manifest's sha256: files are read long after open (cache
        misses), and the bytes checked are the bytes that run.

        Hashing is skipped where the file provably has not changed since it was hashed, as git's index does:
        same inode, size, mtime and ctime, and it was last changed well before that hash (a change within the
        filesystem's timestamp granularity of the hash could leave both times equal). On the small reference
        this halves the cost of an expert cache miss."""
        if rel in self._graphs:
            return self._graphs[rel]
        p = self.path(rel)
        f = self._files.get(rel)
        if f is None:
            raise BadInput(f"{p}: not listed in the manifest")
        t0 = time.time_ns()
        try:
            with open(p, "rb") as fh:
                data = fh.read()
                st = os.fstat(fh.fileno())  # after the read: a write during it moves ctime past the record
        except OSError:
            data = None
        if data is None:
            raise BadInput(f"{p}: sha256 does not match the manifest (changed since the bundle was opened)")
        self._check(rel, p, f, data, st, t0)
        if rel.endswith(".onnx"):  # structure only; a .tflite holds its module's weights: the cache's to drop
            self._graphs[rel] = data
        return data

    def map(self, rel: str) -> memoryview:
        """A listed file memory-mapped read-only, checked against the manifest's sha256 like ``read`` (hashed
        once while the file provably has not changed). Its pages are read when first touched. Export writes
        every file anew (new inode), so a mapping keeps the bytes that were checked."""
        import mmap

        p = self.path(rel)
        f = self._files.get(rel)
        if f is None:
            raise BadInput(f"{p}: not listed in the manifest")
        t0 = time.time_ns()
        try:
            with open(p, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)) if st.st_size else memoryview(b"")
        except (OSError, ValueError):
            raise BadInput(f"{p}: cannot be mapped") from None
        self._check(rel, p, f, data, st, t0)
        return data

    def _check(self, rel: str, p: Path, f: dict, data, st, t0: int) -> None:
        """``data`` (read or mapped from ``p`` at ``t0``, whose fstat is ``st``) against the manifest's record
        ``f``; the hash is skipped when the file provably has not changed since it was last hashed."""
        sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self._unchanged.get(rel) == sig and len(data) == f["bytes"]:
            return
        if len(data) != f["bytes"] or hashlib.sha256(data).hexdigest() != f["sha256"]:
            self._unchanged.pop(rel, None)
            raise BadInput(f"{p}: sha256 does not match the manifest (changed since the bundle was opened)")
        if max(st.st_mtime_ns, st.st_ctime_ns) < t0 - RACY_NS:
            self._unchanged[rel] = sig

    def graph_file(self, entry: dict) -> GraphFile:
        """An entry's graph and weights bytes, checked, as a backend loads them."""
        return graph_file(entry, self.read)

    @property
    def graphs(self) -> list[dict]:
        return self.manifest["graphs"]

    def path(self, rel: str) -> Path:
        """The file a manifest path names, refused if it leaves the bundle."""
        # Resolved once per path: a cache miss reads a file, and resolving costs more than reading 25 kB.
        # What is read is still checked against the manifest's sha256 every time.
        p = self._paths.get(rel)
        if p is None:
            p = self._paths[rel] = safe_path(self.root, rel)
        return p

    def find(self, role: str, bucket: int, layer: int | None = None, expert: int | None = None) -> dict:
        """The manifest entry of one module at one bucket (KeyError if the bundle has none)."""
        return self._index[(role, bucket, layer, expert)]

    def report(self, name: str) -> dict | None:
        """``reports/<name>.json`` (parity, accuracy, calibration), or None when the export wrote none."""
        p = self.root / "reports" / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else None


def weights_files(entry: dict) -> list[str]:
    w = entry.get("weights")
    return list(w) if isinstance(w, list) else [w] if w else []


def entry_files(entries) -> set[str]:
    """Every file some graph entries read, once each: ONNX buckets share a weights file, TFLite buckets are
    signatures of one file, a bank reads its experts' weights files."""
    return {f for e in entries for f in (e["path"], *weights_files(e))}


def _check_paths(m, mpath: Path) -> None:
    """Before anything else: a path that leaves the bundle is refused as that, whatever else is wrong."""
    files = m.get("files") if isinstance(m, dict) else None
    for f in files if isinstance(files, list) else ():
        if isinstance(f, dict) and isinstance(f.get("path"), str):
            safe_path(mpath.parent, f["path"])


def read_manifest(root: str | Path) -> tuple[dict, Manifest]:
    """The manifest as read (its ``graphs`` expanded to one entry per module and bucket) and as typed data."""
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
    _check_paths(m, mpath)
    try:
        spec = Manifest.from_dict(m, mpath)  # every field, typed and validated (m3edge/manifest.py)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a check the validator lacks: still one line
        raise BadInput(f"{mpath}: malformed manifest ({type(e).__name__}: {e})") from None
    m["graphs"] = spec.entries()
    return m, spec


def open_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Read the manifest and (by default) check every listed file's size and sha256."""
    root = Path(root)
    m, spec = read_manifest(root)
    if verify:
        for f in m["files"]:
            p = safe_path(root, f["path"])
            if not p.is_file():
                raise BadInput(f"{p}: listed in the manifest but missing")
            if p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
                raise BadInput(f"{p}: sha256 does not match the manifest (corrupt or modified)")
        # A file nobody listed could still be read (an ONNX file names its external data itself, a TensorRT
        # engine cache would run an engine built from other weights): refuse it. No directory is exempt.
        listed = {f["path"] for f in m["files"]} | {MANIFEST}
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if not p.is_dir() and rel not in listed:
                raise BadInput(f"{p}: not listed in the manifest (an m3edge bundle holds only listed files)")
    return Bundle(root, m, spec)


def is_bundle(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def staging(out: Path, force: bool):
    """A temporary folder beside ``out``, renamed into place on success (see ``m3edge.atomic``)."""
    return atomic_dir(out, force, is_bundle, "m3edge bundle")
