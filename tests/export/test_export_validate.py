import numpy as np
import pytest
import torch

from m3edge.bundle import GraphFile
from m3edge.backends.onnxruntime.onnx_export import export_module, write_shared
from m3edge.export.validate import (GraphCheckError, ShapeMismatchError, check_structure, max_abs_diff,
                                    format_table, summarise, GraphCheck)
from m3edge.backends.onnxruntime.runtime import OrtGraph


@pytest.fixture
def linear_graph(tmp_path):
    torch.manual_seed(0)
    mod = torch.nn.Linear(64, 32)  # 8 KiB of weights: above the inline threshold, so shared
    models = {b: export_module(mod, (torch.zeros(b, 64),), ["h"], ["y"], 17) for b in (2, 5)}
    weights, paths = write_shared(models, tmp_path, "lin")
    return mod, tmp_path, weights, paths


def src(root, rel, weights):
    return GraphFile(rel, (root / rel).read_bytes(), {"weights": (root / weights).read_bytes()})


def test_bucket_variants_share_one_weights_file(linear_graph):
    mod, root, weights, paths = linear_graph
    assert 64 * 32 * 4 <= (root / weights).stat().st_size < 2 * 64 * 32 * 4  # the weight matrix, stored once
    for b, rel in paths.items():
        g = OrtGraph(src(root, rel, weights))
        x = np.random.default_rng(b).normal(size=(b, 64)).astype(np.float32)
        assert max_abs_diff(g, mod, (x,)) < 1e-6


def test_structure_errors_are_typed(linear_graph):
    mod, root, weights, paths = linear_graph
    check_structure(src(root, paths[2], weights), {"h": [2, 64]}, {"y": [2, 32]})
    with pytest.raises(ShapeMismatchError, match="expected \\[3, 64\\]"):
        check_structure(src(root, paths[2], weights), {"h": [3, 64]}, {"y": [3, 32]})
    (root / paths[5]).write_bytes(b"\x08garbage")
    with pytest.raises(GraphCheckError):
        check_structure(src(root, paths[5], weights), {"h": [5, 64]}, {"y": [5, 32]})


def test_value_mismatch_is_measured(linear_graph):
    mod, root, weights, paths = linear_graph
    g = OrtGraph(src(root, paths[2], weights))
    with torch.no_grad():
        mod.bias += 0.5  # torch moved on after export
    assert max_abs_diff(g, mod, (np.ones((2, 64), np.float32),)) == pytest.approx(0.5, abs=1e-6)


def test_report_table():
    checks = [GraphCheck("layer0.expert_01", "expert", 0, 1, 4, "p", 2e-6, 1e-5, "ok"),
              GraphCheck("layer0.expert_02", "expert", 0, 2, 4, "q", 3e-5, 1e-5, "ValueMismatchError")]
    rows = summarise(checks)
    assert rows == [{"role": "expert", "graphs": 2, "failed": 1, "max_abs_diff": 3e-5,
                     "worst": "layer0.expert_02.b4", "atol": 1e-5, "precision": "fp32", "min_sqnr_db": None}]
    assert "layer0.expert_02.b4" in format_table(rows)
