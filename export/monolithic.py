"""The monolithic baseline: the whole agent step as ONE onnx graph, every expert inside it.

This is what a user gets from a single ``torch.onnx.export`` of the agent, and what ``m3edge bench``
compares the per-expert bundle against. It is not part of a bundle and the runtime never loads it.

    windows [N, K] int64 -> logits [N, 256]        (N dynamic; long-term memory off: context zero)

Why the step is rewritten before export, not traced as is: the reference ``MemoryMoELayer.dispatch``
loops over ``counts.tolist()`` and skips idle experts in Python, so tracing it bakes the example's routing
into the graph (a wrong model, not a slow one). The traceable form here is the one Hugging Face's MoE blocks
use (optimum exports Mixtral this way): per expert, ``nonzero`` selects its tokens, the expert runs on them,
``scatter_add`` adds the weighted rows back. Two onnxruntime facts shape the details, both measured:
  - an expert whose selection is empty aborts the process (``LSTM`` with batch 0 calls std::terminate) or
    fails a ``Reshape`` (the exporter's computed shapes put a literal 0 where ONNX reads 0 as "copy this
    dimension"); so every expert gets one extra zero-weight pad row and no shape is ever empty;
  - a graph cannot skip a node, so every expert runs every step: the cost this baseline exists to show.
Long-term memory stays host-side in every engine (its retrieval is numpy, not a graph), so the benchmark
compares engines with memory off: the same graph work everywhere.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from m3edge import routing
from m3edge.errors import BadInput

OPSET = 17
INPUT, OUTPUT = "windows", "logits"


class MonolithicStep(nn.Module):
    """The agent's memory-off step with data-independent control flow (see the module docstring)."""

    def __init__(self, agent):
        super().__init__()
        self.agent = agent

    def moe(self, layer, h, bias):
        k = layer.cfg.top_k
        logits = layer.gate(h) + bias
        # ONNX TopK breaks ties toward the lower index: the routing contract's rule (tests/routing/test_routing.py).
        values, index = routing.select_topk_traceable(logits, k)
        weight = routing.topk_weights(values)
        out = torch.zeros_like(h)
        pad = torch.zeros(1, dtype=torch.long)
        for e, expert in enumerate(layer.experts):
            hit = index == e  # [N, k]; a token picks an expert at most once
            tokens = torch.cat([torch.nonzero(hit.any(-1)).squeeze(1), pad])
            w = torch.cat([(weight * hit).sum(-1)[tokens[:-1]], pad.to(h.dtype)])
            y = expert(h[tokens]) * w.unsqueeze(1)
            # scatter_add, not index_add: the exporter writes index_add as a ScatterElements without
            # reduction, so the pad row's index (which may repeat a real one) overwrote instead of adding.
            out = out.scatter_add(0, tokens.unsqueeze(1).expand(-1, h.shape[1]), y)
        return out

    def forward(self, windows):
        a = self.agent
        x = a.encode(windows).x
        bias = a.alignment(x, torch.zeros_like(x))[0]
        for norm, layer in zip(a.norms, a.layers):
            x = x + self.moe(layer, norm(x), bias)
        return a.head(a.final_norm(x))


def export_monolithic(agent, out: str | Path, opset: int = OPSET, example_tokens: int = 2) -> Path:
    """Write ``out`` (one .onnx; weights beside it as ``<name>.data`` when over protobuf's 2 GB)."""
    if routing.get(agent.cfg.routing).drops:  # the rewritten step drops no pair: it would be another model
        raise BadInput(f"the monolithic baseline computes dropless routing; this model routes {agent.cfg.routing!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    step = MonolithicStep(agent.eval()).eval()
    example = torch.zeros(example_tokens, agent.cfg.context, dtype=torch.long)
    # Not under no_grad, as in onnx_export.py: TransformerEncoderLayer's fused fast path has no symbolic.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(step, (example,), str(out), dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "tokens"}, OUTPUT: {0: "tokens"}},
                          do_constant_folding=True)
    return out


def session(path: str | Path, threads: int = 2):
    """An onnxruntime session with the runtime's own options (m3edge/backends/onnxruntime/runtime.py), so the
    comparison is between graph layouts, not session settings."""
    from m3edge.backends import SessionConfig
    from m3edge.backends.onnxruntime.runtime import OrtGraph

    return OrtGraph(path, SessionConfig(threads=threads))


@torch.no_grad()
def parity(agent, path: str | Path, text: np.ndarray, n_tokens: int = 256, batches=(1, 7, 64)) -> dict:
    """Logits of the monolithic graph against the torch agent's memory-off step on eval windows.

    Several batch sizes, because the graph's shapes are dynamic: each must hold, not only the example's."""
    from m3edge.data import windows

    g = session(path, threads=1)
    worst, top1, n = 0.0, 0, 0
    pos = np.arange(1, min(n_tokens, len(text) - 1) + 1)
    for b in batches:
        for s in range(0, len(pos), b):
            w = windows(text, pos[s:s + b], agent.cfg.context)
            ref = agent.step(torch.from_numpy(w), use_memory=False).logits.numpy()
            got = g.run(w)[0]
            worst = max(worst, float(np.abs(ref - got).max()))
            top1 += int((ref.argmax(-1) == got.argmax(-1)).sum())
            n += len(w)
    return {"logits_max_abs_diff": worst, "top1_agreement": top1 / n, "tokens": n, "batches": list(batches)}
