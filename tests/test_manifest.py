"""The typed manifest (m3edge/manifest.py): a lossless round trip, and every malformed field refused with exit 2
naming it, through `m3edge inspect` and `m3edge run`."""

import json
import shutil

import pytest
from click.testing import CliRunner

from m3edge import bundle
from m3edge.cli import cli
from m3edge.manifest import Manifest


def test_round_trip_gives_back_the_manifest_byte_for_byte(tiny_bundle):
    text = (tiny_bundle / "manifest.json").read_text()
    raw = json.loads(text)
    m = Manifest.from_dict(raw)
    assert m.to_dict() == raw and bundle.dumps(m.to_dict()) == text
    assert m.model_config.n_experts == m.routing.n_experts and m.target.name == "tiny-test"
    # The typed entries are the ones the runtime always read: one per (module, bucket)
    assert m.entries() == bundle.open_bundle(tiny_bundle).graphs


def first(m, role):
    return next(g for g in m["graphs"] if g["role"] == role)


def expert_port(m):
    """The ports record of an expert's graph file (ports live with the file)."""
    path = m["graph_sets"][first(m, "expert")["graphs"]][str(m["routing"]["capacity_buckets"][0])]
    return next(f for f in m["files"] if f["path"] == path)["inputs"][0]


EDITS = {
    "empty model_config": (lambda m: m.update(model_config={}), r"model_config\.\w+ is missing"),
    "empty capacity buckets": (lambda m: m["routing"].update(capacity_buckets=[]),
                               r"routing\.capacity_buckets must be a non-empty list of positive integers"),
    "port shape of strings": (lambda m: expert_port(m).update(shape=["8", 32]),
                              r"files\[\d+\]\.inputs\[0\]\.shape must be a list of positive integers"),
    "port shape with a zero": (lambda m: expert_port(m).update(shape=[0, 32]), r"\.shape must be a list of positive"),
    "config against ports": (lambda m: m["model_config"].update(d_model=m["model_config"]["d_model"] * 2),
                             r"model_config\.d_model is \d+, but graph .* has shape"),
    "unknown role": (lambda m: first(m, "head").update(role="decoder"),
                     r"graphs\[\d+\]\.role must be one of encoder, .*got 'decoder'"),
    "layer as a string": (lambda m: first(m, "router").update(layer="0"), r"graphs\[\d+\]\.layer must be an integer"),
    "opset as a float": (lambda m: m.update(opset=17.0), r"opset must be an integer >= 1, got 17\.0"),
    "routing not an object": (lambda m: m.update(routing=[]), r"routing must be an object"),
    "unknown backend": (lambda m: first(m, "expert").update(backend="coreml"), r"graphs\[\d+\]\.backend must be a backend"),
    "routing against config": (lambda m: m["routing"].update(top_k=1), r"routing\.top_k must be \d+, as model_config says"),
    "usage table shape": (lambda m: m["expert_usage"].update(next_token=[[1]]), r"expert_usage\.next_token must be a"),
    "unknown top-level key": (lambda m: m.update(extras=1), r"extras is not a manifest field"),
    "weight-only scale storage": (lambda m: m["precision"].update(weight_only={"int4": {
        "bits": 4, "block_size": 32, "symmetric": False, "accuracy_level": 4, "scale_dtype": "bfloat16"}}),
        r"precision\.weight_only\.int4\.scale_dtype must be one of float16, float32, got 'bfloat16'"),
}


@pytest.fixture(scope="module")
def broken(tiny_bundle, tmp_path_factory):
    """name -> a copy of the tiny bundle whose manifest has that edit."""
    out = {}
    for name, (edit, _) in EDITS.items():
        b = tmp_path_factory.mktemp("broken") / "b"
        shutil.copytree(tiny_bundle, b)
        m = json.loads((b / "manifest.json").read_text())
        edit(m)
        (b / "manifest.json").write_text(json.dumps(m))
        out[name] = b
    return out


@pytest.mark.parametrize("command", ["inspect", "run"])
@pytest.mark.parametrize("name", sorted(EDITS))
def test_a_malformed_manifest_is_refused_naming_the_field(broken, name, command):
    args = [command, str(broken[name])] + (["--prompt", "x", "--max-bytes", "1"] if command == "run" else [])
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "manifest.json" in lines[0], r.stderr
    assert __import__("re").search(EDITS[name][1], lines[0]), lines[0]
