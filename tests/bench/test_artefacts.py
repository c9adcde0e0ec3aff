"""The full suite's artefact reuse (m3edge/bench/artefacts.py): a work dir's graphs and bundles are measured again
only when they were built from the checkpoint being measured."""

import json
from types import SimpleNamespace

from m3edge import checkpoint
from m3edge.bench import artefacts

from conftest import DATA


def test_monolithic_graph_is_rebuilt_when_the_checkpoint_changed_and_reused_when_not(tmp_path, monkeypatch,
                                                                                      tiny_checkpoint):
    sha = checkpoint.read_meta(tiny_checkpoint)[1]["weights_sha256"]
    out = tmp_path / "monolithic" / "agent.onnx"
    out.parent.mkdir()
    out.write_bytes(b"a graph of other weights")
    (out.parent / "parity.json").write_text(json.dumps({"logits_max_abs_diff": 0.0, "weights_sha256": "f" * 64}))
    builds = []

    def build(*args):  # stands in for the measured export process
        builds.append(args)
        assert not out.exists()  # the stale graph is gone before the new one is written
        out.write_bytes(b"graph")
        args[5].write_text(json.dumps({"logits_max_abs_diff": 1e-6, "weights_sha256": sha}))
        return {"wall_s": 1.0}

    monkeypatch.setattr(artefacts, "_run_measured", build)
    ctx = {"dir": tmp_path, "artefacts": {"checkpoint": tiny_checkpoint}, "report": {}, "data_dir": DATA,
           "plan": SimpleNamespace(parity_tokens=8)}
    assert artefacts._monolithic(ctx) == out and len(builds) == 1
    assert ctx["report"]["monolithic_parity"]["weights_sha256"] == sha
    ctx["report"] = {}
    assert artefacts._monolithic(ctx) == out and len(builds) == 1  # same weights: reused
    assert ctx["report"]["monolithic_parity"]["logits_max_abs_diff"] == 1e-6
