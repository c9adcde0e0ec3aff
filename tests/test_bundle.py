import json
import shutil

import pytest

from m3edge import bundle
from m3edge.errors import BadInput


def copy(bundle, tmp_path, name="b"):
    dst = tmp_path / name
    shutil.copytree(bundle, dst)
    return dst


def rewrite(root, change):
    m = json.loads((root / "manifest.json").read_text())
    change(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_open_verifies_every_file(tiny_bundle, tmp_path):
    b = copy(tiny_bundle, tmp_path)
    assert bundle.open_bundle(b).manifest["files"][0]["bytes"] > 0
    rel = bundle.open_bundle(b).find("head", 1)["path"]
    victim = b / rel
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(BadInput, match=f"{rel}: sha256 does not match"):
        bundle.open_bundle(b)
    victim.unlink()
    with pytest.raises(BadInput, match="missing"):
        bundle.open_bundle(b)


def test_files_changed_after_open_are_caught_at_load(tiny_bundle, tmp_path):
    b = bundle.open_bundle(copy(tiny_bundle, tmp_path))
    rel = b.find("expert", 2, 0, 1)["weights"]
    assert b.read(rel) == (b.root / rel).read_bytes()
    (b.root / rel).write_bytes((b.root / rel).read_bytes() + b"\0")
    with pytest.raises(BadInput, match="changed since the bundle was opened"):
        b.read(rel)


def test_unlisted_files_are_refused(tiny_bundle, tmp_path):
    b = copy(tiny_bundle, tmp_path)
    (b / "graphs" / "extra.weights").write_bytes(b"\0" * 64)
    with pytest.raises(BadInput, match="extra.weights: not listed"):
        bundle.open_bundle(b)


@pytest.mark.parametrize("rel", ["../outside", "/etc/passwd", "graphs/../../x"])
def test_paths_must_stay_inside(tiny_bundle, tmp_path, rel):
    b = copy(tiny_bundle, tmp_path)
    rewrite(b, lambda m: m["files"].append({"path": rel, "sha256": "0" * 64, "bytes": 0}))
    with pytest.raises(BadInput, match="leaves the bundle"):
        bundle.open_bundle(b)


def test_malformed_and_incomplete_manifests(tiny_bundle, tmp_path):
    b = copy(tiny_bundle, tmp_path, "a")
    rewrite(b, lambda m: m["files"][0].pop("bytes"))
    with pytest.raises(BadInput, match=r"files\[0\]\.bytes is missing"):
        bundle.open_bundle(b)
    b = copy(tiny_bundle, tmp_path, "c")
    rewrite(b, lambda m: m["graphs"].pop(next(i for i, g in enumerate(m["graphs"]) if g["role"] == "expert")))
    with pytest.raises(BadInput, match="incomplete bundle: no expert graph"):
        bundle.open_bundle(b)


def index(m, role):
    return next(i for i, g in enumerate(m["graphs"]) if g["role"] == role)


@pytest.mark.parametrize("edit, message", [
    # only a bank reads a list of weights files (its experts'); an expert has one
    (lambda m: m["graphs"][index(m, "expert")].update(weights=[m["graphs"][index(m, "expert")]["weights"]]),
     r"graphs\[\d+\]\.weights must be a non-empty string or null"),
    (lambda m: m["graphs"][index(m, "bank")].update(weights="graphs/layer0/expert_00.weights"),
     r"graphs\[\d+\]\.weights must be a non-empty list of weights files"),
    (lambda m: m["graphs"][index(m, "bank")]["weights"].append("graphs/elsewhere.weights"),
     r"graphs\[\d+\]\.weights must be weights files listed in files, got 'graphs/elsewhere.weights'"),
    (lambda m: m["graphs"][index(m, "bank")].update(layer=3), "does not fit the model"),
    (lambda m: m["graphs"][index(m, "bank")]["weights"].pop(), "does not fit the model"),
])
def test_malformed_bank_entries(tiny_bundle, tmp_path, edit, message):
    b = copy(tiny_bundle, tmp_path, "bank")
    rewrite(b, edit)
    with pytest.raises(BadInput, match=message):
        bundle.open_bundle(b)


def test_an_older_bundle_is_refused_with_what_to_do(tiny_bundle, tmp_path):
    b = copy(tiny_bundle, tmp_path, "v2")
    rewrite(b, lambda m: m.update(schema_version=2))
    with pytest.raises(BadInput, match="schema_version 2, this m3edge reads 3 \\(re-export"):
        bundle.open_bundle(b)


def test_experts_of_a_kind_share_graph_files_and_keep_their_own_weights(tiny_bundle):
    b = bundle.open_bundle(tiny_bundle)
    experts = [g for g in b.graphs if g["role"] == "expert" and g["bucket"] == 2]
    kinds = {g["memory_type"] for g in experts}
    # one graph file per kind and bucket, one weights file per expert
    assert len({g["path"] for g in experts}) == len(kinds) < len(experts)
    assert len({g["weights"] for g in experts}) == len(experts)
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert len(m["graphs"]) == len({(g["role"], g["layer"], g["expert"]) for g in b.graphs})
    assert {m2["graphs"] for m2 in m["graphs"] if m2["role"] == "expert"} == {f"expert_{k}" for k in kinds}


def test_a_module_naming_a_missing_graph_set_is_refused(tiny_bundle, tmp_path):
    b = copy(tiny_bundle, tmp_path, "set")
    rewrite(b, lambda m: m["graphs"][index(m, "head")].update(graphs="nowhere"))
    with pytest.raises(BadInput, match=r"graphs\[\d+\]\.graphs must be the name of a graph set, got 'nowhere'"):
        bundle.open_bundle(b)


def test_bad_manifests(tiny_bundle, tmp_path):
    with pytest.raises(BadInput, match="not found"):
        bundle.open_bundle(tmp_path / "none")
    (tmp_path / "e").mkdir()
    with pytest.raises(BadInput, match="not an m3edge bundle"):
        bundle.open_bundle(tmp_path / "e")
    (tmp_path / "e" / "manifest.json").write_text("{")
    with pytest.raises(BadInput, match="not valid JSON"):
        bundle.open_bundle(tmp_path / "e")
    b = copy(tiny_bundle, tmp_path, "v")
    rewrite(b, lambda m: m.update(schema_version=99))
    with pytest.raises(BadInput, match="schema_version"):
        bundle.open_bundle(b)


def test_staging_is_atomic(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with bundle.staging(out, force=False) as tmp:
            (tmp / "manifest.json").write_text("{}")
            raise RuntimeError("crash midway")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temp left
    with bundle.staging(out, force=False) as tmp:
        (tmp / "manifest.json").write_text(json.dumps({"format": bundle.FORMAT, "v": 1}))
    assert (out / "manifest.json").is_file()
    with pytest.raises(BadInput, match="--force"):
        with bundle.staging(out, force=False):
            pass
    with bundle.staging(out, force=True) as tmp:
        (tmp / "manifest.json").write_text(json.dumps({"format": bundle.FORMAT, "v": 2}))
    assert json.loads((out / "manifest.json").read_text())["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    (tmp_path / "docs" / "manifest.json").write_text('{"name": "my browser extension"}')
    with pytest.raises(BadInput, match="not an m3edge bundle"):
        with bundle.staging(tmp_path / "docs", force=True):
            pass
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="not a directory"):
        with bundle.staging(tmp_path / "file", force=True):
            pass


def test_a_file_unchanged_since_it_was_hashed_is_not_hashed_again(tiny_bundle, tmp_path, monkeypatch):
    b = bundle.open_bundle(copy(tiny_bundle, tmp_path))
    rel = b.find("expert", 2, 0, 1)["weights"]
    path = b.root / rel
    hashed = []
    sha256 = bundle.hashlib.sha256
    monkeypatch.setattr(bundle.hashlib, "sha256", lambda data: hashed.append(len(data)) or sha256(data))
    b.read(rel), b.read(rel)
    assert len(hashed) == 2  # just written (a copy): hashed on every read
    monkeypatch.setattr(bundle, "RACY_NS", -10 ** 12)  # as if the copy were made long ago, like a real bundle
    b.read(rel)
    b.read(rel), b.read(rel)
    assert len(hashed) == 3  # hashed once, then trusted by its stat signature
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))  # same size, new ctime
    with pytest.raises(BadInput, match="changed since the bundle was opened"):
        b.read(rel)
