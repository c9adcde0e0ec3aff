"""What reaches onnxruntime's ``providers=``: only allow-listed options, paths only inside the user's engine cache.

There is no GPU here, so these check the option dicts a session would be given (``SessionConfig.providers_for``,
the very call ``OrtGraph`` makes), for the shipped Jetson profile and for hostile ones.
"""

import copy
import dataclasses
import json
import os

import pytest

from m3edge import targets
from m3edge.errors import BadInput
from m3edge.runtime.engines import checked_providers, default_engine_cache, engine_dir
from m3edge.backends import SessionConfig
from m3edge.targets.schema import GENERATED_OPTIONS, PROVIDER_OPTIONS, RUNTIME_ONLY_OPTIONS

TRT = "TensorrtExecutionProvider"
SHAPES = {"x": (1, 16, 64), "bias": [64]}


def allowed(name):
    return set(PROVIDER_OPTIONS[name]) - set(RUNTIME_ONLY_OPTIONS) | set(GENERATED_OPTIONS.get(name, ()))


@pytest.mark.parametrize("name", ["jetson", "jetson-agx-orin"])
def test_shipped_jetson_profiles_give_only_allowed_options_and_paths_inside_the_cache(tmp_path, name):
    cache = tmp_path / "engines" / "0123456789abcdef"
    provs = SessionConfig(target=targets.load(name), cache_dir=str(cache)).providers_for(SHAPES, "graphs/e.onnx+w")
    assert [p for p, _ in provs] == [TRT, "CUDAExecutionProvider", "CPUExecutionProvider"]
    for prov, opts in provs:
        assert set(opts) <= allowed(prov), (prov, set(opts) - allowed(prov))
    trt = provs[0][1]
    assert trt["trt_engine_cache_path"] == str(cache.resolve() / "trt_engines")
    # A timing cache enabled without a path would go to the working directory: it is placed in the cache too.
    assert trt["trt_timing_cache_path"] == str(cache.resolve())
    assert trt["trt_profile_min_shapes"] == trt["trt_profile_max_shapes"] == "x:1x16x64,bias:64"
    assert trt["trt_engine_cache_prefix"].startswith("m3edge_")
    assert not (cache.exists())  # nothing is created: only TensorRT writes there


def hostile(**options):
    d = targets.load("jetson").to_dict()
    d["providers"][0]["options"].update(options)
    return d


BAD = [
    ("trt_engine_decryption_lib_path", "/tmp/evil.so"),
    ("trt_engine_decryption_enable", True),
    ("trt_ep_context_file_path", "ctx.onnx"),
    ("trt_dump_ep_context_model", True),
    ("trt_int8_calibration_table_name", "calib.flatbuffers"),
    ("trt_extra_plugin_lib_paths", "/tmp/plugin.so"),
    ("trt_engine_cache_prefix", "../x"),  # m3edge's own, from the verified graph: never a profile's
    ("trt_engine_cache_path", "/var/lib/engines"),
    ("trt_engine_cache_path", "../../etc"),
    ("trt_engine_cache_path", "a/../../b"),
    ("trt_timing_cache_path", "~/t"),
    ("trt_fp16_enable", "yes"),
    ("trt_max_workspace_size", -1),
    ("trt_profile_min_shapes", "x:1x2;rm -rf /"),
]


@pytest.mark.parametrize("key,value", BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_a_profile_naming_an_option_off_the_list_or_a_path_outside_is_refused(key, value):
    with pytest.raises(BadInput) as e:
        targets.Target.from_dict(hostile(**{key: value}), "bundle/manifest.json target")
    msg = str(e.value)
    assert msg.startswith("bundle/manifest.json target: ") and key in msg and "\n" not in msg


def test_other_providers_are_allow_listed_too():
    d = targets.load("jetson").to_dict()
    d["providers"][1]["options"]["user_compute_stream"] = "1234"
    with pytest.raises(BadInput, match="user_compute_stream"):
        targets.Target.from_dict(d)
    d = targets.load("rpi5").to_dict()
    d["providers"][0]["options"]["anything"] = 1
    with pytest.raises(BadInput, match="anything.*CPUExecutionProvider|CPUExecutionProvider.*anything"):
        targets.Target.from_dict(d)
    # A provider m3edge knows nothing about may be named, but given no options.
    d["providers"][0]["options"] = {}
    d["providers"].insert(0, {"name": "AclExecutionProvider", "options": {"enable_fast_math": True}})
    with pytest.raises(BadInput, match="enable_fast_math"):
        targets.Target.from_dict(d)


def test_the_session_check_holds_for_options_that_skipped_validation(tmp_path):
    """A Target built without ``from_dict`` or a bare provider list: the final check still refuses."""
    t = targets.load("jetson")
    evil = copy.deepcopy(t.providers[0])
    evil["options"]["trt_engine_decryption_lib_path"] = "/tmp/evil.so"
    bypass = dataclasses.replace(t, providers=(evil,) + t.providers[1:])
    with pytest.raises(BadInput, match="trt_engine_decryption_lib_path"):
        SessionConfig(target=bypass, cache_dir=str(tmp_path)).providers_for(SHAPES, "g")
    with pytest.raises(BadInput, match="trt_engine_decryption_enable"):
        SessionConfig(providers=[(TRT, {"trt_engine_decryption_enable": True})]).providers_for(None)
    with pytest.raises(BadInput, match="not inside the engine cache"):
        checked_providers([(TRT, {"trt_engine_cache_path": "/elsewhere"})], tmp_path)
    ok = [(TRT, {"trt_engine_cache_path": str(tmp_path / "e")}), ("CPUExecutionProvider", {})]
    assert checked_providers(ok, tmp_path) == ok


def test_a_symlink_in_the_cache_cannot_lead_the_engines_out(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", cache / "trt_engines")  # what the profile names, pointing outside
    with pytest.raises(BadInput, match="outside the engine cache"):
        targets.load("jetson").ort_providers(SHAPES, cache, "g")


def test_engine_dirs_are_per_bundle_content_and_never_inside_a_bundle(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, n in ((a, 1), (b, 2)):
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps({"format": "m3edge-bundle", "n": n}))
    cache = tmp_path / "cache"
    assert engine_dir(a, cache).parent == engine_dir(b, cache).parent == cache.resolve()
    assert engine_dir(a, cache) != engine_dir(b, cache)
    with pytest.raises(BadInput, match="inside the m3edge bundle"):
        engine_dir(a, a / "engines")
    monkeypatch.setenv("M3EDGE_ENGINE_CACHE", str(tmp_path / "env"))
    assert default_engine_cache() == tmp_path / "env"
    monkeypatch.delenv("M3EDGE_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_engine_cache() == tmp_path / "xdg" / "m3edge" / "engines"


def test_without_a_cache_dir_engines_go_to_the_default_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("M3EDGE_ENGINE_CACHE", str(tmp_path / "default"))
    trt = SessionConfig(target=targets.load("jetson")).providers_for(SHAPES, "g")[0][1]
    assert trt["trt_engine_cache_path"] == str((tmp_path / "default").resolve() / "trt_engines")
