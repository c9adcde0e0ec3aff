import json

import pytest

from m3edge import bundle
from m3edge.errors import BadInput


def make(root, files):
    root.mkdir()
    entries = []
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        entries.append(bundle.file_entry(root, rel))
    m = {"schema_version": bundle.SCHEMA_VERSION, "format": bundle.FORMAT, "graphs": [], "files": entries,
         "model_config": {}, "target": {}, "routing": {}}
    (root / "manifest.json").write_text(bundle.dumps(m))
    return m


def test_open_verifies_every_file(tmp_path):
    make(tmp_path / "b", {"graphs/a.onnx": b"abc", "reports/parity.json": b"{}"})
    assert bundle.open_bundle(tmp_path / "b").manifest["files"][0]["bytes"] == 3
    (tmp_path / "b" / "graphs" / "a.onnx").write_bytes(b"abd")
    with pytest.raises(BadInput, match="a.onnx: sha256 does not match"):
        bundle.open_bundle(tmp_path / "b")
    (tmp_path / "b" / "graphs" / "a.onnx").unlink()
    with pytest.raises(BadInput, match="missing"):
        bundle.open_bundle(tmp_path / "b")


@pytest.mark.parametrize("rel", ["../outside", "/etc/passwd", "graphs/../../x"])
def test_paths_must_stay_inside(tmp_path, rel):
    m = make(tmp_path / "b", {})
    m["files"] = [{"path": rel, "sha256": "0" * 64, "bytes": 0}]
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BadInput, match="leaves the bundle"):
        bundle.open_bundle(tmp_path / "b")


def test_bad_manifests(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        bundle.open_bundle(tmp_path / "none")
    (tmp_path / "e").mkdir()
    with pytest.raises(BadInput, match="not an m3edge bundle"):
        bundle.open_bundle(tmp_path / "e")
    (tmp_path / "e" / "manifest.json").write_text("{")
    with pytest.raises(BadInput, match="not valid JSON"):
        bundle.open_bundle(tmp_path / "e")
    m = make(tmp_path / "v", {})
    m["schema_version"] = 99
    (tmp_path / "v" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BadInput, match="schema_version"):
        bundle.open_bundle(tmp_path / "v")


def test_staging_is_atomic(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with bundle.staging(out, force=False) as tmp:
            (tmp / "manifest.json").write_text("{}")
            raise RuntimeError("crash midway")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temp left
    with bundle.staging(out, force=False) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert (out / "manifest.json").is_file()
    with pytest.raises(BadInput, match="--force"):
        with bundle.staging(out, force=False):
            pass
    with bundle.staging(out, force=True) as tmp:
        (tmp / "manifest.json").write_text("{\"v\": 2}")
    assert (out / "manifest.json").read_text() == "{\"v\": 2}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="not an m3edge bundle"):
        with bundle.staging(tmp_path / "docs", force=True):
            pass
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"
