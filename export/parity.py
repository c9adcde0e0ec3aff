"""End-to-end parity: the bundle's graphs composed by the runtime's executor against the torch agent.

Three passes over the same tokens: with an empty long-term memory (context zero), with a real memory
context (see capture.memory_context), and with real retrieved memories through the reader graph (each token
reads the tokens before it, capture.read_segment), fed identically to both sides.
Routing agreement is DESIGN.md's: mean over tokens and layers of |top-k(bundle) & top-k(torch)| / k.
A token whose selection differs is excused only when torch's k-th and (k+1)-th logits are within
``tie_eps`` (a near tie that float rounding may flip).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from m3edge.data import windows
from m3edge.export.capture import memory_context, read_segment
from m3edge.model.agent import reader_inputs

WEIGHT_ONLY = ("int4", "int8-weight-only")


@dataclass(frozen=True)
class Gates:
    # optimum's default check, numpy.allclose(ref, out, atol=1e-5): |out - ref| <= atol + rtol |ref|, rtol 1e-5.
    # The rtol matters for the reader, whose log-probabilities reach -20 (float32 resolves ~2e-6 there).
    graph_atol: float = 1e-5
    graph_rtol: float = 1e-5
    logits_atol: float = 1e-4
    tie_eps: float = 1e-5
    # Quantized bundles (DESIGN.md): against torch fp32 on the eval split.
    bpb_increase: float = 0.02
    top1_agreement: float = 0.97
    routing_agreement: float = 0.95
    # Weight-only bundles (int4, int8-weight-only: MatMulNBits), DESIGN.md: a looser bits/byte and top-1 gate.
    weight_only_bpb_increase: float = 0.03
    weight_only_top1_agreement: float = 0.95

    def for_precisions(self, precisions) -> "Gates":
        """The gates a bundle holding graphs of these precisions is judged by: a bundle with any weight-only
        graph gets the weight-only bits/byte and top-1 gates (routing stays at its gate)."""
        if not set(precisions) & set(WEIGHT_ONLY):
            return self
        return replace(self, bpb_increase=self.weight_only_bpb_increase,
                       top1_agreement=self.weight_only_top1_agreement)


def routing_agreement(index_a: np.ndarray, index_b: np.ndarray) -> np.ndarray:
    """Per token: |A & B| / k for two [N, k] selections."""
    k = index_a.shape[1]
    same = (index_a[:, :, None] == index_b[:, None, :]).any(-1)
    return same.sum(-1) / k


def near_ties(logits: np.ndarray, k: int, eps: float) -> np.ndarray:
    if k >= logits.shape[1]:
        return np.zeros(logits.shape[0], dtype=bool)
    s = -np.sort(-logits, axis=-1)
    return (s[:, k - 1] - s[:, k]) <= eps


def bits_per_byte(logits: np.ndarray, target: np.ndarray) -> float:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(target)), target].mean() / math.log(2))


# What end_to_end reports to ``progress``: the torch side's encoding and memory read, then each pass.
PASSES = ("no_memory", "memory", "memory_read")
E2E_STEPS = 1 + len(PASSES)


@torch.no_grad()
def end_to_end(agent, executor, text: np.ndarray, n_tokens: int, gates: Gates = Gates(),
               quantized: bool = False, progress=None) -> dict:
    """``progress(label)``, if given, is called E2E_STEPS times: after the setup and after each pass."""
    progress = progress or (lambda label: None)
    cfg = agent.cfg
    pos = np.arange(min(n_tokens, len(text)))
    target = text[pos].astype(np.int64)
    w = torch.from_numpy(windows(text, pos, cfg.context))
    enc = agent.encode(w)
    passes = {"no_memory": torch.zeros_like(enc.x),
              "memory": memory_context(agent, enc, torch.from_numpy(target))}
    # The third pass reads real memories (each token retrieves the tokens before it) through the reader.
    _, _, read = read_segment(agent, text, pos)
    passes["memory_read"] = torch.from_numpy(read.context(cfg.memory_top_k))
    assert tuple(passes) == PASSES
    progress(f"{len(pos)} tokens encoded, memories read")
    result = {"tokens": int(len(pos)), "passes": {}}
    for name, mem in passes.items():
        r = read if name == "memory_read" else None
        ref = agent.decode(enc, mem, None, None if r is None else reader_inputs(r))
        got = executor.forward(w.numpy(), mem.numpy(), None, r)
        ref_logits = ref.logits.numpy()
        agree, unexplained = [], 0
        for r_t, r_b in zip(ref.routed, got.routing):
            t_logits = r_t.logits.numpy()
            a = routing_agreement(r_t.index.numpy(), r_b.index)
            agree.append(a)
            unexplained += int(((a < 1) & ~near_ties(t_logits, cfg.top_k, gates.tie_eps)).sum())
        result["passes"][name] = {
            "logits_max_abs_diff": float(np.abs(got.logits - ref_logits).max()),
            "routing_agreement": float(np.mean(agree)),
            "routing_mismatches_not_near_ties": unexplained,
            "top1_agreement": float((got.logits.argmax(-1) == ref_logits.argmax(-1)).mean()),
            "bits_per_byte": {"torch": bits_per_byte(ref_logits, target), "bundle": bits_per_byte(got.logits, target)},
        }
        progress(f"pass {name}")
    p = result["passes"]
    result["logits_max_abs_diff"] = max(v["logits_max_abs_diff"] for v in p.values())
    result["routing_agreement"] = min(v["routing_agreement"] for v in p.values())
    result["top1_agreement"] = min(v["top1_agreement"] for v in p.values())
    result["bits_per_byte"] = p["no_memory"]["bits_per_byte"]
    result["bits_per_byte_memory_read"] = p["memory_read"]["bits_per_byte"]
    mismatches = sum(v["routing_mismatches_not_near_ties"] for v in p.values())
    result["gates"] = asdict(gates)
    result["quantized"] = quantized
    bpb = result["bits_per_byte"]
    result["bits_per_byte_increase"] = bpb["bundle"] / bpb["torch"] - 1
    if quantized:
        result["passed"] = (result["bits_per_byte_increase"] <= gates.bpb_increase
                            and result["top1_agreement"] >= gates.top1_agreement
                            and result["routing_agreement"] >= gates.routing_agreement)
    else:
        result["passed"] = result["logits_max_abs_diff"] <= gates.logits_atol and mismatches == 0
    return result


def format_end_to_end(r: dict) -> str:
    lines = [f"end to end over {r['tokens']} eval tokens:"]
    for name, v in r["passes"].items():
        lines.append(f"  {name:<10} logits max |diff| {v['logits_max_abs_diff']:.2e}  routing agreement "
                     f"{v['routing_agreement']:.4%}  top-1 agreement {v['top1_agreement']:.4%}  "
                     f"bits/byte torch {v['bits_per_byte']['torch']:.4f} bundle {v['bits_per_byte']['bundle']:.4f}")
    g = r["gates"]
    if r.get("quantized"):
        lines.append(f"  gates (quantized): bits/byte +{r['bits_per_byte_increase']:.2%} (<= {g['bpb_increase']:.0%}), "
                     f"top-1 agreement >= {g['top1_agreement']:.0%}, routing agreement >= {g['routing_agreement']:.0%} "
                     f"-> {'PASS' if r['passed'] else 'FAIL'}")
    else:
        lines.append(f"  gates: logits <= {g['logits_atol']:.0e}, routing exact except near ties "
                     f"-> {'PASS' if r['passed'] else 'FAIL'}")
    return "\n".join(lines)
