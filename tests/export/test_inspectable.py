"""Graphs a person can read: every bundle graph named and stamped, and ``m3edge extract``'s self-contained copy
opened by onnx and a plain onnxruntime session with no other file (issue 20, item 5)."""

import hashlib
import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import m3edge
from conftest import run_cli


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_target):
    out = tmp_path_factory.mktemp("inspectable") / "b"
    r = run_cli("export", "--target", tiny_target, "--preset", "tiny", "-o", out, "--parity-tokens", "64", "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_every_bundle_graph_is_named_and_stamped(bundle):
    from m3edge.bundle import open_bundle
    from m3edge.config import preset
    from m3edge.export.inspectable import config_sha256, metadata

    b = open_bundle(bundle)
    files = sorted({g["path"] for g in b.graphs})
    for path in files:
        model = onnx.load(str(bundle / path), load_external_data=False)
        assert (model.producer_name, model.producer_version) == ("m3edge", m3edge.__version__), path
        meta = metadata(model)
        entries = [g for g in b.graphs if g["path"] == path]
        assert meta["role"] == entries[0]["role"] and int(meta["bucket"]) == entries[0]["bucket"], path
        assert meta["precision"] == entries[0]["precision"] and meta["version"] == m3edge.__version__
        assert meta["model_config_sha256"] == config_sha256(preset("tiny").to_dict())
        assert meta["init"] == "random-init preset=tiny seed=0"
        # A shared file names no layer or expert: it is every expert's of its kind.
        assert "layer" not in meta and "expert" not in meta
        names = [n.name for n in model.graph.node]
        assert all(names) and len(set(names)) == len(names), path
        tensors = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
        assert not [t for t in tensors if re.fullmatch(r"t\d+|\d+|onnx::.*", t)], path
    # Names come from the structure alone: the experts of a kind still share one graph file per bucket.
    experts = [g for g in b.graphs if g["role"] == "expert"]
    paths = {}
    for g in experts:
        paths.setdefault((g["memory_type"], g["bucket"]), set()).add(g["path"])
    assert all(len(p) == 1 for p in paths.values()) and len(paths) < len(experts), paths
    # A module's torch names survive the export: the router's gate weight, by its state_dict key.
    router = onnx.load(str(bundle / b.find("router", 1, 0)["path"]), load_external_data=False)
    assert any(t.name.startswith("gate.") for t in router.graph.initializer), [t.name for t in router.graph.initializer]


def test_module_labels_match_the_export_split(tiny_agent):
    from m3edge.export.graphs import split
    from m3edge.export.inspectable import module_label

    for spec in split(tiny_agent, [1], [2], bank_rows=2):
        assert module_label({"role": spec.role, "layer": spec.layer, "expert": spec.expert}) == spec.label


def _feeds(session):
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        shape = [int(d) for d in i.shape]
        feeds[i.name] = (rng.integers(0, 256, shape) if "int64" in i.type else rng.standard_normal(shape)).astype(
            np.int64 if "int64" in i.type else np.float32)
    return feeds


@pytest.mark.parametrize("module,bucket", [("layer0.expert_01", "8"), ("layer0/router", None), ("encoder", None),
                                           ("layer0.experts", None)])
def test_extract_writes_a_graph_that_opens_alone(bundle, tmp_path, module, bucket):
    from m3edge.bundle import open_bundle
    from m3edge.export.inspectable import find_module, metadata
    from m3edge.backends import SessionConfig, open_graph

    alone = tmp_path / "alone"
    alone.mkdir()
    out = alone / "graph.onnx"
    r = run_cli("extract", bundle, module, "-o", out, "--json", *(["--bucket", bucket] if bucket else []))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [p.name for p in alone.iterdir()] == ["graph.onnx"] and res["files"] == [str(out)]
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    b = open_bundle(bundle)
    entry = find_module(b, module, int(bucket) if bucket else None)
    meta = metadata(model)
    assert meta["module"] == module.replace("/", ".") and int(meta["bucket"]) == entry["bucket"]
    assert meta.get("layer") == (None if entry["layer"] is None else str(entry["layer"]))
    assert meta.get("expert") == (None if entry["expert"] is None else str(entry["expert"]))
    assert meta["manifest_sha256"] == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert model.producer_name == "m3edge" and model.producer_version == m3edge.__version__
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # a plain session, the path only
    feeds = _feeds(session)
    got = session.run(None, feeds)
    # The same numbers as the runtime's session on the bundle's graph file and this module's weights.
    ref = open_graph(b.graph_file(entry), entry, SessionConfig(threads=1)).run(*feeds.values())
    for a, e in zip(got, ref):
        assert np.array_equal(a, e)


def test_extract_with_external_data_names_it_after_the_output(bundle, tmp_path):
    out = tmp_path / "expert.onnx"
    r = run_cli("extract", bundle, "layer0.expert_03", "-o", out, "--external-data")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expert.onnx", "expert.onnx.data"]
    assert "expert.onnx.data" in r.stdout
    onnx.checker.check_model(str(out))
    model = onnx.load(str(out))
    assert all(t.raw_data or t.float_data or t.int64_data for t in model.graph.initializer)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, _feeds(session))[0].shape == (2, 16)  # the tiny preset's d_model, bucket 2
    # Written again without --external-data: the stale .data file goes, the graph holds its weights.
    assert run_cli("extract", bundle, "layer0.expert_03", "-o", out).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expert.onnx"]


@pytest.mark.parametrize("args,message", [
    (["layer9.router"], "no module 'layer9.router' (modules: encoder, memory, alignment"),
    (["head", "--bucket", "3"], "head: no bucket 3 (buckets: 1, 8)"),
    (["head", "-o", "x.txt"], "an ONNX graph is written to a .onnx file"),
])
def test_extract_bad_input_is_one_line(bundle, tmp_path, args, message):
    args = args if "-o" in args else [*args, "-o", tmp_path / "x.onnx"]
    r = run_cli("extract", bundle, *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_compact_names_flag_gives_positional_names_still_stamped(tmp_path, tiny_target):
    out = tmp_path / "compact"
    r = run_cli("export", "--target", tiny_target, "--preset", "tiny", "-o", out, "--parity-tokens", "32",
                "--bank-rows", "0", "--compact-names", "--quiet")
    assert r.returncode == 0, r.stderr
    from m3edge.export.inspectable import metadata

    for path in sorted((out / "graphs").glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        assert all(n.name == "" for n in model.graph.node), path
        assert model.producer_version == m3edge.__version__ and metadata(model)["role"], path
    # extract still works on it: the graph opens alone, with the compact names.
    r = run_cli("extract", out, "head", "-o", tmp_path / "head.onnx")
    assert r.returncode == 0, r.stderr
    ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
