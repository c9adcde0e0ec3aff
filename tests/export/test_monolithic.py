"""The monolithic baseline (one onnx graph, every expert inside) computes what the torch agent computes."""

import numpy as np
import onnx

from m3edge.data import load_split
from m3edge.export.monolithic import export_monolithic, parity, session

from conftest import DATA


def test_monolithic_graph_matches_torch_at_several_batch_sizes(tiny_agent, tmp_path):
    path = export_monolithic(tiny_agent, tmp_path / "agent.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"NonZero", "LSTM", "TopK"} <= ops  # every expert, routed inside the one graph
    r = parity(tiny_agent, path, load_split(DATA, "eval"), n_tokens=24, batches=(1, 5, 24))
    assert r["logits_max_abs_diff"] <= 1e-4 and r["top1_agreement"] == 1.0 and r["tokens"] == 72


def test_one_token_batches_leave_most_experts_idle_without_failing(tiny_agent, tmp_path):
    # Batch 1 selects top-2 of 8 experts: six experts see only their pad row (an empty selection would
    # abort onnxruntime inside its LSTM kernel).
    g = session(export_monolithic(tiny_agent, tmp_path / "agent.onnx"), threads=1)
    out = g.run(np.zeros((1, tiny_agent.cfg.context), dtype=np.int64))[0]
    assert out.shape == (1, 256) and np.isfinite(out).all()


def test_capacity_routing_is_refused_not_exported_as_another_model(tiny_cfg, tmp_path):
    import dataclasses

    import pytest

    from m3edge.errors import BadInput
    from m3edge.model.agent import MemoryMoEAgent

    agent = MemoryMoEAgent(dataclasses.replace(tiny_cfg, routing="capacity")).eval()
    with pytest.raises(BadInput, match="dropless"):
        export_monolithic(agent, tmp_path / "agent.onnx")
    assert not (tmp_path / "agent.onnx").exists()
