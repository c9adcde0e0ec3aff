"""Target profiles: the shipped files, the loader and every kind of schema error."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

import m3edge.targets as targets
from m3edge.errors import BadInput
from m3edge.targets.schema import FIELDS, ROLES, validate

EXPECTED = {"jetson-orin-nano", "jetson-agx-orin", "rpi5", "rpi5-int4", "rpi5-tflite", "rpi4", "host-cpu"}


def good() -> dict:
    return targets.load("rpi5").to_dict()


def test_shipped_profiles_load_and_validate():
    assert set(targets.names()) == EXPECTED
    assert targets.names() == sorted(targets.names())
    for t in targets.all_targets():
        d = t.to_dict()
        assert list(d) == list(FIELDS)  # Target mirrors the schema, in order
        validate(d, t.name)
        assert targets.Target.from_dict(d) == t
        assert json.loads(json.dumps(d)) == d
        assert t.backend in ("onnxruntime", "tflite") and t.opset >= 13 and t.sources
        if t.backend == "onnxruntime":  # LiteRT takes no ORT providers
            assert t.providers[-1]["name"] == "CPUExecutionProvider"
        assert t.threads <= t.cores


def test_target_fields_match_schema_keys():
    assert [f.name for f in dataclasses.fields(targets.Target)] == list(FIELDS)


def test_published_figures():
    by = {t.name: t for t in targets.all_targets()}
    assert (by["jetson-orin-nano"].cores, by["jetson-orin-nano"].dram_bandwidth_gbps) == (6, 68)
    assert (by["jetson-agx-orin"].cores, by["jetson-agx-orin"].dram_bandwidth_gbps) == (12, 204.8)
    assert (by["rpi5"].cores, by["rpi5"].dram_bandwidth_gbps) == (4, 17)
    assert (by["rpi4"].cores, by["rpi4"].dram_bandwidth_gbps) == (4, 12)
    assert by["host-cpu"].arch == "x86_64" and by["host-cpu"].threads == 2
    assert set(by["host-cpu"].precision.values()) == {"fp32"}
    # ONNX Pi profiles: INT8 everywhere, router included (float MatMul/Gemm outputs, measured in the
    # descriptions). rpi5-tflite keeps its router fp32 until its PT2E router is measured.
    # Jetson: FP16 everywhere, INT8 router (TensorRT Q/DQ placement, measured in the description).
    for name in ("rpi5", "rpi4"):
        assert set(by[name].precision.values()) == {"int8"}
    # rpi5-int4: INT4 experts, INT8 weight-only dense graphs (INT4 everywhere misses the gates on small).
    assert by["rpi5-int4"].precision == {"encoder": "int8-weight-only", "alignment": "int8-weight-only",
                                         "router": "int8-weight-only", "expert": "int4", "head": "int8-weight-only"}
    p = by["rpi5-tflite"].precision
    assert p["router"] == "fp32" and {p[r] for r in ROLES if r != "router"} == {"int8"}
    for name in ("jetson-orin-nano", "jetson-agx-orin"):
        p = by[name].precision
        assert p["router"] == "int8" and {p[r] for r in ROLES if r != "router"} == {"fp16"}


def test_aliases_resolve():
    assert targets.aliases() == {"jetson": "jetson-orin-nano", "rpi": "rpi5", "rpi-tflite": "rpi5-tflite",
                                 "rpi-int4": "rpi5-int4"}
    assert targets.load("jetson") == targets.load("jetson-orin-nano")
    assert targets.load("rpi").name == "rpi5"
    # No alias may shadow another profile's name.
    assert not set(targets.aliases()) & set(targets.names())


def test_jetson_providers_tensorrt_cuda_cpu_with_fp16():
    for name in ("jetson", "jetson-agx-orin"):
        t = targets.load(name)
        assert [p["name"] for p in t.providers] == [
            "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        trt = t.providers[0]["options"]
        assert trt["trt_fp16_enable"] is True
        assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"]
        assert trt["static_shape_profiles"] is True


def test_pi_and_host_are_cpu_only():
    for name in ("rpi5", "rpi4", "host-cpu"):
        assert [p["name"] for p in targets.load(name).providers] == ["CPUExecutionProvider"]


def test_ort_providers_fill_static_profiles_and_drop_runtime_keys(tmp_path):
    provs = targets.load("jetson").ort_providers({"x": (1, 16, 64), "bias": [64]}, cache_dir=tmp_path)
    name, opts = provs[0]
    assert name == "TensorrtExecutionProvider"
    assert "static_shape_profiles" not in opts
    for k in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
        assert opts[k] == "x:1x16x64,bias:64"
    assert opts["trt_engine_cache_path"].startswith(str(tmp_path))
    assert [p[0] for p in provs[1:]] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # Without shapes nothing is invented; the profile's own data is not changed.
    assert "trt_profile_min_shapes" not in targets.load("jetson").ort_providers()[0][1]
    assert targets.load("rpi").ort_providers() == [("CPUExecutionProvider", {})]


def test_target_is_frozen_and_isolated():
    d = good()
    t = targets.Target.from_dict(d)
    d["precision"]["expert"] = "fp32"
    assert t.precision["expert"] == "int8"
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.threads = 1  # type: ignore[misc]
    t.to_dict()["precision"]["expert"] = "fp32"
    assert t.precision["expert"] == "int8"


def test_user_profile_file_loads(tmp_path):
    d = good()
    d.update(name="my-board", aliases=[], threads=3, cores=4)
    path = tmp_path / "my-board.json"
    path.write_text(json.dumps(d))
    t = targets.load(str(path))
    assert (t.name, t.threads) == ("my-board", 3)
    assert targets.load(path) == t  # a Path works too
    # Any existing file counts as a profile path, whatever its suffix.
    other = tmp_path / "board.profile"
    other.write_text(json.dumps(d))
    assert targets.load(str(other)) == t


def test_unknown_name_lists_valid_targets():
    with pytest.raises(BadInput) as e:
        targets.load("jetsn")
    msg = str(e.value)
    assert "jetsn" in msg and "\n" not in msg
    for name in EXPECTED | {"jetson", "rpi"}:
        assert name in msg


def test_missing_file(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        targets.load(str(tmp_path / "nope.json"))


def test_not_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(BadInput) as e:
        targets.load(str(path))
    assert "broken.json" in str(e.value) and "JSON" in str(e.value)


def test_invalid_user_file_names_file_and_key(tmp_path):
    d = good()
    d["backend"] = "tensorflow"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(BadInput) as e:
        targets.load(str(path))
    assert "bad.json" in str(e.value) and "'backend'" in str(e.value)


def _mut(fn):
    d = good()
    fn(d)
    return d


CASES = [
    ("missing key", lambda d: d.pop("threads"), "threads"),
    ("unknown key", lambda d: d.update(gpu="yes"), "gpu"),
    ("wrong type int", lambda d: d.update(cores="4"), "cores"),
    ("bool is not int", lambda d: d.update(threads=True), "threads"),
    ("float is not int", lambda d: d.update(expert_cache_size=4.0), "expert_cache_size"),
    ("non-positive int", lambda d: d.update(threads=0), "threads"),
    ("wrong type number", lambda d: d.update(ram_gb="8"), "ram_gb"),
    ("negative number", lambda d: d.update(dram_bandwidth_gbps=-1), "dram_bandwidth_gbps"),
    ("bad backend", lambda d: d.update(backend="tensorflow"), "backend"),
    ("bad arch", lambda d: d.update(arch="armv7l"), "arch"),
    ("bad schema version", lambda d: d.update(schema_version=2), "schema_version"),
    ("old opset", lambda d: d.update(opset=9), "opset"),
    ("unsorted buckets", lambda d: d.update(token_buckets=[4, 1, 16]), "token_buckets"),
    ("duplicate buckets", lambda d: d.update(capacity_buckets=[1, 4, 4]), "capacity_buckets"),
    ("zero bucket", lambda d: d.update(capacity_buckets=[0, 4]), "capacity_buckets"),
    ("empty buckets", lambda d: d.update(token_buckets=[]), "token_buckets"),
    ("bucket not int", lambda d: d.update(token_buckets=[1, "4"]), "token_buckets"),
    ("bad precision value", lambda d: d["precision"].update(expert="int3"), "precision.expert"),
    ("unknown precision role", lambda d: d["precision"].update(decoder="fp32"), "precision.decoder"),
    ("missing precision role", lambda d: d["precision"].pop("head"), "precision.head"),
    ("precision not object", lambda d: d.update(precision="int8"), "precision"),
    ("providers not list", lambda d: d.update(providers="CPUExecutionProvider"), "providers"),
    ("provider not object", lambda d: d.update(providers=["CPUExecutionProvider"]), "providers[0]"),
    ("provider extra key", lambda d: d["providers"][0].update(priority=1), "providers[0]"),
    ("provider bad name", lambda d: d["providers"][0].update(name="CPU"), "providers[0].name"),
    ("provider twice", lambda d: d["providers"].append(copy.deepcopy(d["providers"][0])), "providers[1].name"),
    ("provider options not object", lambda d: d["providers"][0].update(options=[]), "providers[0].options"),
    ("provider option nested", lambda d: d["providers"][0].update(options={"a": {"b": 1}}),
     "providers[0].options.a"),
    ("no providers", lambda d: d.update(providers=[]), "providers"),
    ("aliases not list", lambda d: d.update(aliases="rpi"), "aliases"),
    ("alias not string", lambda d: d.update(aliases=[5]), "aliases[0]"),
    ("alias is own name", lambda d: d.update(aliases=["rpi5"]), "aliases"),
    ("bad name", lambda d: d.update(name="My Board"), "name"),
    ("empty description", lambda d: d.update(description=""), "description"),
    ("no sources", lambda d: d.update(sources=[]), "sources"),
    ("budget over ram", lambda d: d.update(expert_memory_budget_mb=10**6), "expert_memory_budget_mb"),
]


@pytest.mark.parametrize("label,mutate,key", CASES, ids=[c[0] for c in CASES])
def test_schema_errors_name_the_key(label, mutate, key):
    with pytest.raises(BadInput) as e:
        validate(_mut(mutate), "profile.json")
    msg = str(e.value)
    assert f"'{key}'" in msg, msg
    assert msg.startswith("profile.json: ") and "\n" not in msg


def test_not_an_object():
    with pytest.raises(BadInput, match="JSON object"):
        validate([1, 2], "list.json")


def test_modules_sharing_a_graph_file_get_their_own_tensorrt_engines(tiny_bundle):
    """TensorRT builds weights into its engines: two experts running one graph file on their own weights
    must not find each other's engine in the cache."""
    from m3edge import bundle

    b = bundle.open_bundle(tiny_bundle)
    a, c = (b.find("expert", 2, 0, e) for e in (0, 6))  # experts 0 and 6: same kind, same graph file
    assert a["path"] == c["path"] and a["weights"] != c["weights"]
    jetson = targets.load("jetson")
    prefix = [jetson.ort_providers(None, None, b.graph_file(g).key)[0][1]["trt_engine_cache_prefix"] for g in (a, c)]
    assert prefix[0] != prefix[1] and all(len(p) < 64 and p.isidentifier() for p in prefix)


def test_descriptions_are_one_line_and_notes_live_in_docs():
    """Lab notes belong in docs/targets.md, which has a section per profile; a description is one short line."""
    from conftest import ROOT

    notes = (ROOT / "docs" / "targets.md").read_text()
    for t in targets.all_targets():
        assert "\n" not in t.description and len(t.description) <= 200, t.name
        assert f"## {t.name}\n" in notes, t.name
